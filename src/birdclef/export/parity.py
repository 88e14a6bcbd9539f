"""Parity gate: an exported graph must rank real soundscape rows as the torch model does.

Both predictors score the same recordings (audio files, or cached training clips end to end; see
:mod:`birdclef.export.sources`). Reported: max |dprob| of the raw per-run
probabilities (what the graph computes) and of the final post-processed blend, the macro ROC-AUC
of each, their difference, and the Spearman rank correlation of all final scores.

Labels for the AUC: the true ones when the folder has a ``solution.csv`` beside it (the BirdCLEF
layout: ``<set>/test_soundscapes`` and ``<set>/solution.csv``) that covers the model's classes and
the files' rows. Otherwise pseudo-labels: for each class, the rows whose torch score is in the top
``PSEUDO_POSITIVE_FRACTION`` count as positives. The torch model then scores ~1.0 on them by
construction, and the exported model loses AUC exactly where it swaps the order of rows around
each class's decision boundary -- the kind of change that moves a leaderboard score.

With either kind of labels, classes whose final torch scores barely vary over the rows
(< ``MIN_SPREAD``) are left out of the AUC: their order is float noise, and a 1e-4 rounding
difference can move such a class's AUC by 0.1.

The verdict, per precision (:data:`TOLERANCES`): fp32 and bf16 must keep max |dprob| (raw and
final) within ``prob`` always -- fp32 is near-exact on any CPU -- and, where classes can be scored,
|dAUC| within ``auc`` as well. int8 is judged by |dAUC| alone (its max |dprob| is recorded, and a
few per cent on single probabilities is what quantization costs); when no class can be scored
(an untrained or saturated model) it falls back to max |dprob| <= ``prob``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from birdclef.audio.segments import row_ids, soundscape_windows
from birdclef.config import InferConfig
from birdclef.eval.metrics import macro_roc_auc
from birdclef.export.sources import Recording
from birdclef.infer.base import ROW_WINDOW_S
from birdclef.infer.ensemble import combine_runs

PSEUDO_POSITIVE_FRACTION = 0.1
"""Share of rows per class that count as positives when there are no true labels."""

MIN_SPREAD = 1e-3
"""A class whose final torch scores span less than this over the parity rows is not scored by AUC:
its order is float noise (an untrained or saturated output), not a ranking to preserve. Measured:
5-fold models trained 2-4 epochs from random init on xcbirds span 3e-5 to 1.5e-4, and bf16 moved
their true-label macro-AUC by 0.04 with max |dprob| 1.5e-4."""

@dataclass(frozen=True)
class Tolerance:
    """How far an export of one precision may be from torch."""

    auc: float
    """Largest |macro-AUC difference|."""
    prob: float
    """Largest max |dprob| (raw per-run and final probabilities)."""
    prob_always: bool
    """Check `prob` even when the AUC can be scored (else only as the fallback)."""


TOLERANCES = {"fp32": Tolerance(0.001, 1e-4, True), "bf16": Tolerance(0.005, 5e-2, True),
              "int8": Tolerance(0.005, 5e-2, False)}
"""Per precision. fp32 differs from torch by float32 rounding only (< 1e-5 on the tests' models,
6e-8 for a 1-fold test_efficientnet on xcbirds). bf16 keeps ~3 significant digits in the CNNs (the
front end stays float32); its 0.05 catches a broken graph (a bf16 front end moves mel images by
~0.1), not rounding, and was not measured on trained 5-fold models: the AUC limit is the finer one."""

DEFAULT_FILES = 12
"""Recordings the gate scores by default (int8 calibrates on as many others). Fewer rows make the
AUC itself noisy: on a trained efficientnet_b0 (xcbirds, 26 classes) the same int8 export moved
the true-label macro-AUC by +0.0072 on 4 files (48 rows) and by -0.0005 on 12 (144 rows)."""


class RunPredictor(Protocol):
    """What parity needs of both sides: per-run probabilities of one decoded file."""

    sample_rate: int

    def predict_runs(self, wave: np.ndarray) -> list[np.ndarray]: ...


@dataclass
class ParityResult:
    """How far an exported model is from its torch original on real audio."""

    files: list[str]
    """The recordings scored (file paths, or cached-clip groups)."""
    n_rows: int
    max_abs_diff: float
    """max |dprob| over rows, runs and classes of the fold-averaged per-run probabilities."""
    max_abs_diff_final: float
    """max |dprob| of the final (post-processed, blended) probabilities."""
    auc_torch: float | None
    auc_exported: float | None
    auc_diff: float
    """auc_exported - auc_torch (0 when no class could be scored)."""
    rank_correlation: float
    """Spearman correlation of all final scores (rows x classes)."""
    labels: str
    """Where the AUC labels came from (a solution.csv path, or the pseudo-label rule)."""
    tolerance: float
    """Largest allowed |auc_diff|."""
    prob_tolerance: float
    """Largest allowed max |dprob| (raw and final)."""
    prob_always: bool = True
    """Whether `prob_tolerance` applies when the AUC is scored too (else only when it is not)."""
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """The rules this result breaks (empty: passed)."""
        failed = []
        if (self.prob_always or self.auc_torch is None) and max(self.max_abs_diff, self.max_abs_diff_final) > self.prob_tolerance:
            failed.append(f"max|dprob| > {self.prob_tolerance:g}")
        if self.auc_torch is not None and abs(self.auc_diff) > self.tolerance:
            failed.append(f"|dAUC| > {self.tolerance:g}")
        return failed

    @property
    def passed(self) -> bool:
        return not self.failures()

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        failed = self.failures()
        verdict = f"FAILED ({', '.join(failed)})" if failed else "ok"
        auc = ("macro-AUC not scored" if self.auc_torch is None else
               f"macro-AUC torch {self.auc_torch:.5f} vs exported {self.auc_exported:.5f} (d {self.auc_diff:+.5f})")
        return (f"parity on {len(self.files)} recordings / {self.n_rows} rows: max|dprob| {self.max_abs_diff:.2e} "
                f"(final {self.max_abs_diff_final:.2e}), {auc}, rank corr {self.rank_correlation:.6f}, "
                f"labels: {self.labels}{''.join('; ' + n for n in self.notes)} -> {verdict}")


def _true_labels(recordings: Sequence[Recording], ids: list[str], classes: list[str]) -> np.ndarray | None:
    """(rows, K) 0/1 labels from ``solution.csv`` beside the files' folder, or None when unusable."""
    if recordings[0].path is None:
        return None
    path = recordings[0].path.parent.parent / "solution.csv"
    if not path.is_file():
        return None
    try:
        solution = pd.read_csv(path, dtype={"row_id": str}).set_index("row_id")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if not set(classes) <= set(solution.columns) or not set(ids) <= set(solution.index):
        return None
    labels = solution.loc[ids, classes].to_numpy()
    return labels if np.isin(labels, (0, 1)).all() and (labels.sum(0) > 0).any() else None


