"""Soundscapes -> per-window probabilities: windows, fold soft-voting, weighted run blends.

Each soundscape is split into consecutive 5 s rows (``row_id = <stem>_<end_s>``; a short tail is
zero-padded). A model trained on `window_s`-long clips sees, for each row, the `window_s` span
centred on it, so 10 s SED models score the same 5 s rows. All windows of a file go through the
model in batches of ``infer.batch_size``; the mel image is computed once per distinct front end
and shared by the folds that use it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from birdclef.audio.io import load_audio
from birdclef.audio.segments import row_ids, soundscape_windows
from birdclef.config import Config, InferConfig
from birdclef.errors import AudioError, BirdclefError
from birdclef.infer.ensemble import average_folds, normalise_weights
from birdclef.infer.postprocess import POSTPROCESSORS, enabled_steps
from birdclef.models import BirdClassifier, load_checkpoint
from birdclef.utils.device import autocast_for, resolve_device

ROW_WINDOW_S = 5.0
"""The competition scores 5 s rows."""


@dataclass
class RunEnsemble:
    """The finished folds of one training run (or a single checkpoint), ready to predict."""

    path: Path
    models: list[BirdClassifier]
    classes: list[str]
    config: Config
    checkpoints: list[Path]

    @property
    def window_s(self) -> float:
        return self.config.data.window_s

    @property
    def sample_rate(self) -> int:
        return self.config.data.sample_rate


def run_checkpoints(run: Path) -> list[Path]:
    """best.pt of every finished fold of `run` (or `run` itself when it is a checkpoint file)."""
    run = Path(run)
    if run.is_file():
        return [run]
    if not run.is_dir():
        raise BirdclefError(f"{run}: no such run folder or checkpoint file")
    done = [p.parent / "best.pt" for p in sorted(run.glob("fold*/done.json")) if (p.parent / "best.pt").is_file()]
    if not done:
        raise BirdclefError(f"{run}: no finished fold (fold*/done.json with best.pt); train it first or "
                            "point --run at a best.pt file")
    return done


def load_run(run: Path, device: torch.device) -> RunEnsemble:
    """Load every finished fold of `run` on `device`, in eval mode; folds must share classes and config."""
    paths = run_checkpoints(run)
    loaded = [load_checkpoint(p, map_location=device) for p in paths]
    first = loaded[0]
    for other, path in zip(loaded[1:], paths[1:]):
        if other.classes != first.classes:
            raise BirdclefError(f"{path}: its class list differs from {paths[0]}'s")
    models = [item.model.to(device).eval() for item in loaded]
    return RunEnsemble(Path(run), models, list(first.classes), first.config, paths)


def context_windows(wave: np.ndarray, sample_rate: int, n_rows: int, window_s: float) -> np.ndarray:
    """(n_rows, window_s * sample_rate) inputs: for each 5 s row, the `window_s` span centred on it.

    Samples outside the file are zeros (the padded tail of the last row, and the context of edge rows).
    """
    row_len, win_len = int(round(ROW_WINDOW_S * sample_rate)), int(round(window_s * sample_rate))
    margin = (win_len - row_len) // 2
    total = n_rows * row_len
    padded = np.zeros(total + 2 * max(margin, 0) + max(win_len - row_len, 0), dtype=np.float32)
    offset = max(margin, 0)
    padded[offset : offset + min(len(wave), total)] = wave[:total]
    starts = offset + np.arange(n_rows) * row_len - margin
    return np.stack([padded[s : s + win_len] for s in starts])


@torch.no_grad()
def predict_run(ensemble: RunEnsemble, wave: np.ndarray, n_rows: int, batch_size: int,
                device: torch.device) -> np.ndarray:
    """(n_rows, K) fold-averaged probabilities of one file's rows."""
    inputs = torch.from_numpy(context_windows(wave, ensemble.sample_rate, n_rows, ensemble.window_s))
    fold_probs: list[list[np.ndarray]] = [[] for _ in ensemble.models]
    for begin in range(0, n_rows, batch_size):
        batch = inputs[begin : begin + batch_size].to(device)  # (B, T)
        mels: dict[object, torch.Tensor] = {}
        with autocast_for(device):
            for k, model in enumerate(ensemble.models):
                key = model.cfg.frontend  # frozen dataclass: equal front ends share one mel image
                if key not in mels:
                    mels[key] = model.forward_mel(batch)
                logits = model.forward_head(model.forward_backbone(mels[key]))["clip_logits"]
                fold_probs[k].append(torch.sigmoid(logits.float()).cpu().numpy())
    return average_folds([np.concatenate(chunks) for chunks in fold_probs])


def postprocess_file(probs: np.ndarray, cfg: InferConfig) -> np.ndarray:
    """Apply the enabled post-processing steps (smoothing, power adjustment) to one file's (W, K) rows."""
    for name in enabled_steps(cfg):
        probs = POSTPROCESSORS.get(name)(probs, cfg)
    return probs


