"""k-fold training: run folder, cache, folds, one Lightning fit per fold, out-of-fold predictions.

Run folder (STYLE §3.5)::

    RUN/config.yaml  env.json  data.json  folds.csv  metrics.csv  oof.parquet  summary.json
    RUN/pseudo_folds.csv  pseudo.json  pseudo_cache/           (with --pseudo)
    RUN/fold{k}/best.pt  last.ckpt  metrics.csv  oof.parquet  done.json
    RUN/mil_windows.csv  fold{k}/mil_windows.parquet           (data.strategy=mil: birdclef.train.mil_windows)

``best.pt`` is the self-describing checkpoint inference loads; ``last.ckpt`` is Lightning's full
state (optimizer, scheduler, callbacks) for ``--resume``, written atomically (an unreadable one is
set aside as ``last.ckpt.corrupt`` and its fold restarts, with a warning: :mod:`birdclef.utils.state`);
``done.json`` marks a finished fold. ``oof.parquet`` is keyed by clip (``filename``, and the cache index's ``row``).

Clips and pseudo-labelled soundscape windows are one table of examples (:mod:`birdclef.data.examples`)
with one fold column: ``folds.csv`` lists the clips' folds, ``pseudo_folds.csv`` the soundscapes'
(:func:`birdclef.data.pseudo.write_run_pseudo`); fold ``k`` trains on both sources outside fold ``k`` and
validates on fold ``k``'s clips only.

Under DDP (``train.devices`` > 1) Lightning re-runs the command for ranks 1..N-1 once rank 0
reaches its first fit; those ranks read the run folder and cache but never write them.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from birdclef.birdnet.torch_net import init_head_from_birdnet
from birdclef.config import BIRDNET_BACKBONE, Config, config_to_dict, dump_config, load_config, mil_hop_s
from birdclef.data.augment import BackgroundBank
from birdclef.data.cache import WaveCache, prepare_cache
from birdclef.data.examples import Examples, build_examples, prepare_pseudo_audio
from birdclef.data.examples import build_targets  # noqa: F401  (re-exported: birdnet/head_train imports it from here)
from birdclef.data.metadata import DatasetLayout, load_classes
from birdclef.data.pseudo import RUN_RECORD, PseudoLabels, read_pseudo, write_run_pseudo
from birdclef.errors import BirdclefWarning, ConfigError, DatasetError
from birdclef.models import list_heads, load_checkpoint
from birdclef.models.classifier import check_backbone_name
from birdclef.train.callbacks import FoldRecorder
from birdclef.train.fold_data import FoldData
from birdclef.train.lifecycle import AtomicCheckpointIO, is_launched_rank, readable_checkpoint
from birdclef.train.losses import loss_from_config
from birdclef.train.mil import CHECKPOINT_KEY as MIL_CHECKPOINT_KEY
from birdclef.train.mil import MilPooling, bag_forward
from birdclef.train.mil_windows import write_fold_windows, write_run_windows
from birdclef.train.module import BirdModule, validation_auc
from birdclef.utils.device import autocast_for, resolve_device
from birdclef.utils.io import read_json, write_csv_atomic, write_json_atomic, write_parquet_atomic, write_text_atomic
from birdclef.utils.state import set_aside
from birdclef.utils.process import die_with_parent

log = logging.getLogger(__name__)

OOF_NOTE = ("optimistic: each fold's best.pt was chosen on the same held-out fold it predicts; "
            "score the test soundscapes for an unbiased estimate")
"""Shown wherever the out-of-fold score is (CLI, summary.json and the report that reads it)."""

RESUMABLE_KEYS = ("train.folds", "train.num_workers", "train.devices", "train.accelerator", "train.precision")
"""Config keys that may change when a run is resumed (which folds, and where they run)."""


@dataclass
class TrainSummary:
    run_dir: Path
    fold_scores: dict[int, float] = field(default_factory=dict)
    """Best validation score (macro ROC-AUC) of each finished fold."""
    oof_auc: float | None = None
    """Macro ROC-AUC of the out-of-fold predictions of all finished folds (optimistic, see OOF_NOTE)."""
    n_clips: int = 0
    elapsed_s: float = 0.0
    skipped_clips: int = 0
    """Training clips the cache could not decode (listed in the cache's skipped.csv)."""
    cache_dir: Path | None = None
    skipped_background: list[tuple[str, str]] = field(default_factory=list)
    """(file, reason) of train_soundscapes that could not be decoded for background mixing."""
    n_pseudo: int = 0
    """Pseudo-labelled soundscape windows in the run's table (0 without ``--pseudo``)."""


def _config_diff(a: Config, b: Config) -> list[str]:
    def flat(d: dict, prefix: str = "") -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in d.items():
            name = f"{prefix}{key}"
            out.update(flat(value, name + ".") if isinstance(value, dict) else {name: value})
        return out

    fa, fb = flat(config_to_dict(a)), flat(config_to_dict(b))
    return [k for k in sorted(fa) if fa[k] != fb.get(k) and k not in RESUMABLE_KEYS]


def trained_anything(run: Path) -> bool:
    """Whether a run folder holds any training: a finished fold, a best checkpoint or a last.ckpt."""
    return any(any(Path(run).glob(f"fold*/{name}")) for name in ("done.json", "best.pt", "last.ckpt"))


def init_run(run: Path, config: Config, resume: bool) -> None:
    """Create or re-open the run folder; a resumed run must keep its config (except RESUMABLE_KEYS).

    A folder whose run never finished an epoch (it failed at the start: bad data, out of memory) is no run to
    protect: it is started again (with a warning), with or without ``--resume``, whatever its old config.
    """
    cfg_path = run / "config.yaml"
    if cfg_path.is_file() and not trained_anything(run):  # a run that failed before any epoch: replaced
        if not resume or _config_diff(load_config(cfg_path), config):
            warnings.warn(f"{run} holds a run that never finished an epoch (no checkpoint, no finished fold: a "
                          "failed start?): starting it again with this config", BirdclefWarning, stacklevel=2)
    elif cfg_path.is_file():
        if not resume:
            raise ConfigError(f"{run} already holds a run; pass --resume to continue it, or choose another --out")
        changed = _config_diff(load_config(cfg_path), config)
        if changed:
            raise ConfigError(f"cannot resume {run} with a different config (changed: {', '.join(changed)}); "
                              f"only {', '.join(RESUMABLE_KEYS)} may change")
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(dump_config(config), cfg_path)
    write_json_atomic(_environment(), run / "env.json")


def _environment() -> dict[str, object]:
    import timm

    return {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "timm": timm.__version__, "lightning": L.__version__, "cpu_threads": torch.get_num_threads(),
            "accelerator": resolve_device("auto").type}


@contextmanager
def _quiet_lightning():
    """Hide Lightning's start-up chatter (device lines, adverts) and warnings that are expected here."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = log.level
    log.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own use of a torch API
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")  # resume
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # num_workers is the user's choice
        try:
            yield
        finally:
            log.setLevel(level)


def _precision(config: Config) -> str:
    if config.train.precision != "auto":
        return config.train.precision
    on_gpu = config.train.accelerator != "cpu" and resolve_device("auto").type != "cpu"
    return "bf16-mixed" if on_gpu else "32-true"


def check_names(config: Config) -> None:
    """ConfigError on a misspelt loss, head or backbone before the (slow) cache step, not after it."""
    try:
        loss_from_config(config.train)
    except ConfigError as exc:
        raise ConfigError(f"train.loss: {exc}") from None
    if config.model.head not in list_heads():
        raise ConfigError(f"model.head {config.model.head!r} is not a registered head; choose from {list_heads()}")
    check_backbone_name(config.model.backbone, config.model.birdnet_path)


def _resume_checkpoint(fold_dir: Path, resume: bool) -> Path | None:
    """The fold's last.ckpt to resume from; an unreadable one is moved aside and the fold restarts."""
    ckpt = fold_dir / "last.ckpt"
    if not resume or not ckpt.is_file():
        return None
    reason = readable_checkpoint(ckpt)
    if reason is None:
        return ckpt
    set_aside(ckpt, reason, f"fold {fold_dir.name.removeprefix('fold')} restarts from epoch 0 (finished folds "
              "are kept)")
    return None


def _fit_fold(config, classes, examples: Examples, fold, run, background, resume, progress, callbacks, taxonomy=None):
    fold_dir = run / f"fold{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.train.seed + fold, verbose=False)
    module = BirdModule(config, classes, fold)
    if config.model.backbone == BIRDNET_BACKBONE and config.model.init_from_birdnet:
        init_head_from_birdnet(module.model, classes, taxonomy)  # a resumed fold then loads last.ckpt over it
    data = FoldData(config, examples, fold, background)
    last = ModelCheckpoint(dirpath=fold_dir, filename="last", monitor=None, save_top_k=1,
                           save_on_train_epoch_end=True, enable_version_counter=False)
    ckpt = _resume_checkpoint(fold_dir, resume) if not is_launched_rank() else _existing(fold_dir / "last.ckpt", resume)
    with _quiet_lightning():
        trainer = L.Trainer(
            max_epochs=config.train.epochs, accelerator=config.train.accelerator, devices=config.train.devices,
            strategy="ddp" if config.train.devices > 1 else "auto", precision=_precision(config),
            callbacks=[FoldRecorder(fold_dir, fold, config, classes), last, *(callbacks or [])], logger=False,
            enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
            use_distributed_sampler=False, default_root_dir=fold_dir, log_every_n_steps=1,
            plugins=[AtomicCheckpointIO()],
        )
        trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    finished = trainer.current_epoch >= config.train.epochs and not trainer.interrupted
    if finished and trainer.is_global_zero:
        _write_oof(fold_dir, fold, data.val_dataloader(), examples, classes, config)
    return finished


def _existing(path: Path, resume: bool) -> Path | None:
    """A launched DDP rank resumes from what rank 0 chose (rank 0 has moved an unreadable file aside)."""
    return path if resume and path.is_file() else None


@torch.no_grad()
def _write_oof(fold_dir: Path, fold: int, val_dl: DataLoader, examples: Examples, classes, config: Config) -> None:
    """Predict the held-out fold's clips with best.pt and mark the fold done."""
    device = resolve_device("cpu" if config.train.accelerator == "cpu" else "auto")
    best = load_checkpoint(fold_dir / "best.pt", map_location=device)
    model = best.model.to(device).eval()
    pool = _mil_pool(best, len(classes))
    chunks = []
    for batch in val_dl:
        with autocast_for(device):
            logits = (model(batch[0].to(device))["clip_logits"] if pool is None else  # a MIL run: bag predictions
                      bag_forward(model, pool.to(device), batch[0].to(device), batch[4].to(device))["clip_logits"])
        chunks.append(torch.sigmoid(logits.float()).cpu().numpy())
    index = examples.cache.index
    positions = examples.table["cache_row"].to_numpy()[val_dl.dataset.rows]  # not the cache index's `row`
    probs = np.concatenate(chunks) if chunks else np.zeros((0, len(classes)), np.float32)
    oof = pd.DataFrame(probs, columns=classes)
    oof.insert(0, "fold", fold)
    oof.insert(0, "primary_label", index["primary_label"].to_numpy()[positions])
    oof.insert(0, "row", index["row"].to_numpy()[positions])  # the same `row` as the cache index
    oof.insert(0, "filename", index["filename"].to_numpy()[positions])
    write_parquet_atomic(oof, fold_dir / "oof.parquet")
    if pool is not None:  # before done.json: a finished fold always has its table
        write_fold_windows(fold_dir, model, pool, examples.cache, classes,
                           examples.table["fold"].to_numpy()[: examples.n_clips], fold, mil_hop_s(config), device)
    write_json_atomic({"fold": fold, "best_epoch": best.epoch, "best_score": best.score, "epochs": config.train.epochs},
                      fold_dir / "done.json")


def _mil_pool(best, num_classes: int) -> MilPooling | None:
    """The pooling a MIL run's best.pt keeps beside its model, or None."""
    entry = best.extra.get(MIL_CHECKPOINT_KEY)
    return None if entry is None else MilPooling.from_checkpoint_entry(entry, num_classes).eval()


def _collect(run: Path, folds: list[int], classes: list[str], targets: np.ndarray, index: pd.DataFrame) -> TrainSummary:
    """Concatenate fold metrics and OOF predictions; score the OOF predictions against their clips' targets."""
    summary = TrainSummary(run)
    done = [f for f in folds if (run / f"fold{f}" / "done.json").is_file()]
    metrics = [pd.read_csv(run / f"fold{f}" / "metrics.csv") for f in done if (run / f"fold{f}" / "metrics.csv").is_file()]
    if metrics:
        write_csv_atomic(pd.concat(metrics, ignore_index=True), run / "metrics.csv")
    for f in done:
        summary.fold_scores[f] = json.loads((run / f"fold{f}" / "done.json").read_text())["best_score"]
    if done:
        oof = pd.concat([pd.read_parquet(run / f"fold{f}" / "oof.parquet") for f in done], ignore_index=True)
        write_parquet_atomic(oof, run / "oof.parquet")
        on = ["filename"] if index["filename"].is_unique else ["filename", "row"]  # the clip's identity
        keys = index[on].assign(position=np.arange(len(index)))
        position = oof[on].merge(keys, on=on, how="left", validate="many_to_one")
        if position["position"].isna().any():
            raise DatasetError(f"{run}/oof.parquet names clips that are not in the cache: "
                               f"{position.loc[position['position'].isna(), 'filename'].tolist()[:5]}")
        auc = validation_auc(targets[position["position"].to_numpy(np.int64)], oof[classes].to_numpy())
        summary.oof_auc = None if math.isnan(auc) else auc
    return summary


def background_bank(config: Config, layout: DatasetLayout) -> BackgroundBank | None:
    """The train_soundscapes excerpts mixed under training windows, or None (``train.background_prob`` 0, no folder)."""
    if config.train.background_prob <= 0 or not layout.train_soundscapes.is_dir():
        return None
    return BackgroundBank(sorted(layout.train_soundscapes.glob("*.ogg")), config.data.sample_rate,
                          config.train.background_max_files)


def _open_pseudo(run: Path, pseudo: Path | None, classes: list[str], config: Config, child: bool,
                 existed: bool) -> PseudoLabels | None:
    """Read `pseudo` against the run's split; a resumed run must keep the table it began with."""
    record = run / RUN_RECORD
    before = read_json(record) if existed and record.is_file() else None
    if existed and not child and (before is None) != (pseudo is None):
        raise ConfigError(f"cannot resume {run}: it was trained " + (
            f"with the pseudo-label table {before['table']}; pass --pseudo {before['table']}" if before else
            f"without pseudo-labels, and --pseudo {pseudo} would change its training set; choose another --out"))
    if pseudo is None:
        return None
    labels = read_pseudo(pseudo, classes, config.data.n_folds, config.data.fold_seed)
    if before is not None and before["sha256"] != labels.sha256:
        raise ConfigError(f"cannot resume {run} with the pseudo-label table {labels.source} (sha256 "
                          f"{labels.sha256[:12]}): it was trained on {before['table']} "
                          f"(sha256 {before['sha256'][:12]})")
    if not child:
        write_run_pseudo(run, labels)
    return labels


def train_kfold(
    config: Config,
    data_root: Path,
    out: Path,
    cache_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: list[L.Callback] | None = None,
    pseudo: Path | None = None,
) -> TrainSummary:
    """Train `config.train.folds` of a StratifiedKFold split of `data_root`'s train.csv into `out`.

    Args:
        config: the resolved config (written to ``out/config.yaml``).
        data_root: BirdCLEF-layout folder.
        out: run folder. An existing run needs `resume`; finished folds are skipped and an
            interrupted fold continues from its ``last.ckpt``.
        cache_dir: prepared cache (made there when absent); default ``out/cache``.
        progress: show Lightning's progress bar.
        callbacks: extra Lightning callbacks (tests use one to interrupt a run).
        pseudo: a pseudo-label table (:mod:`birdclef.data.pseudo`): fold ``k`` also trains on the windows
            of soundscapes outside fold ``k`` (``train.pseudo_ratio``, ``pseudo_weight``, ``pseudo_mix_prob``);
            validation and out-of-fold predictions stay the held-out clips. The soundscapes' folds go to
            ``RUN/pseudo_folds.csv`` and the table's identity to ``RUN/pseudo.json`` (folds.csv keeps the
            clips); their audio is decoded once into ``RUN/pseudo_cache/``. A resumed run must be given
            the same table (same sha256), or none if it had none.

    Returns:
        Per-fold best scores and the out-of-fold macro ROC-AUC of the finished folds.

    Raises:
        ConfigError: a resumed run with a different config or pseudo table.
        DatasetError: a broken data set or pseudo table (named).
    """
    if config.model.freeze_backbone:  # a head on frozen BirdNET embeddings: no Lightning, no torch backbone
        from birdclef.birdnet.head_train import train_embedding_head

        return train_embedding_head(config, data_root, out, cache_dir, resume, progress, pseudo=pseudo)
    started = time.perf_counter()
    run = Path(out)
    child = is_launched_rank()  # a DDP rank > 0 re-running the command: rank 0 owns the run folder
    check_names(config)
    existed = resume and (run / "config.yaml").is_file()
    if child:
        die_with_parent()
    else:
        init_run(run, config, resume)
    layout = DatasetLayout.from_root(data_root)
    classes = load_classes(layout)
    labels = _open_pseudo(run, pseudo, classes, config, child, existed)
    data = config.data
    skipped_clips = 0
    if not child:  # the cache is complete before rank 0 launches the other ranks
        skipped_clips = prepare_cache(layout.root, cache_dir or run / "cache", strategy=data.strategy,
                                      window_s=data.window_s, sample_rate=data.sample_rate, max_clip_s=data.max_clip_s,
                                      num_workers=config.train.num_workers, max_files=data.max_files,
                                      progress=progress, window_table=data.window_table).n_skipped
    cache = WaveCache(cache_dir or run / "cache")
    audio = None if labels is None else prepare_pseudo_audio(labels, run / "pseudo_cache", data.sample_rate,
                                                             data.window_s, progress and not child)
    if not child:
        write_json_atomic({"data_root": str(layout.root.resolve()), "cache": str(cache.path.resolve())},
                          run / "data.json")
    examples = build_examples(cache, classes, config, labels, audio)
    clips = examples.table.iloc[: examples.n_clips]
    if not child:
        write_csv_atomic(pd.DataFrame({"filename": cache.index["filename"],
                                       "primary_label": cache.index["primary_label"], "fold": clips["fold"]}),
                         run / "folds.csv")
    background = background_bank(config, layout)
    for fold in config.train.folds:
        if (run / f"fold{fold}" / "done.json").is_file():
            continue
        if not _fit_fold(config, classes, examples, fold, run, background, resume, progress, callbacks,
                         taxonomy=layout.taxonomy_csv):
            break  # interrupted: leave the remaining folds for --resume
    if child:
        return TrainSummary(run, n_clips=len(cache.index), elapsed_s=time.perf_counter() - started)
    summary = _collect(run, list(config.train.folds), classes, examples.targets[: examples.n_clips], cache.index)
    if data.strategy == "mil":
        write_run_windows(run, list(config.train.folds))
    summary.n_clips, summary.elapsed_s = len(cache.index), time.perf_counter() - started
    summary.skipped_clips, summary.cache_dir = skipped_clips, cache.path
    summary.skipped_background = [] if background is None else list(background.skipped)
    summary.n_pseudo = 0 if labels is None else len(labels)
    write_json_atomic({"fold_scores": summary.fold_scores, "oof_auc": summary.oof_auc, "oof_note": OOF_NOTE,
                       "n_clips": summary.n_clips, "n_pseudo": summary.n_pseudo, "classes": len(classes),
                       "elapsed_s": round(summary.elapsed_s, 1)}, run / "summary.json")
    return summary