def pseudo_labels(probs: np.ndarray, fraction: float = PSEUDO_POSITIVE_FRACTION) -> np.ndarray:
    """(rows, K) 0/1: each class's top `fraction` of rows (at least one) by score are positives."""
    n_pos = max(1, int(round(fraction * probs.shape[0])))
    order = np.argsort(-probs, axis=0, kind="stable")[:n_pos]  # (n_pos, K) row indices
    labels = np.zeros(probs.shape, dtype=np.int64)
    np.put_along_axis(labels, order, 1, axis=0)
    return labels


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two equally shaped score arrays (flattened; ties get mean ranks)."""
    ranks = [pd.Series(x.ravel()).rank().to_numpy() for x in (a, b)]
    if ranks[0].std() == 0 or ranks[1].std() == 0:
        return 1.0 if np.array_equal(ranks[0], ranks[1]) else 0.0
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


def as_recordings(items: Sequence[Recording | Path]) -> list[Recording]:
    """Recordings from recordings or audio file paths."""
    return [r if isinstance(r, Recording) else Recording(str(r), path=Path(r)) for r in items]


def _score(recordings: Sequence[Recording], torch_side: RunPredictor, exported: RunPredictor, weights: np.ndarray,
           cfg: InferConfig) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row ids, raw (rows, R, K) and final (rows, K) probabilities of both sides."""
    ids, raw_t, raw_e, fin_t, fin_e = [], [], [], [], []
    for rec in recordings:
        wave = rec.load(torch_side.sample_rate)
        runs_t, runs_e = torch_side.predict_runs(wave), exported.predict_runs(wave)
        ids += row_ids(rec.stem, soundscape_windows(len(wave) / torch_side.sample_rate, ROW_WINDOW_S))
        raw_t.append(np.stack(runs_t, axis=1))
        raw_e.append(np.stack(runs_e, axis=1))
        fin_t.append(combine_runs(runs_t, weights, cfg))
        fin_e.append(combine_runs(runs_e, weights, cfg))
    return ids, *(np.concatenate(x) for x in (raw_t, raw_e, fin_t, fin_e))


