"""Blending predictors of different sample rates (torch runs at 32 kHz with BirdNET at 48 kHz).

:class:`BlendPredictor` decodes each file once, at the *lowest* rate of its members (BirdNET's mel
bands stop at 15 kHz, so a 32 kHz decode loses it nothing, and the torch runs get exactly the wave they
get alone), and resamples for the others with soxr (HQ, as :func:`~birdclef.audio.io.load_audio`).
Each member gives its raw per-run rows; they are post-processed and blended per class by
:func:`~birdclef.infer.ensemble.combine_runs`, which ignores NaN: a class that only some members score
(BirdNET's unknown classes) gets their blend.

With ``blend="rank"`` or ``"quantile"`` (:mod:`birdclef.infer.rank`) each run's scores of a class are ranked
over all rows of a prediction before the weighted sum: the blend has no per-file prediction, and the batch job
blends the runs' per-file :meth:`~birdclef.infer.base.PartsPredictor.run_outputs` once every file is scored
(:meth:`~birdclef.infer.base.PartsPredictor.blend_rows`).

:class:`FilledPredictor` puts a constant into the cells no member scores, for a CSV (which cannot
hold NaN): any constant is neutral for a class's ROC-AUC.

Example:
    >>> blend = BlendPredictor([TorchPredictor(["runs/a"]), birdnet], weights=[0.5, 0.5], config=infer)
    >>> probs = blend.predict_file(load_audio("XCB_DEV_000.ogg", blend.sample_rate))
    >>> ranked = BlendPredictor([own, perch], weights=[0.8, 0.2], config=infer, blend="rank")
    >>> runs = [ranked.run_outputs(w) for w in waves]                          # per file: one (W, K) per run
    >>> probs = ranked.blend_rows([np.concatenate(r) for r in zip(*runs)], [len(r[0]) for r in runs])
"""

from __future__ import annotations

from collections.abc import Sequence


from birdclef.config import InferConfig, config_to_dict
from birdclef.errors import BirdclefError
from birdclef.infer.base import Part, PartsPredictor, Predictor, place_parts, union_classes
from birdclef.infer.ensemble import normalise_weights
from birdclef.infer.rank import MEAN, check_blend


class BlendPredictor(PartsPredictor):
    """Predictors blended run by run: their parts, in order, with one weight per run.

    Args:
        members: e.g. a TorchPredictor (its runs) and a BirdnetPredictor.
        weights: one per run over all members, in order (``--run A --run B --birdnet``: 3); None equal.
        config: post-processing (``infer.postprocess_stage`` per_model or blend), as for torch blends.
        order: the members' parts in this order (indices into all their parts; default as given), e.g. the
            runs of one TorchPredictor and head runs back in the order the user named them.
        blend: ``mean`` (per file), ``rank`` or ``quantile`` (over all rows; module docstring).
        classes: the output columns; default the members' union (:func:`~birdclef.infer.base.union_classes`).
            A part that scores other columns (a taxon specialist: fewer; another order) is placed into them, NaN
            where it does not score (:class:`~birdclef.infer.base.ScatteredPart`).

    Raises:
        BirdclefError: no members, a part scoring classes `classes` lacks, an unknown `blend`, or a rank or
            quantile blend of fewer than two runs.
        SubmissionError: the wrong number of weights, or invalid ones.
    """

    def __init__(self, members: Sequence[Predictor], weights: Sequence[float] | None, config: InferConfig,
                 order: Sequence[int] | None = None, blend: str = MEAN, classes: Sequence[str] | None = None):
        if not members:
            raise BirdclefError("nothing to blend")
        self.blend = check_blend(blend)
        self.config = config
        parts = [part for member in members for part in member.parts()]
        if order is not None and sorted(order) != list(range(len(parts))):
            raise BirdclefError(f"blend order {list(order)} is not a permutation of {len(parts)} parts")
        parts = parts if order is None else [parts[k] for k in order]
        self.classes = union_classes([p.classes for p in parts]) if classes is None else list(classes)
        self._parts = place_parts(parts, self.classes)
        n_runs = sum(p.n_runs for p in self._parts)
        if blend != MEAN and n_runs < 2:
            raise BirdclefError(f"a {blend} blend needs two or more runs to blend (here {n_runs}): give several "
                                "--run, or --run and --birdnet")
        self.weights = normalise_weights(weights, n_runs)
        self.sample_rate = min(int(p.sample_rate) for p in self._parts)

    def parts(self) -> list[Part]:
        return list(self._parts)

    def settings(self) -> dict:
        blend = {} if self.blend == MEAN else {"blend": self.blend}  # a mean blend keeps the keys it always had
        return {"backend": "blend", "members": [p.settings() for p in self._parts], "sample_rate": self.sample_rate,
                "weights": self.weights.tolist(), "infer": config_to_dict(self.config), **blend}


class FilledPredictor(PartsPredictor):
    """`predictor` with its NaN cells (classes nobody scores) set to `value`, for a submission CSV."""

    def __init__(self, predictor: Predictor, value: float):
        self.predictor, self.fill = predictor, float(value)
        self.classes, self.sample_rate = predictor.classes, predictor.sample_rate
        self.config, self.weights, self.class_weights = predictor.config, predictor.weights, predictor.class_weights
        self.blend = predictor.blend

    def parts(self) -> list[Part]:
        return self.predictor.parts()

    def settings(self) -> dict:
        return {**self.predictor.settings(), "unknown_fill": self.fill}
