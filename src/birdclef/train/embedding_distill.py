"""Embedding distillation: a timm CNN learns a foundation model's embeddings, then the labels (the BirdCLEF+ 2026
winners' recipe). Not the ``birdclef distill`` verb (:mod:`birdclef.selftrain.distill`), which teaches an ensemble's
*labels* (soft pseudo-labels) to a student: here the teacher is a frozen foundation model's *embedding* of each
5 s row, so it needs no labels and can hear all the unlabelled audio there is.

``train_kfold`` hands a config with ``train.distill_teacher: KIND[:FILE]`` here. One run, one schedule per fold::

    epochs 0 .. D-1         distillation: loss = 1 - cos(P(f(x)), t(x)) on every row of the training clips and of
                            the unlabelled audio (D = train.distill_epochs)
    epochs D .. D+E-1       labels: loss = BCE(head(f(x)), y) + w_e * (1 - cos(P(f(x)), t(x))) on the training clips'
                            rows (E = train.epochs); w_e moves from train.distill_weight to train.distill_weight_end
                            (train.distill_decay: linear or cosine over the label epochs); with --pseudo / --reviews
                            also on the fold's draw of pseudo windows and every reviewed window, and with
                            train.distill_label_unlabelled on a draw of unlabelled rows (their labels masked: the
                            cosine term only) (birdclef.train.distill_data, birdclef.train.distill_pseudo)

``f`` is the CNN's pooled feature map (mean over frequency and time, (B, C)), ``P`` the projection head
``Linear(C, D_teacher)`` (1024 for BirdNET, 1536 for Perch v2), ``t(x)`` the teacher's cached embedding of the
very audio ``x`` the student hears (:mod:`birdclef.train.teacher`; clean or background-mixed), centred on the mean
embedding with ``train.distill_center`` (raw BirdNET embeddings share a large common direction: their mean alone
has cosine 0.69 with each row, so the raw cosine starts high and much of it is that mean). The projection
serves training only: ``best.pt`` holds the classifier alone (``RUN/fold{k}/last.ckpt`` keeps the projection for
``--resume``), so export, the parity check, ``predict`` and ``plan`` see an ordinary torch run.

Noise: background mixing comes with the cached copies (the teacher heard it); SpecAugment and dropout act on the
student only (the target stays the teacher's view of the unmasked audio, as in noisy-student training); gain needs
nothing (the front end scales each example's dB image to [0, 1], so a gain hardly changes what the CNN sees);
mixup (``train.mixup_prob``, ``mixup_alpha``, both stages) mixes the waves and the *unit-normalised* teacher
embeddings with the same lambda, and the labels as ``train.mixup_target`` says (a foundation model is not linear, so
the mixed target is an approximation; set ``train.mixup_prob=0`` to train on exact targets only).

The learning rate follows a cosine from ``train.lr`` to ``train.min_lr`` in each stage (it restarts when the labels
arrive: the classifier head starts then; with ``train.distill_head_init`` it starts as a trained embedding head on
the same teacher composed with the projection, :mod:`birdclef.train.distill_head_init`). Each epoch validates on the
held-out fold's clean clip rows: macro ROC-AUC and the mean cosine to the teacher (``val_cos`` in metrics.csv);
``best.pt`` is the best label epoch.

Run folder: as :mod:`birdclef.train.kfold` (config.yaml, folds.csv, fold{k}/best.pt + last.ckpt + metrics.csv +
oof.parquet + done.json, oof.parquet, summary.json) plus ``teacher.json`` (the teacher, its rows and what it cost)
and ``LICENSE-NOTE.txt`` (and ``classes.json`` for a taxon specialist, ``data.classes``, whose other classes' clips
stay as negatives: :mod:`birdclef.data.subset`); the teacher's cache and the unlabelled audio under ``RUN/distill``
(``CACHE/distill`` with ``--cache``). With ``--pseudo``: ``pseudo.json`` and ``pseudo_folds.csv`` (the fold rule's
record, :func:`~birdclef.data.pseudo.write_run_pseudo`) and, with ``train.pseudo_mass_cap``,
``fold{k}/pseudo_mass.json``; with ``--reviews``: ``reviews.json``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from birdclef.config import Config, TrainConfig
from birdclef.data.augment import BackgroundBank, mix_batch, mixup_loss
from birdclef.data.cache import WaveCache, prepare_cache
from birdclef.data.examples import build_targets
from birdclef.data.folds import assign_folds
from birdclef.data.metadata import DatasetLayout, load_classes
from birdclef.data.pseudo import MASS_RECORD, clip_fold_map, mass_record, open_run_pseudo
from birdclef.data.reviewed import read_reviewed, record_reviewed
from birdclef.data.subset import cut_labels, record_subset, subset_of, subset_summary
from birdclef.errors import ConfigError
from birdclef.infer.base import ROW_WINDOW_S
from birdclef.models import load_checkpoint
from birdclef.train.callbacks import FoldRecorder
from birdclef.train.distill_data import DistillData
from birdclef.train.distill_head_init import HeadInit, check_head_init, head_start
from birdclef.train.distill_pseudo import LabelledWindows, labelled_windows
from birdclef.train.init_from import load_init
from birdclef.train.lifecycle import AtomicCheckpointIO, is_launched_rank
from birdclef.train.module import BirdModule
from birdclef.train.run_folder import OOF_NOTE, TrainSummary, background_bank, collect_summary, init_run
from birdclef.train.teacher import Teacher, prepare_teacher, source_stores
from birdclef.train.trainer_setup import (check_names, launched_checkpoint, quiet_lightning, resume_checkpoint,
                                          trainer_precision)
from birdclef.utils.device import autocast_for, resolve_device
from birdclef.utils.io import read_json, write_csv_atomic, write_json_atomic, write_parquet_atomic, write_text_atomic
from birdclef.utils.process import die_with_parent
from birdclef.zoo.runs import TORCH_RUN

DISTILL_FOLDER = "distill"
"""Under RUN (or the given wave cache): the unlabelled audio stores and the teacher's cached embeddings."""


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``1 - cos(student_b, teacher_b)``: 0 when every pair points the same way, 1 when
    orthogonal, 2 when opposite. (B, D) each; scale-free in both."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=1, eps=1e-8)).mean()