def predict_wave(wave: np.ndarray, ensembles: Sequence[RunEnsemble], weights: np.ndarray, cfg: InferConfig,
                 device: torch.device) -> np.ndarray:
    """(W, K) blended, post-processed probabilities of one decoded soundscape (classes of ensembles[0])."""
    sample_rate, classes = ensembles[0].sample_rate, ensembles[0].classes
    n_rows = len(soundscape_windows(len(wave) / sample_rate, ROW_WINDOW_S))
    per_run = []
    for ens in ensembles:
        probs = predict_run(ens, wave, n_rows, cfg.batch_size, device)
        if ens.classes != classes:  # blended runs may list the same classes in another order
            probs = probs[:, [ens.classes.index(c) for c in classes]]
        per_run.append(postprocess_file(probs, cfg) if cfg.postprocess_stage == "per_model" else probs)
    blended = sum(w * p for w, p in zip(weights, per_run))
    return postprocess_file(blended, cfg) if cfg.postprocess_stage == "blend" else blended


class SoundscapeFiles(Dataset):
    """Decodes one soundscape per item (in DataLoader workers, overlapping the model's compute).

    A file that cannot be decoded yields its error message instead of raising, so a batch job
    records it and goes on.
    """

    def __init__(self, paths: Sequence[Path], sample_rate: int):
        self.paths, self.sample_rate = [Path(p) for p in paths], sample_rate

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Path, np.ndarray | None, str | None]:
        try:
            return self.paths[i], load_audio(self.paths[i], self.sample_rate), None
        except AudioError as exc:
            return self.paths[i], None, exc.reason


def check_ensembles(ensembles: Sequence[RunEnsemble]) -> None:
    """Runs of a blend must score the same classes (any order) at the same sample rate."""
    first = ensembles[0]
    for ens in ensembles[1:]:
        if set(ens.classes) != set(first.classes):
            raise BirdclefError(f"{ens.path}: its classes differ from {first.path}'s; blended runs must share classes")
        if ens.sample_rate != first.sample_rate:
            raise BirdclefError(f"{ens.path}: sample rate {ens.sample_rate} differs from {first.path}'s {first.sample_rate}")


def iter_predictions(
    paths: Sequence[Path],
    ensembles: Sequence[RunEnsemble],
    weights: Sequence[float] | None,
    cfg: InferConfig,
    device: torch.device,
    num_workers: int = 0,
) -> Iterator[tuple[Path, pd.DataFrame | None, str | None]]:
    """Yield (path, rows, None) per decodable file and (path, None, reason) per broken one.

    `rows` is a DataFrame of row_id plus one column per class in ensembles[0]'s order.
    """
    check_ensembles(ensembles)
    classes = ensembles[0].classes
    w = normalise_weights(weights, len(ensembles))
    files = SoundscapeFiles(paths, ensembles[0].sample_rate)
    loader = DataLoader(files, batch_size=None, shuffle=False, num_workers=num_workers)
    for path, wave, error in loader:
        if error is not None:
            yield path, None, error
            continue
        probs = predict_wave(wave, ensembles, w, cfg, device)
        ids = row_ids(path.stem, soundscape_windows(len(wave) / ensembles[0].sample_rate, ROW_WINDOW_S))
        frame = pd.DataFrame(probs.astype(np.float32), columns=classes)
        frame.insert(0, "row_id", ids)
        yield path, frame, None


def predict_soundscapes(
    paths: Sequence[str | Path],
    runs: Sequence[str | Path],
    weights: Sequence[float] | None = None,
    config: InferConfig | None = None,
    device: str = "auto",
    num_workers: int = 0,
) -> pd.DataFrame:
    """Predict every 5 s row of the given soundscapes with one run or a weighted blend of runs.

    Args:
        paths: soundscape files (any length; a short tail is padded).
        runs: run folders (their finished folds are soft-voted) or best.pt files.
        weights: blend weights of `runs` (normalised to sum 1); default equal.
        config: post-processing and batch settings; default :class:`InferConfig`.
        device: auto | cpu | cuda.
        num_workers: processes decoding the next files while the model runs.

    Returns:
        DataFrame indexed by row_id, one probability column per class (the first run's order).
        Files that cannot be decoded are left out (see :func:`iter_predictions` to get their errors).

    Example:
        >>> probs = predict_soundscapes(sorted(Path("test_soundscapes").glob("*.ogg")), ["runs/baseline"])
    """
    dev = resolve_device(device)
    ensembles = [load_run(Path(r), dev) for r in runs]
    frames = [rows for _, rows, _ in iter_predictions([Path(p) for p in paths], ensembles, weights,
                                                       config or InferConfig(), dev, num_workers) if rows is not None]
    if not frames:
        return pd.DataFrame(columns=ensembles[0].classes).rename_axis("row_id")
    return pd.concat(frames, ignore_index=True).set_index("row_id")
