"""Score any list of 5 s windows (any start, any hop) with the predictors of ``birdclef predict``.

A :class:`~birdclef.infer.base.Predictor` scores whole files, rows at 0, 5, 10 s. Archive analysis needs
window-level scores: :func:`window_scorer` takes the predictor's parts (:class:`~birdclef.infer.base.Part`),
each saying which span of audio, at which rate, it needs around a window (a torch run trained on 10 s hears
2.5 s either side of the 5 s row, BirdNET only the row), and scoring a batch of such spans. The spans are
those of :func:`~birdclef.infer.base.context_windows` (zeros outside the file), so at hop 5 s every window gets
the numbers ``predict`` gives its row. The parts' raw per-run probabilities are blended by
:func:`~birdclef.infer.ensemble.combine_runs` with the predictor's own weights. Any predictor the model zoo
builds works, of any kind.

Example:
    >>> scorer = window_scorer(TorchPredictor(["runs/a"]), postprocess=False)
    >>> member = scorer.members[0]                       # spans of member.length samples at member.sample_rate
    >>> probs = scorer.score([member_windows])           # (N, K) in scorer.classes order
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from birdclef.config import InferConfig
from birdclef.errors import BirdclefError
from birdclef.infer.base import Part, Predictor
from birdclef.infer.ensemble import combine_runs
from birdclef.infer.postprocess import STEP_ORDER

RAW_STEPS = {name: False for name in STEP_ORDER}
"""InferConfig fields that switch post-processing off (analysis default: raw probabilities): every registered
step, each switched by the field of its name."""


@dataclass
class WindowScorer:
    """A predictor's parts plus the blend of their runs; see the module docstring."""

    classes: list[str]
    members: list[Part]
    weights: np.ndarray
    config: InferConfig
    """Blend and post-processing settings (post-processing applies to each scored batch of windows)."""
    fill: float | None = None
    """Value for cells no member scores (None: leave NaN)."""
    class_weights: np.ndarray | None = None
    """(K,) multipliers of the blended scores (the location filter, :mod:`birdclef.birdnet.geo`), or None."""

    @property
    def embedder(self) -> int | None:
        """Index of the member giving embeddings (the first foundation model), or None."""
        return next((i for i, m in enumerate(self.members) if m.can_embed), None)

    def score(self, spans: Sequence[np.ndarray]) -> np.ndarray:
        """(N, K) float32 probabilities from each member's (N, length) spans (one array per member)."""
        return self._blend([probs for member, windows in zip(self.members, spans) for probs in member.score(windows)])

    def score_with_embeddings(self, spans: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`score` and the (N, D) float32 embeddings of the :attr:`embedder` member (one model pass)."""
        which = self.embedder
        if which is None:
            raise BirdclefError("embeddings need a BirdNET member (--birdnet); these models have none")
        per_run, embeddings = [], None
        for k, (member, windows) in enumerate(zip(self.members, spans)):
            if k == which:
                runs, embeddings = member.embed(windows)
            else:
                runs = member.score(windows)
            per_run += runs
        return self._blend(per_run), embeddings

    def _blend(self, per_run: list[np.ndarray]) -> np.ndarray:
        blended = np.asarray(combine_runs(per_run, self.weights, self.config), dtype=np.float64)
        if self.fill is not None:
            blended = np.where(np.isnan(blended), self.fill, blended)
        if self.class_weights is not None:
            blended = blended * self.class_weights[None, :]
        return blended.astype(np.float32)


def window_scorer(predictor: Predictor, postprocess: bool = False) -> WindowScorer:
    """The :class:`WindowScorer` of `predictor`; `postprocess` False turns every post-processing step off.

    Raises:
        BirdclefError: blend weights that do not match the parts' runs; a blend over all rows (``rank``,
            ``quantile``), which no window batch can give.
    """
    if predictor.blend != "mean":
        raise BirdclefError(f"a {predictor.blend} blend ranks each model over all rows of a prediction; windows "
                            "scored batch by batch can only take a mean blend")
    members = predictor.parts()
    config = predictor.config if postprocess else replace(predictor.config, **RAW_STEPS)
    runs = sum(m.n_runs for m in members)
    weights = np.asarray(predictor.weights, dtype=np.float64)
    if len(weights) != runs:
        raise BirdclefError(f"{type(predictor).__name__}: {len(weights)} blend weights for {runs} runs")
    return WindowScorer(list(predictor.classes), members, weights, config, predictor.fill, predictor.class_weights)