def cosine_weight(train: TrainConfig, epoch: int) -> float | None:
    """Weight of the cosine term beside BCE in `epoch`; None in a distillation epoch (cosine alone).

    Label epoch ``j`` of ``E`` (``j = epoch - distill_epochs``) at ``f = j / (E - 1)`` (0 when ``E`` is 1):
    linear ``w0 + (w1 - w0) f``; cosine ``w1 + (w0 - w1) (1 + cos(pi f)) / 2``, with ``w0 = distill_weight``,
    ``w1 = distill_weight_end``.
    """
    j = epoch - train.distill_epochs
    if j < 0:
        return None
    f = min(j / (train.epochs - 1), 1.0) if train.epochs > 1 else 0.0
    w0, w1 = train.distill_weight, train.distill_weight_end
    if train.distill_decay == "linear":
        return w0 + (w1 - w0) * f
    return w1 + (w0 - w1) * 0.5 * (1.0 + math.cos(math.pi * f))


class DistillModule(BirdModule):
    """The classifier plus a projection head ``Linear(C, teacher_dim)`` on its pooled features (module docstring).

    Batches are ``(wave (B, T), target (B, K), mask (B, K), weight (B,), teacher (B, D))``
    (:class:`~birdclef.train.distill_data.DistillRows`).
    """

    def __init__(self, config: Config, classes: list[str], fold: int, teacher_dim: int,
                 head_init: HeadInit | None = None):
        super().__init__(config, classes, fold)
        self.projection = nn.Linear(self.model.num_features, teacher_dim)
        self.head_init = head_init
        """``train.distill_head_init``: composes the classifier when the labels arrive
        (:mod:`birdclef.train.distill_head_init`); its state travels in last.ckpt."""
        self._val_cos: list[torch.Tensor] = []

    def on_train_epoch_start(self) -> None:
        if self.head_init is None:
            return
        if self.current_epoch < self.config.train.distill_epochs:
            self.head_init.reset()  # the scale comes from the last distillation epoch
        elif not self.head_init.done:  # the first label epoch (a resumed later one keeps what last.ckpt holds)
            strategy = self.trainer.strategy
            self.head_init.apply(self.model.head.fc, self.projection,
                                 lambda t: strategy.reduce(t.to(self.device), reduce_op="sum").cpu())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.head_init is not None:
            checkpoint["distill_head_init"] = self.head_init.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.head_init is not None and "distill_head_init" in checkpoint:
            self.head_init.load_state_dict(checkpoint["distill_head_init"])

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, F', T') feature map -> (B, D) student embedding."""
        return self.projection(feats.mean(dim=(2, 3)))

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        wave, target, mask, weight, raw = batch
        train, rng = self.config.train, self._step_rng(batch_idx)
        teacher = F.normalize(raw.float(), dim=1)
        mixed = None
        if train.mixup_alpha > 0 and len(wave) > 1 and rng.random() < train.mixup_prob:
            mixed = mix_batch(wave, target, train.mixup_alpha, rng, mask)
            wave, teacher = mixed.wave, mixed.lam * teacher + (1.0 - mixed.lam) * teacher[mixed.perm]
        feats = self.model.forward_features(wave)  # (B, C, F', T')
        student = self.project(feats)  # (B, D)
        distance = cosine_distance(student, teacher)
        weight_cos = cosine_weight(train, self.current_epoch)
        if weight_cos is None and self.head_init is not None:  # the scale of P f (the cosine has none)
            raw = raw.float()
            self.head_init.accumulate(student, raw if mixed is None else
                                      mixed.lam * raw + (1.0 - mixed.lam) * raw[mixed.perm])
        if weight_cos is None:
            loss = distance
        else:
            logits = self.model.forward_head(feats)["clip_logits"]
            bce = (mixup_loss(self.criterion, logits, mixed, train.mixup_target, weight) if mixed is not None
                   else self.criterion(logits, target, weight, mask))
            loss = bce + weight_cos * distance
        self.log("train_loss", loss, on_step=True, prog_bar=True, batch_size=len(wave))
        self.log("train_loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(wave))
        self.log("train_cos", 1.0 - distance, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(wave))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        wave, target, mask, weight, teacher = batch
        feats = self.model.forward_features(wave)
        logits = self.model.forward_head(feats)["clip_logits"]
        self.log("val_loss", self.criterion(logits, target, weight, mask), on_epoch=True, prog_bar=True,
                 batch_size=len(wave), sync_dist=True)
        self._val_cos.append(F.cosine_similarity(self.project(feats).float(), teacher.float(), dim=1).cpu())
        self._val_probs.append(torch.sigmoid(logits.float()).cpu())
        self._val_targets.append(target.float().cpu())

    def on_validation_epoch_end(self) -> None:
        if self._val_cos:
            self.log("val_cos", torch.cat(self._val_cos).mean(), prog_bar=True, sync_dist=True)
            self._val_cos.clear()
        super().on_validation_epoch_end()

    def configure_optimizers(self):
        train = self.config.train
        optimizer = torch.optim.AdamW(self.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        stages = [n for n in (train.distill_epochs, train.epochs) if n > 0]
        cosines = [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=n, eta_min=train.min_lr)
                   for n in stages]
        scheduler = cosines[0] if len(cosines) == 1 else torch.optim.lr_scheduler.SequentialLR(
            optimizer, cosines, milestones=[stages[0]])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def check_distill_config(config: Config) -> None:
    """ConfigError for what embedding distillation cannot do, before any slow step."""
    if abs(config.data.window_s - ROW_WINDOW_S) > 1e-9:
        raise ConfigError(f"data.window_s must be {ROW_WINDOW_S:g} with train.distill_teacher (the teacher embeds "
                          f"5 s rows), got {config.data.window_s:g}")


def total_epochs(config: Config) -> int:
    return config.train.distill_epochs + config.train.epochs


def _fit_fold(config: Config, classes: list[str], teacher: Teacher, labels: np.ndarray, weights: np.ndarray,
              folds: np.ndarray, fold: int, run: Path, bank: BackgroundBank | None, resume: bool, progress: bool,
              callbacks: list[L.Callback] | None, cache: WaveCache, windows: LabelledWindows | None) -> bool:
    """Train fold `fold` through both stages; write its OOF table and done.json when finished. True if finished."""
    fold_dir = run / f"fold{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.train.seed + fold, verbose=False)
    head_init = None if config.train.distill_head_init is None else HeadInit(head_start(config, classes, fold,
                                                                                      teacher.center))
    module = DistillModule(config, classes, fold, teacher.embedding_size, head_init)
    load_init(module.model, config, classes, fold)  # train.init_from; the projection starts fresh
    data = DistillData(config, teacher, labels, weights, folds, fold, bank, windows)
    if data.pseudo_factors is not None and not is_launched_rank():
        write_json_atomic(mass_record(data.pseudo_factors, classes, config.train.pseudo_mass_cap),
                          fold_dir / MASS_RECORD)
    last = ModelCheckpoint(dirpath=fold_dir, filename="last", monitor=None, save_top_k=1,
                           save_on_train_epoch_end=True, enable_version_counter=False)
    ckpt = resume_checkpoint(fold_dir, resume) if not is_launched_rank() else launched_checkpoint(fold_dir / "last.ckpt",
                                                                                                  resume)
    recorder = FoldRecorder(fold_dir, fold, config, classes, scored_from=config.train.distill_epochs,
                            metrics=("train_cos", "val_cos"))
    with quiet_lightning():
        trainer = L.Trainer(
            max_epochs=total_epochs(config), accelerator=config.train.accelerator, devices=config.train.devices,
            strategy="ddp" if config.train.devices > 1 else "auto", precision=trainer_precision(config),
            callbacks=[recorder, last, *(callbacks or [])], logger=False, enable_progress_bar=progress,
            enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False,
            default_root_dir=fold_dir, log_every_n_steps=1, plugins=[AtomicCheckpointIO()],
            reload_dataloaders_every_n_epochs=1,  # each stage trains on its own rows (distill_data)
        )
        trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    finished = trainer.current_epoch >= total_epochs(config) and not trainer.interrupted
    if finished and trainer.is_global_zero:
        _write_oof(fold_dir, fold, data, cache, classes, config, None if head_init is None else head_init.record)
    return finished


@torch.no_grad()
def _write_oof(fold_dir: Path, fold: int, data: DistillData, cache: WaveCache, classes: list[str],
               config: Config, head_init: dict | None = None) -> None:
    """Predict the held-out clips' rows with best.pt (the classifier alone) and mark the fold done (`head_init`: the
    record of ``train.distill_head_init``'s composition, if any)."""
    device = resolve_device("cpu" if config.train.accelerator == "cpu" else "auto")
    best = load_checkpoint(fold_dir / "best.pt", map_location=device)
    model = best.model.to(device).eval()
    chunks = []
    for batch in data.val_dataloader():
        with autocast_for(device):
            chunks.append(torch.sigmoid(model(batch[0].to(device))["clip_logits"].float()).cpu().numpy())
    probs = np.concatenate(chunks) if chunks else np.zeros((0, len(classes)), np.float32)
    rows = data.val_items[:, 1]
    clips = data.teacher.sources[0].clips[rows]
    index = cache.index
    oof = pd.DataFrame(probs, columns=classes)
    oof.insert(0, "window", data.teacher.sources[0].windows[rows])
    oof.insert(0, "fold", fold)
    oof.insert(0, "primary_label", index["primary_label"].to_numpy()[clips])
    oof.insert(0, "row", index["row"].to_numpy()[clips])
    oof.insert(0, "filename", index["filename"].to_numpy()[clips])
    write_parquet_atomic(oof, fold_dir / "oof.parquet")
    write_json_atomic({"fold": fold, "best_epoch": best.epoch, "best_score": best.score, "epochs": total_epochs(config),
                       "kind": TORCH_RUN, "distill_teacher": config.train.distill_teacher,
                       **({"head_init": head_init} if head_init is not None else {})}, fold_dir / "done.json")


