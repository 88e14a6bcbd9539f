"""Score any list of 5 s windows (any start, any hop) with the predictors of ``birdclef predict``.

A :class:`~birdclef.infer.base.Predictor` scores whole files, rows at 0, 5, 10 s. Archive analysis needs
window-level scores: :func:`window_scorer` breaks a predictor into :class:`Member` s, each saying which span
of audio, at which rate, it needs around a window (a torch run trained on 10 s hears 2.5 s either side of the
5 s row, BirdNET only the row), and scoring a batch of such spans. The spans are those of
:func:`~birdclef.infer.base.context_windows` (zeros outside the file), so at hop 5 s every window gets the
numbers ``predict`` gives its row. Members' raw per-run probabilities are blended by
:func:`~birdclef.infer.ensemble.combine_runs` with the predictor's own weights.

Supported: :class:`~birdclef.infer.predict.TorchPredictor` (one member per run),
:class:`~birdclef.export.runtime.ExportedPredictor`, :class:`~birdclef.birdnet.predictor.BirdnetPredictor`,
:class:`~birdclef.birdnet.head.HeadPredictor` (and :class:`~birdclef.birdnet.head.RunsBlend` of runs and heads),
:class:`~birdclef.infer.blend.BlendPredictor` of those, :class:`~birdclef.infer.blend.FilledPredictor`, and
:class:`~birdclef.birdnet.geo.GeoFilteredPredictor` (the location filter) around any of them.

Example:
    >>> scorer = window_scorer(TorchPredictor(["runs/a"]), postprocess=False)
    >>> member = scorer.members[0]                       # spans of member.length samples at member.sample_rate
    >>> probs = scorer.score([member_windows])           # (N, K) in scorer.classes order
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from birdclef.config import InferConfig
from birdclef.errors import BirdclefError
from birdclef.infer.base import ROW_WINDOW_S
from birdclef.infer.ensemble import combine_runs

RAW_STEPS = {"smoothing": False, "power_adjust": False}
"""InferConfig fields that switch post-processing off (analysis default: raw probabilities)."""


@dataclass
class Member:
    """One part of a predictor: it scores (N, `length`) spans at `sample_rate`, starting `lead` samples
    before each 5 s window's start, into one (N, K) array per run it holds."""

    sample_rate: int
    lead: int
    """Samples of context before the window's start (negative: the span starts inside the window)."""
    length: int
    """Samples per span."""
    score: Callable[[np.ndarray], list[np.ndarray]]
    runs: int = 1
    embed: Callable[[np.ndarray], tuple[list[np.ndarray], np.ndarray]] | None = None
    """Like `score`, plus (N, D) float32 embeddings of the windows from the same pass (BirdNET only)."""


def span(sample_rate: int, window_s: float) -> tuple[int, int]:
    """(lead, length) of a model hearing `window_s` seconds centred on each 5 s row (as context_windows)."""
    row_len, win_len = int(round(ROW_WINDOW_S * sample_rate)), int(round(window_s * sample_rate))
    return (win_len - row_len) // 2, win_len


@dataclass
class WindowScorer:
    """A predictor as members plus the blend of their runs; see the module docstring."""

    classes: list[str]
    members: list[Member]
    weights: np.ndarray
    config: InferConfig
    """Blend and post-processing settings (post-processing applies to each scored batch of windows)."""
    fill: float | None = None
    """Value for cells no member scores (None: leave NaN)."""
    class_weights: np.ndarray | None = None
    """(K,) multipliers of the blended scores (the location filter, :mod:`birdclef.birdnet.geo`), or None."""

    @property
    def embedder(self) -> int | None:
        """Index of the member giving embeddings (the first BirdNET one), or None."""
        return next((i for i, m in enumerate(self.members) if m.embed is not None), None)

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


def _torch_members(predictor) -> list[Member]:
    from birdclef.infer.predict import score_windows

    members = []
    for ens, order in zip(predictor.ensembles, predictor._orders):
        def score(windows: np.ndarray, ens=ens, order=order) -> list[np.ndarray]:
            probs = score_windows(ens, windows, predictor.config.batch_size, predictor.device)
            return [probs if order is None else probs[:, order]]

        members.append(Member(ens.sample_rate, *span(ens.sample_rate, ens.window_s), score))
    return members


def _exported_members(predictor) -> list[Member]:
    def score(windows: np.ndarray) -> list[np.ndarray]:
        probs = predictor.predict_windows(windows)  # (N, R, K)
        return [probs[:, r, :].astype(np.float64) for r in range(probs.shape[1])]

    return [Member(predictor.sample_rate, *span(predictor.sample_rate, predictor.window_s), score,
                   runs=len(predictor.weights))]


def _birdnet_members(predictor) -> list[Member]:
    def score(windows: np.ndarray) -> list[np.ndarray]:
        # Rows laid end to end are a wave whose 5 s rows are exactly these windows: BirdNET hears no context.
        return [predictor.predict_rows(windows.reshape(-1), len(windows))]

    def embed(windows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        probs, embeddings = predictor.predict_rows_with_embeddings(windows.reshape(-1), len(windows))
        return [probs], embeddings

    can_embed = hasattr(predictor, "predict_rows_with_embeddings") and hasattr(predictor.model, "infer")
    return [Member(predictor.sample_rate, *span(predictor.sample_rate, ROW_WINDOW_S), score,
                   embed=embed if can_embed else None)]


def _members(predictor) -> list[Member]:
    from birdclef.infer.blend import BlendPredictor

    if isinstance(predictor, BlendPredictor):
        flat = [m for member in predictor.members for m in _members(member)]
        order = getattr(predictor, "order", None)  # a RunsBlend gives its runs back in the order given
        return flat if order is None else [flat[k] for k in order]
    if hasattr(predictor, "predict_rows"):  # BirdNET zero-shot or a head run, as BlendPredictor tells them apart
        return _birdnet_members(predictor)  # 5 s rows from 3 s chunks inside them: no context
    if hasattr(predictor, "ensembles"):  # TorchPredictor (imported lazily: no torch for the others)
        return _torch_members(predictor)
    if hasattr(predictor, "predict_windows") and hasattr(predictor, "window_s"):  # ExportedPredictor
        return _exported_members(predictor)
    raise BirdclefError(f"archive analysis cannot score windows with a {type(predictor).__name__}; use trained "
                        "runs, an exported model or BirdNET")


def window_scorer(predictor, postprocess: bool = False) -> WindowScorer:
    """The :class:`WindowScorer` of `predictor`; `postprocess` False turns smoothing and power adjustment off.

    Raises:
        BirdclefError: a predictor kind that cannot score arbitrary windows.
    """
    fill, class_weights = None, None
    if hasattr(predictor, "geo") and hasattr(predictor, "predictor"):  # GeoFilteredPredictor (outermost)
        predictor, class_weights = predictor.predictor, np.asarray(predictor.geo.weights, dtype=np.float64)
    if hasattr(predictor, "value") and hasattr(predictor, "predictor"):  # FilledPredictor
        predictor, fill = predictor.predictor, predictor.value
    members = _members(predictor)
    config = predictor.config if postprocess else replace(predictor.config, **RAW_STEPS)
    runs = sum(m.runs for m in members)
    weights = getattr(predictor, "weights", None)  # BirdNET alone has none: one run
    weights = np.ones(runs) / runs if weights is None else np.asarray(weights, dtype=np.float64)
    if len(weights) != runs:
        raise BirdclefError(f"{type(predictor).__name__}: {len(weights)} blend weights for {runs} runs")
    return WindowScorer(list(predictor.classes), members, weights, config, fill, class_weights)
