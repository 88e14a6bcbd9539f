"""Pseudo-labelled soundscape windows as extra examples of the embedding head (``train --pseudo``).

:func:`~birdclef.birdnet.head_train.train_embedding_head` with a pseudo table (:mod:`birdclef.data.pseudo`):

- each table row's 5 s window ``[start_s, start_s + 5)`` of its recording is decoded at BirdNET's 48 kHz
  (zero padded past the file's end) and its 3 s chunks are embedded exactly as a clip row's are (same
  chunk offsets, ``infer.birdnet_hop_s``; the head pools them as it pools clip rows). The embeddings are
  cached once per table in ``RUN/embeddings/pseudo-<key>.npz`` (``rows`` (n,) int64 table rows, ``emb``
  (n, C, D) float16, ``skipped`` the recordings that could not be decoded); the key hashes the table's
  sha256, the hop and the model file, so ``--resume`` reuses them;
- a pseudo window's targets are the teacher's soft probabilities, its mask the table's non-NaN cells
  (the loss skips masked classes) and its fold the soundscape's fold under ``data.n_folds`` /
  ``data.fold_seed`` (whole files); fold ``k`` trains on the windows of the other folds only, and
  ``RUN/pseudo_folds.csv`` + ``RUN/pseudo.json`` record that, so the run can later teach under the fold rule;
- per epoch fold ``k`` draws ``train.pseudo_ratio`` x its clean clip rows of those windows (without
  repetition, capped by the windows it may use; seeded by (``train.seed``, fold, epoch)), each weighing
  ``train.pseudo_weight`` x (1 + ``train.embed_copies``): a clip row appears once per copy, so this is
  ``pseudo_weight`` times a clip row's weight per epoch. Validation and OOF stay clip rows only;
- with ``train.pseudo_mass_cap`` a class whose pseudo mass per epoch exceeds that multiple of its labelled mass has
  its pseudo rows' masks scaled down to it (:meth:`~birdclef.birdnet.head_data.HeadData.fold_mask`,
  ``RUN/fold{k}/pseudo_mass.json``).

``train.pseudo_mix_prob`` (mixing a pseudo window into a clip's audio) applies to the CNN path only: the
head trains on cached embeddings, so its pseudo windows are extra examples and nothing is mixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from birdclef.audio.io import load_audio
from birdclef.birdnet.head_data import ROW_BATCH, HeadData, embed_rows
from birdclef.birdnet.head_inputs import HeadInputs
from birdclef.config import Config
from birdclef.data.pseudo import RUN_RECORD, PseudoLabels, check_resumed_table, read_pseudo, write_run_pseudo
from birdclef.errors import AudioError, DatasetError
from birdclef.infer.base import ROW_WINDOW_S
from birdclef.utils.io import write_atomic

log = logging.getLogger(__name__)


def open_pseudo(config: Config, data_root: Path, path: Path) -> PseudoLabels:
    """Read `path` against the dataset's classes, folds following the student's split; 5 s windows only."""
    from birdclef.data.metadata import DatasetLayout, load_classes

    classes = load_classes(DatasetLayout.from_root(data_root))
    labels = read_pseudo(path, classes, config.data.n_folds, config.data.fold_seed)
    length = (labels.table["end_s"] - labels.table["start_s"]).to_numpy()
    bad = np.flatnonzero(np.abs(length - ROW_WINDOW_S) > 1e-3)
    if len(bad):
        row = labels.table.iloc[bad[0]]
        raise DatasetError(f"{path}: row {bad[0]} ({row['path']} at {row['start_s']} s) spans {length[bad[0]]:g} s; "
                           f"the head trains on {ROW_WINDOW_S:g} s windows (end_s = start_s + {ROW_WINDOW_S:g})")
    if config.train.pseudo_mix_prob > 0:
        log.warning("train.pseudo_mix_prob applies to CNN training only; the BirdNET head adds the pseudo "
                    "windows as examples and mixes nothing")
    return labels


def record_pseudo(run: Path, labels: PseudoLabels | None) -> None:
    """Refuse to resume `run` with another table (the rule of
    :func:`~birdclef.data.pseudo.check_resumed_table`); then record it."""
    check_resumed_table(run, run / RUN_RECORD, None if labels is None else labels.source,
                        None if labels is None else labels.sha256, "pseudo-label table", "--pseudo", "pseudo-labels")
    if labels is not None:
        write_run_pseudo(run, labels)


def pseudo_key(config: Config, labels: PseudoLabels, inputs: HeadInputs) -> str:
    """Hash of what changes the pseudo windows' embeddings: the table's content, the hop and the model files."""
    record = {"table": labels.sha256, "hop": config.infer.birdnet_hop_s, "sample_rate": inputs.sample_rate,
              **inputs.key_record()}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def _window(wave: np.ndarray, start_s: float, sample_rate: int) -> np.ndarray:
    """(5 s,) float32 samples from `start_s`, zero padded past the end of `wave`."""
    row_len = int(round(ROW_WINDOW_S * sample_rate))
    start = int(round(start_s * sample_rate))
    out = np.zeros(row_len, np.float32)
    part = wave[start : start + row_len]
    out[: len(part)] = part
    return out


def _embed_windows(config: Config, labels: PseudoLabels, inputs: HeadInputs,
                   progress: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(table rows, (n, C, D) float16 embeddings, skipped recordings): each recording decoded once."""
    rate = inputs.sample_rate
    rows, parts, waves, skipped = [], [], [], []
    bar = tqdm(total=len(labels), desc="embeddings (pseudo windows)", unit="window", disable=not progress)
    for audio, group in labels.table.groupby("audio", sort=False):
        try:
            wave = load_audio(audio, rate)
        except AudioError as exc:
            log.warning("skipping %d pseudo-labelled windows: %s", len(group), exc)
            skipped.append(str(exc))
            bar.update(len(group))
            continue
        for row, start_s in zip(group.index, group["start_s"]):
            rows.append(int(row))
            waves.append(_window(wave, float(start_s), rate))
            if len(waves) == ROW_BATCH:
                parts.append(embed_rows(inputs, waves))
                waves = []
            bar.update(1)
    if waves or not parts:
        parts.append(embed_rows(inputs, waves))
    bar.close()
    return np.asarray(rows, np.int64), np.concatenate(parts), skipped