def check_parity(recordings: Sequence[Recording | Path], torch_side: RunPredictor, exported: RunPredictor,
                 classes: list[str], weights: np.ndarray, cfg: InferConfig, tolerance: Tolerance) -> ParityResult:
    """Score `recordings` with both predictors and compare (see module docstring).

    Args:
        recordings: real audio (files or cached clips), decoded at ``torch_side.sample_rate``.
        torch_side, exported: objects with ``predict_runs(wave) -> [(W, K)] * R``, same class order.
        classes: the K class names (to look up true labels).
        weights: (R,) blend weights; cfg: post-processing applied to both sides.
        tolerance: the precision's limits (:data:`TOLERANCES`).

    Raises:
        BirdclefError: a file cannot be decoded.
    """
    recordings = as_recordings(recordings)
    ids, raw_t, raw_e, fin_t, fin_e = _score(recordings, torch_side, exported, weights, cfg)
    labels = _true_labels(recordings, ids, classes)
    source = str(recordings[0].path.parent.parent / "solution.csv") if labels is not None else None
    return compare_scores([r.name for r in recordings], raw_t, raw_e, fin_t, fin_e, tolerance, labels, source)


def compare_scores(files: list[str], raw_t: np.ndarray, raw_e: np.ndarray, fin_t: np.ndarray, fin_e: np.ndarray,
                   tolerance: Tolerance, labels: np.ndarray | None = None, source: str | None = None) -> ParityResult:
    """The verdict on scores both sides already computed (the second half of :func:`check_parity`).

    Args:
        files: what was scored (for the report).
        raw_t, raw_e: (rows, R, K) raw probabilities of the reference ("torch") and the exported side.
        fin_t, fin_e: (rows, K) final probabilities of both.
        tolerance: the precision's limits (:data:`TOLERANCES`).
        labels: (rows, K) 0/1 true labels and where they came from (`source`); None: pseudo-labels from `fin_t`.
    """
    if labels is None:
        labels, source = pseudo_labels(fin_t), f"pseudo (top {PSEUDO_POSITIVE_FRACTION:.0%} of torch rows per class)"
    varies = np.ptp(fin_t, axis=0) >= MIN_SPREAD
    notes = [f"{int((~varies).sum())} of {len(varies)} classes barely vary in torch (< {MIN_SPREAD}), not scored"] if not varies.all() else []
    positives = labels.sum(axis=0)
    keep = varies & (positives > 0) & (positives < len(labels))  # the AUC needs both label values
    result = ParityResult(
        files=list(files), n_rows=len(fin_t),
        max_abs_diff=float(np.abs(raw_t - raw_e).max()), max_abs_diff_final=float(np.abs(fin_t - fin_e).max()),
        auc_torch=None, auc_exported=None, auc_diff=0.0, rank_correlation=rank_correlation(fin_t, fin_e),
        labels=source, tolerance=tolerance.auc, prob_tolerance=tolerance.prob, prob_always=tolerance.prob_always,
        notes=notes)
    if not keep.any():
        result.notes.append("no class to score by AUC: gate on max|dprob|")
        return result
    result.auc_torch = macro_roc_auc(labels[:, keep], fin_t[:, keep])
    result.auc_exported = macro_roc_auc(labels[:, keep], fin_e[:, keep])
    result.auc_diff = result.auc_exported - result.auc_torch
    return result
