"""k-fold training: run folder, cache, folds, one Lightning fit per fold, out-of-fold predictions.

Run folder (STYLE §3.5)::

    RUN/config.yaml  env.json  data.json  folds.csv  metrics.csv  oof.parquet  summary.json
    RUN/pseudo_folds.csv  pseudo.json  pseudo_cache/           (with --pseudo)
    RUN/fold{k}/best.pt  last.ckpt  metrics.csv  oof.parquet  done.json
    RUN/fold{k}/pseudo_mass.json                               (train.pseudo_mass_cap: the classes it scaled)
    RUN/mil_windows.csv  fold{k}/mil_windows.parquet           (data.strategy=mil: birdclef.train.mil_windows)
    RUN/classes.json                                           (a taxon specialist, data.classes: birdclef.data.subset)

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

import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from birdclef.birdnet.torch_net import init_head_from_birdnet
from birdclef.config import BIRDNET_BACKBONE, Config, mil_hop_s
from birdclef.data.cache import WaveCache, prepare_cache
from birdclef.data.examples import Examples, build_examples, prepare_pseudo_audio
from birdclef.data.examples import build_targets  # noqa: F401  (re-exported for callers of this module)
from birdclef.data.folds import assign_folds
from birdclef.data.metadata import DatasetLayout, load_classes
from birdclef.data.pseudo import MASS_RECORD, PseudoLabels, clip_fold_map, mass_record, open_run_pseudo
from birdclef.data.reviewed import merge_labels, read_reviewed, record_reviewed
from birdclef.data.subset import cut_labels, record_subset, subset_of, subset_summary
from birdclef.errors import ConfigError
from birdclef.models import load_checkpoint
from birdclef.train.callbacks import FoldRecorder
from birdclef.train.fold_data import FoldData
from birdclef.train.init_from import check_init_from, load_init
from birdclef.train.lifecycle import AtomicCheckpointIO, is_launched_rank
from birdclef.train.mil import CHECKPOINT_KEY as MIL_CHECKPOINT_KEY
from birdclef.train.mil import MilPooling, bag_forward
from birdclef.train.mil_windows import write_fold_windows, write_run_windows
from birdclef.train.run_folder import OOF_NOTE, TrainSummary, background_bank, collect_summary, init_run
from birdclef.train.module import BirdModule
from birdclef.train.trainer_setup import check_names
from birdclef.train.trainer_setup import launched_checkpoint as _existing
from birdclef.train.trainer_setup import quiet_lightning as _quiet_lightning
from birdclef.train.trainer_setup import resume_checkpoint as _resume_checkpoint
from birdclef.train.trainer_setup import trainer_precision as _precision
from birdclef.utils.device import autocast_for, resolve_device
from birdclef.utils.io import write_csv_atomic, write_json_atomic, write_parquet_atomic
from birdclef.utils.process import die_with_parent
from birdclef.zoo.runs import TORCH_RUN

log = logging.getLogger(__name__)

def _fit_fold(config, classes, examples: Examples, fold, run, background, resume, progress, callbacks, taxonomy=None):
    fold_dir = run / f"fold{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.train.seed + fold, verbose=False)
    module = BirdModule(config, classes, fold)
    if config.model.backbone == BIRDNET_BACKBONE and config.model.init_from_birdnet:
        init_head_from_birdnet(module.model, classes, taxonomy)  # a resumed fold then loads last.ckpt over it
    load_init(module.model, config, classes, fold)  # train.init_from (a resumed fold loads last.ckpt over it)
    data = FoldData(config, examples, fold, background)
    if data.pseudo_factors is not None and not is_launched_rank():
        write_json_atomic(mass_record(data.pseudo_factors, classes, config.train.pseudo_mass_cap),
                          fold_dir / MASS_RECORD)
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
    write_json_atomic({"fold": fold, "best_epoch": best.epoch, "best_score": best.score, "epochs": config.train.epochs,
                       "kind": TORCH_RUN}, fold_dir / "done.json")


def _mil_pool(best, num_classes: int) -> MilPooling | None:
    """The pooling a MIL run's best.pt keeps beside its model, or None."""
    entry = best.extra.get(MIL_CHECKPOINT_KEY)
    return None if entry is None else MilPooling.from_checkpoint_entry(entry, num_classes).eval()


def _open_pseudo(run: Path, pseudo: Path | None, classes: list[str], config: Config, child: bool,
                 existed: bool, cache: WaveCache, audio_dir: Path) -> PseudoLabels | None:
    """Read `pseudo` against the run's split (windows of the cached clips in their clip's fold); a resumed run
    keeps the table it trained on (:func:`~birdclef.data.pseudo.open_run_pseudo`)."""
    data = config.data
    own = None
    if pseudo is not None:
        folds = assign_folds(cache.index["primary_label"].astype(str).tolist(), data.n_folds, data.fold_seed)
        own = clip_fold_map(audio_dir, cache.index["filename"].astype(str), folds)
    return open_run_pseudo(run, pseudo, classes, data.n_folds, data.fold_seed, not child, existed, own)