def embed_pseudo(config: Config, labels: PseudoLabels, inputs: HeadInputs, folder: Path,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(table rows, embeddings, skipped recordings) of the pseudo windows, computed once and cached in `folder`."""
    path = folder / f"pseudo-{pseudo_key(config, labels, inputs)}.npz"
    if not path.is_file():
        rows, emb, skipped = _embed_windows(config, labels, inputs, progress)
        folder.mkdir(parents=True, exist_ok=True)

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a temporary name
                np.savez(f, rows=rows, emb=emb, skipped=np.asarray(skipped, dtype=str))

        write_atomic(path, save)
    with np.load(path) as data:
        return data["rows"], data["emb"], [str(s) for s in data["skipped"]]


def add_pseudo_rows(data: HeadData, config: Config, labels: PseudoLabels, inputs: HeadInputs, folder: Path,
                    progress: bool = True) -> list[str]:
    """Embed (or reuse) the pseudo windows and add them to `data`; returns the recordings skipped."""
    rows, emb, skipped = embed_pseudo(config, labels, inputs, folder, progress)
    weight = config.train.pseudo_weight * (1 + config.train.embed_copies)
    data.add_pseudo(emb, labels.targets[rows], labels.mask[rows], labels.table["fold"].to_numpy()[rows], weight)
    return skipped


def add_reviewed_rows(data: HeadData, config: Config, labels: PseudoLabels, inputs: HeadInputs, folder: Path,
                      progress: bool = True) -> list[str]:
    """Embed (or reuse) the reviewed windows (:mod:`birdclef.data.reviewed`) and add them to `data` as examples
    of every fold; returns the recordings skipped."""
    rows, emb, skipped = embed_pseudo(config, labels, inputs, folder, progress)
    weight = config.train.review_weight * (1 + config.train.embed_copies)  # as a clip row: once per copy
    add_reviewed(data, emb, labels.targets[rows], labels.mask[rows], weight)
    return skipped


def add_reviewed(data: HeadData, emb: np.ndarray, targets: np.ndarray, mask: np.ndarray, weight: float) -> None:
    """Append reviewed windows to `data`: hard targets of the answered classes, the rest masked; fold -1 and not
    pseudo rows, so every fold trains on all of them in every epoch (they are never drawn, never validation)."""
    data.add_pseudo(emb, targets, mask, np.full(len(emb), -1), weight)
    data.pseudo[len(data.pseudo) - len(emb):] = False