def _teacher_record(teacher: Teacher, path: Path, windows: LabelledWindows | None = None) -> dict:
    """teacher.json: the teacher's record (and the labelled windows' sources); a resumed run whose targets were all
    cached keeps the cost it recorded."""
    record = teacher.record()
    if windows is not None:
        record["labelled_windows"] = windows.record()
    if teacher.rows_computed == 0 and path.is_file():
        old = read_json(path)
        record.update({k: old[k] for k in ("rows_computed", "embed_wall_s", "embed_cpu_s") if k in old})
    return record


def licence_note(teacher: Teacher) -> str:
    """``RUN/LICENSE-NOTE.txt``: the CNN was trained to reproduce the teacher's embeddings."""
    lines = ["The CNNs of this run were trained to reproduce the embeddings of this foundation model; its licence "
             "may apply to what is derived from it:"]
    lines += [f"- {m.get('spec', teacher.spec)}: {m['model']} (sha256 {m['sha256'] or '-'}), licensed {m['licence']}"
              for m in teacher.provenance]
    return "\n".join(lines) + "\n"


def train_distilled(config: Config, data_root: Path, out: Path, cache_dir: Path | None = None, resume: bool = False,
                    progress: bool = True, callbacks: list[L.Callback] | None = None, pseudo: Path | None = None,
                    reviews: Path | None = None) -> TrainSummary:
    """Train `config.train.folds` with embedding distillation then labels (module docstring) into `out`.

    Args:
        config: resolved config with ``train.distill_teacher``.
        data_root: BirdCLEF-layout folder (train.csv, train_audio/, train_soundscapes/ as unlabelled audio).
        out: run folder; an existing one needs `resume` (finished folds skipped, an interrupted one continues from its
            last.ckpt, the teacher's embeddings and the decoded audio reused).
        cache_dir: prepared wave cache (default ``out/cache``); the teacher's cache then lives beside it, in
            ``cache_dir/distill``, shared by the runs that share the wave cache.
        progress: progress bars.
        callbacks: extra Lightning callbacks (tests use one to interrupt a run).
        pseudo: a pseudo-label table: its windows join the label epochs of the folds that do not hold their
            soundscape, each with its teacher target (:mod:`birdclef.train.distill_pseudo`,
            :mod:`birdclef.train.distill_data`); recorded as :mod:`birdclef.train.kfold` records it
            (``RUN/pseudo.json``, ``RUN/pseudo_folds.csv``), so the run teaches under the fold rule.
        reviews: a ``birdclef review`` table: its answered windows join every label epoch of every fold
            (``train.review_weight``; ``RUN/reviews.json``).

    Returns:
        Per-fold best scores and the out-of-fold macro ROC-AUC (optimistic, see OOF_NOTE).

    Raises:
        ConfigError: data.window_s is not 5 s; a misspelt loss, head or backbone; a resumed run with another config
            or another pseudo table or reviews.
        BirdclefError: the teacher cannot be loaded.
        DatasetError: a broken data set, a missing unlabelled folder.
    """
    started, run = time.perf_counter(), Path(out)
    child = is_launched_rank()  # a DDP rank > 0 re-running the command: rank 0 owns the run folder
    check_names(config)
    check_distill_config(config)
    existed = resume and (run / "config.yaml").is_file()
    if child:
        die_with_parent()
    else:
        init_run(run, config, resume)
    layout, data = DatasetLayout.from_root(data_root), config.data
    all_classes = load_classes(layout)
    subset = subset_of(data, all_classes, layout.taxonomy_csv)  # a specialist: its columns, every clip
    classes = list(subset.classes)
    check_head_init(config, classes)  # train.distill_head_init: every fold's head, before the teacher works
    reviewed = None if reviews is None else read_reviewed(reviews, all_classes)
    if not child:
        record_reviewed(run, reviewed, existed)
    reviewed = cut_labels(reviewed, subset)
    skipped = 0
    if not child:
        skipped = prepare_cache(layout.root, cache_dir or run / "cache", strategy=data.strategy, window_s=data.window_s,
                                sample_rate=data.sample_rate, max_clip_s=data.max_clip_s,
                                num_workers=config.train.num_workers, max_files=data.max_files, progress=progress,
                                window_table=data.window_table).n_skipped
    cache = WaveCache(cache_dir or run / "cache")
    bank = background_bank(config, layout)
    root = (Path(cache_dir) if cache_dir is not None else run) / DISTILL_FOLDER
    labels, weights = build_targets(cache.index, list(subset.all_classes), data.secondary_label_weight,
                                    data.rating_weight)
    folds = assign_folds(cache.index["primary_label"].astype(str).tolist(), data.n_folds, data.fold_seed)
    own = clip_fold_map(layout.train_audio, cache.index["filename"].astype(str), folds)  # their windows: that fold
    table = cut_labels(open_run_pseudo(run, pseudo, all_classes, data.n_folds, data.fold_seed, not child, existed,
                                       own), subset)
    labels = subset.select(labels)
    subset.check_clips(labels, cache.path)  # before the teacher embeds every row
    stores = source_stores(config, layout.root, cache, root, progress and not child)
    stores, windows = labelled_windows(config, stores, table, reviewed, root, progress and not child)
    teacher = prepare_teacher(config, layout.root, cache, bank, root, progress and not child, stores)
    if not child:
        write_json_atomic({"data_root": str(layout.root.resolve()), "cache": str(cache.path.resolve())},
                          run / "data.json")
        write_csv_atomic(pd.DataFrame({"filename": cache.index["filename"],
                                       "primary_label": cache.index["primary_label"], "fold": folds}), run / "folds.csv")
        write_json_atomic(_teacher_record(teacher, run / "teacher.json", windows), run / "teacher.json")
        write_text_atomic(licence_note(teacher), run / "LICENSE-NOTE.txt")
        record_subset(run, subset, len(labels), len(labels))
    for fold in config.train.folds:
        if (run / f"fold{fold}" / "done.json").is_file():
            continue
        if not _fit_fold(config, classes, teacher, labels, weights, folds, fold, run, bank, resume, progress,
                         callbacks, cache, windows):
            break  # interrupted: leave the remaining folds for --resume
    if child:
        return TrainSummary(run, n_clips=len(cache.index), elapsed_s=time.perf_counter() - started)
    summary = collect_summary(run, list(config.train.folds), classes, labels, cache.index)
    summary.n_clips, summary.elapsed_s = len(cache.index), time.perf_counter() - started
    summary.skipped_clips, summary.cache_dir = skipped, cache.path
    summary.skipped_background = [] if bank is None else list(bank.skipped)
    summary.n_pseudo = 0 if table is None else len(table)
    write_json_atomic({"fold_scores": summary.fold_scores, "oof_auc": summary.oof_auc, "oof_note": OOF_NOTE,
                       "n_clips": summary.n_clips, "n_pseudo": summary.n_pseudo, "classes": len(classes),
                       **subset_summary(subset, len(labels)),
                       "teacher": read_json(run / "teacher.json"),
                       "elapsed_s": round(summary.elapsed_s, 1)}, run / "summary.json")
    return summary