def train_kfold(
    config: Config,
    data_root: Path,
    out: Path,
    cache_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: list[L.Callback] | None = None,
    pseudo: Path | None = None,
    reviews: Path | None = None,
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
        reviews: a ``birdclef review`` table (:mod:`birdclef.data.reviewed`): every fold also trains on each
            answered window, a positive (yes) or explicit negative (no) of its class with the other classes
            masked, weighted ``train.review_weight``; recorded in ``RUN/reviews.json``.

    Returns:
        Per-fold best scores and the out-of-fold macro ROC-AUC of the finished folds.

    Raises:
        ConfigError: a resumed run with a different config or pseudo table.
        DatasetError: a broken data set or pseudo table (named).
    """
    if config.train.init_from is not None:
        if config.model.freeze_backbone:
            raise ConfigError("train.init_from starts a CNN from a trained run's weights; a head on frozen "
                              "embeddings (model.freeze_backbone) has none to start from")
        check_init_from(config)
    if config.model.freeze_backbone:  # a head on frozen BirdNET embeddings: no Lightning, no torch backbone
        from birdclef.birdnet.head_train import train_embedding_head

        return train_embedding_head(config, data_root, out, cache_dir, resume, progress, pseudo=pseudo,
                                    reviews=reviews)
    if config.train.distill_teacher is not None:  # a CNN that learns a foundation model's embeddings, then labels
        from birdclef.train.embedding_distill import train_distilled

        return train_distilled(config, data_root, out, cache_dir, resume, progress, callbacks, pseudo, reviews)
    started = time.perf_counter()
    run = Path(out)
    child = is_launched_rank()  # a DDP rank > 0 re-running the command: rank 0 owns the run folder
    check_names(config)
    layout = DatasetLayout.from_root(data_root)
    all_classes = load_classes(layout)
    subset = subset_of(config.data, all_classes, layout.taxonomy_csv)  # a misspelt name fails before the run folder
    classes = list(subset.classes)
    existed = resume and (run / "config.yaml").is_file()
    if child:
        die_with_parent()
    else:
        init_run(run, config, resume)
    reviewed = None if reviews is None else cut_labels(read_reviewed(reviews, all_classes), subset)
    if not child:
        record_reviewed(run, reviewed, existed)
    data = config.data
    skipped_clips = 0
    if not child:  # the cache is complete before rank 0 launches the other ranks
        skipped_clips = prepare_cache(layout.root, cache_dir or run / "cache", strategy=data.strategy,
                                      window_s=data.window_s, sample_rate=data.sample_rate, max_clip_s=data.max_clip_s,
                                      num_workers=config.train.num_workers, max_files=data.max_files,
                                      progress=progress, window_table=data.window_table).n_skipped
    cache = WaveCache(cache_dir or run / "cache")
    labels = cut_labels(_open_pseudo(run, pseudo, all_classes, config, child, existed, cache, layout.train_audio),
                        subset)
    windows = labels if reviewed is None else reviewed if labels is None else merge_labels(labels, reviewed)
    audio = None if windows is None else prepare_pseudo_audio(windows, run / "pseudo_cache", data.sample_rate,
                                                              data.window_s, progress and not child)
    if not child:
        write_json_atomic({"data_root": str(layout.root.resolve()), "cache": str(cache.path.resolve())},
                          run / "data.json")
    examples = build_examples(cache, all_classes, config, labels, audio, reviewed, subset)
    clips = examples.table.iloc[: examples.n_clips]
    n_train_clips = int(examples.active[: examples.n_clips].sum())
    if not child:
        write_csv_atomic(pd.DataFrame({"filename": cache.index["filename"],
                                       "primary_label": cache.index["primary_label"], "fold": clips["fold"]}),
                         run / "folds.csv")
        record_subset(run, subset, examples.n_clips, n_train_clips)
    background = background_bank(config, layout)
    for fold in config.train.folds:
        if (run / f"fold{fold}" / "done.json").is_file():
            continue
        if not _fit_fold(config, classes, examples, fold, run, background, resume, progress, callbacks,
                         taxonomy=layout.taxonomy_csv):
            break  # interrupted: leave the remaining folds for --resume
    if child:
        return TrainSummary(run, n_clips=len(cache.index), elapsed_s=time.perf_counter() - started)
    summary = collect_summary(run, list(config.train.folds), classes, examples.targets[: examples.n_clips], cache.index)
    if data.strategy == "mil":
        write_run_windows(run, list(config.train.folds))
    summary.n_clips, summary.elapsed_s = len(cache.index), time.perf_counter() - started
    summary.skipped_clips, summary.cache_dir = skipped_clips, cache.path
    summary.skipped_background = [] if background is None else list(background.skipped)
    summary.n_pseudo = 0 if labels is None else len(labels)
    write_json_atomic({"fold_scores": summary.fold_scores, "oof_auc": summary.oof_auc, "oof_note": OOF_NOTE,
                       "n_clips": summary.n_clips, "n_pseudo": summary.n_pseudo, "classes": len(classes),
                       **subset_summary(subset, n_train_clips),
                       "elapsed_s": round(summary.elapsed_s, 1)}, run / "summary.json")
    return summary
