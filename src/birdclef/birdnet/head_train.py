"""k-fold training of a head on frozen foundation-model embeddings (``model.freeze_backbone: true``): BirdNET v2.4
by default, any model ``model.foundation`` names (Perch v2, an ONNX card model, several at once:
:mod:`birdclef.birdnet.head_inputs`).

``train_kfold`` (:mod:`birdclef.train.kfold`) hands such configs here; the run folder has the torch runs' layout (config.yaml,
data.json, folds.csv, fold{k}/best.pt + metrics.csv + oof.parquet + done.json, oof.parquet,
metrics.csv, summary.json) plus ``LICENSE-NOTE.txt`` and the embedding cache::

    RUN/embeddings/<key>/copy0.npz    clean rows: emb (R, C, D) float16 (BirdNET: D = 1024)
    RUN/embeddings/<key>/copy{a}.npz  augmented copy a: rows (n,) int64 of the rows it mixed, emb (n, C, D)

(``CACHE/birdnet-embeddings/<key>/`` instead when a wave cache folder is given, so runs sharing it embed once.)

Examples are the 5 s rows of each cached clip (what the prepared cache holds: with ``data.strategy:
random`` the first ``data.max_clip_s`` seconds, so a long weakly labelled clip gives several rows; a
fixed strategy gives its one window): every full 5 s window, plus a last partial one holding at least
one full 3 s chunk, zero padded as prediction pads (a short clip gives one row). Each row's chunks
(offsets ``chunk_offsets(infer.birdnet_hop_s)``) are embedded once with LiteRT. ``train.embed_copies``
augmented copies mix each row, with probability ``train.background_prob``, with a random
train_soundscapes excerpt at a gain drawn from ``train.background_gain`` (relative to the row's RMS);
an unmixed draw would repeat the clean row, so it is counted as extra weight of the clean row instead.
Every draw is seeded by (``train.seed``, copy, clip, window), so a resumed run computes the same
copies; the cache key covers what changes the embeddings, and finished copies are reused. The embedding stage
(:mod:`birdclef.birdnet.head_embed`) runs in chunks of ``train.embed_chunk_rows`` rows, resumable chunk by chunk,
in this process or on a Dask cluster (``train.embed_engine: dask``), with the same result.

Per fold: the held-out clips' clean rows validate (macro ROC-AUC of the row targets, which are their
clip's targets) after every epoch; epoch 0 is the untrained head (zero-shot BirdNET for the classes it
knows), and the best epoch is kept. AdamW on mini-batches of cached embeddings (``train.batch_size``,
``train.lr`` cosine-decayed to ``train.min_lr``, ``train.epochs``) with the configured loss; the
decoupled weight decay (``train.weight_decay``) pulls towards BirdNET's rows, not towards zero.
A finished fold (done.json) is skipped on ``--resume``; a fold takes seconds, so an interrupted one restarts.

With a pseudo-label table (``train --pseudo``) its soundscape windows are embedded the same way and added as
masked, soft-target examples of the folds that do not hold their soundscape (:mod:`birdclef.birdnet.head_pseudo`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from birdclef.birdnet.head_data import HeadData
from birdclef.birdnet.head import HEADS, MLP_HIDDEN, EmbeddingHead, licence_note, pool_logits, save_head
from birdclef.birdnet.head_embed import clip_rows, embed_copies
from birdclef.birdnet.head_inputs import HeadInputs
from birdclef.config import Config
from birdclef.data.augment import BackgroundBank
from birdclef.data.cache import WaveCache
from birdclef.data.pseudo import MASS_RECORD, mass_record
from birdclef.data.subset import ClassSubset, cut_labels, record_subset, subset_of, subset_summary
from birdclef.errors import ConfigError
from birdclef.train.losses import loss_from_config
from birdclef.train.module import validation_auc
from birdclef.utils.io import write_csv_atomic, write_json_atomic, write_parquet_atomic, write_text_atomic
from birdclef.zoo.runs import HEAD_RUN

EMBEDDINGS_IN_CACHE = "birdnet-embeddings"
"""With a given wave cache (``--cache``), embeddings are cached in CACHE/birdnet-embeddings/ (else RUN/embeddings/),
so the runs that share a cache (selftrain's rounds) embed the clips once."""


def embedding_key(config: Config, cache: WaveCache, inputs: HeadInputs) -> str:
    """Hash of everything that changes the cached embeddings (not train.embed_copies: copies are reused)."""
    train = config.train
    keys = ("sample_rate", "strategy", "window_s", "max_clip_s", "max_files")
    data = {key: getattr(config.data, key) for key in keys}
    record = {"data": data, "hop": config.infer.birdnet_hop_s, "seed": train.seed,
              "background": [train.background_prob, list(train.background_gain), train.background_max_files],
              **inputs.key_record(),
              "clips": cache.index[["filename", "length"]].astype(str).agg(":".join, axis=1).tolist()}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def build_head(config: Config, classes: list[str], names: dict[str, str], inputs) -> EmbeddingHead:
    """The untrained head: the models' own rows for the classes they know (``model.init_from_birdnet``;
    :meth:`HeadInputs.start_rows`). `inputs` may be one loaded model (a one-model head)."""
    if not isinstance(inputs, HeadInputs):
        inputs = HeadInputs([inputs], ["birdnet"], config.infer.birdnet_hop_s, config.data.sample_rate)
    w, b, _ = inputs.start_rows(classes, names, config.model.init_from_birdnet)
    return EmbeddingHead(w, b, MLP_HIDDEN if config.model.head == "mlp" else 0, config.model.drop_rate)


@torch.no_grad()
def _validate(head: EmbeddingHead, emb: torch.Tensor, target: torch.Tensor, loss_fn, pool: str):
    """(macro ROC-AUC, loss, (R, K) probabilities) of the validation rows."""
    head.eval()
    logits = pool_logits(head(emb), pool)
    probs = torch.sigmoid(logits).numpy()
    return validation_auc(target.numpy(), probs), loss_fn(logits, target).item(), probs


def fit_head(head: EmbeddingHead, data: HeadData, fold: int, config: Config) -> tuple[dict, list[dict], np.ndarray]:
    """Train `head` on all folds but `fold`; (best state (``factors``: the (K,) pseudo mass factors of
    ``train.pseudo_mass_cap``, or None), metrics rows, best validation probabilities)."""
    train, pool = config.train, config.infer.birdnet_pool
    torch.manual_seed(train.seed + fold)
    val = data.split(fold)[1]
    fit = data.epoch_examples(fold, 1, train.seed, train.pseudo_ratio)  # every epoch draws as many
    masks, factors = data.fold_mask(fold, train.pseudo_ratio, train.pseudo_mass_cap)
    loss_fn = loss_from_config(train)
    opt = torch.optim.AdamW(head.parameters(), lr=train.lr, weight_decay=0.0)
    steps = train.epochs * max(1, math.ceil(len(fit) / train.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=train.min_lr)
    auc, val_loss, probs = _validate(head, data.emb[val], data.target[val], loss_fn, pool)
    best = (auc, 0, {k: v.clone() for k, v in head.state_dict().items()}, probs)
    metrics = [{"fold": fold, "epoch": 0, "lr": 0.0, "train_loss": math.nan, "val_loss": val_loss, "val_auc": auc}]
    generator = torch.Generator().manual_seed(train.seed + fold)
    for epoch in range(1, train.epochs + 1):
        head.train()
        losses, lr = [], opt.param_groups[0]["lr"]
        fit = data.epoch_examples(fold, epoch, train.seed, train.pseudo_ratio)
        for batch in torch.randperm(len(fit), generator=generator).split(train.batch_size):
            idx = fit[batch.numpy()]
            mask = None if masks is None else masks[idx]
            loss = loss_fn(pool_logits(head(data.emb[idx]), pool), data.target[idx], data.weight[idx], mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
            head.decay_to_init(opt.param_groups[0]["lr"] * train.weight_decay)
            sched.step()
            losses.append(loss.item())
        auc, val_loss, probs = _validate(head, data.emb[val], data.target[val], loss_fn, pool)
        metrics.append({"fold": fold, "epoch": epoch, "lr": lr, "train_loss": float(np.mean(losses)),
                        "val_loss": val_loss, "val_auc": auc})
        if math.isnan(best[0]) or auc > best[0]:
            best = (auc, epoch, {k: v.clone() for k, v in head.state_dict().items()}, probs)
    return {"score": best[0], "epoch": best[1], "state": best[2], "factors": factors}, metrics, best[3]


def check_head_config(config: Config) -> None:
    """ConfigError on a head or loss this trainer cannot use, before the (slow) embedding step."""
    if config.model.head not in HEADS:
        raise ConfigError(f"model.head {config.model.head!r}: a head on frozen BirdNET embeddings is one of {HEADS}")
    try:
        loss_from_config(config.train)
    except ConfigError as exc:
        raise ConfigError(f"train.loss: {exc}") from None


def _train_fold(config: Config, classes: list[str], head: EmbeddingHead, data: HeadData, fold: int, run: Path,
                index: pd.DataFrame, clips: np.ndarray, windows: np.ndarray) -> None:
    """Fit one fold and write fold{k}/best.pt, metrics.csv, oof.parquet and (last) done.json."""
    fold_dir = run / f"fold{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    best, metrics, probs = fit_head(head, data, fold, config)
    head.load_state_dict(best["state"])
    save_head(fold_dir / "best.pt", head, config, classes, best["epoch"], best["score"])
    if best["factors"] is not None:
        write_json_atomic(mass_record(best["factors"], classes, config.train.pseudo_mass_cap),
                          fold_dir / MASS_RECORD)
    write_csv_atomic(pd.DataFrame(metrics), fold_dir / "metrics.csv")
    rows = data.rows[data.split(fold)[1]]
    oof = pd.DataFrame(probs, columns=classes)
    oof.insert(0, "window", windows[rows])
    oof.insert(0, "fold", fold)
    oof.insert(0, "primary_label", index["primary_label"].to_numpy()[clips[rows]])
    oof.insert(0, "row", index["row"].to_numpy()[clips[rows]])
    oof.insert(0, "filename", index["filename"].to_numpy()[clips[rows]])
    write_parquet_atomic(oof, fold_dir / "oof.parquet")
    write_json_atomic({"fold": fold, "best_epoch": best["epoch"], "best_score": best["score"],
                       "epochs": config.train.epochs, "kind": HEAD_RUN}, fold_dir / "done.json")


@dataclass
class _Prepared:
    classes: list[str]
    names: dict[str, str]
    cache: WaveCache
    targets: np.ndarray
    weights: np.ndarray
    folds: np.ndarray
    bank: BackgroundBank | None
    skipped: int
    kept: np.ndarray
    """(clips,) bool: the clips that train (a specialist without data.class_negatives drops the others)."""


def _prepare(config: Config, data_root: Path, run: Path, cache_dir: Path | None, progress: bool,
             subset: ClassSubset | None = None) -> _Prepared:
    """Classes, the wave cache, targets, folds (folds.csv, data.json) and the background bank, as torch runs have;
    a specialist's `subset` (:mod:`birdclef.data.subset`; default ``data.classes`` of `config`) keeps its columns and
    the full run's folds."""
    from birdclef.birdnet.classes import read_scientific_names
    from birdclef.data.cache import prepare_cache
    from birdclef.data.folds import assign_folds
    from birdclef.data.metadata import DatasetLayout, load_classes
    from birdclef.data.examples import build_targets
    from birdclef.train.run_folder import background_bank

    data, layout = config.data, DatasetLayout.from_root(data_root)
    names = read_scientific_names(layout.taxonomy_csv)
    if subset is None:
        subset = subset_of(data, load_classes(layout), layout.taxonomy_csv)
    cache_path = Path(cache_dir) if cache_dir is not None else run / "cache"
    skipped = prepare_cache(layout.root, cache_path, strategy=data.strategy, window_s=data.window_s,
                            sample_rate=data.sample_rate, max_clip_s=data.max_clip_s,
                            num_workers=config.train.num_workers, max_files=data.max_files, progress=progress,
                            window_table=data.window_table).n_skipped
    cache = WaveCache(cache_path)
    write_json_atomic({"data_root": str(layout.root.resolve()), "cache": str(cache.path.resolve())}, run / "data.json")
    targets, weights = build_targets(cache.index, list(subset.all_classes), data.secondary_label_weight,
                                     data.rating_weight)
    folds = assign_folds(cache.index["primary_label"].astype(str).tolist(), data.n_folds, data.fold_seed)
    targets = subset.select(targets)  # a specialist: after the folds of every clip (the full run's split)
    subset.check_clips(targets, cache.path)
    kept = subset.kept_clips(targets)
    write_csv_atomic(pd.DataFrame({"filename": cache.index["filename"], "primary_label": cache.index["primary_label"],
                                   "fold": folds}), run / "folds.csv")
    record_subset(run, subset, len(kept), int(kept.sum()))
    return _Prepared(list(subset.classes), names, cache, targets, weights, folds, background_bank(config, layout),
                     skipped, kept)


def train_embedding_head(config: Config, data_root: Path, out: Path, cache_dir: Path | None = None,
                         resume: bool = False, progress: bool = True, pseudo: Path | None = None,
                         reviews: Path | None = None):
    """Train `config.train.folds` of an embedding head on frozen foundation models (module docstring) into `out`.

    Args:
        config: resolved config with ``model.backbone: birdnet`` (or ``foundation``) and ``model.freeze_backbone``.
        data_root: BirdCLEF-layout folder.
        out: run folder; an existing one needs `resume` (finished folds are skipped, cached embeddings reused).
        cache_dir: prepared wave cache (made there when absent; default ``out/cache``).
        progress: tqdm bars for decoding and embedding.
        pseudo: a pseudo-label table (``birdclef pseudo``): its soundscape windows become extra training
            examples of the folds that do not hold their soundscape (:mod:`birdclef.birdnet.head_pseudo`;
            ``train.pseudo_ratio`` / ``pseudo_weight`` apply, ``pseudo_mix_prob`` does not).
        reviews: a ``birdclef review`` table: each answered window is embedded as pseudo windows are and
            trains every fold as a positive (yes) or explicit negative (no) of its class, other classes
            masked, weighted ``train.review_weight`` (:mod:`birdclef.data.reviewed`).

    Returns:
        The :class:`~birdclef.train.run_folder.TrainSummary` torch runs return.

    Raises:
        ConfigError: a head or loss this trainer does not have; a resumed run with another config or
            another pseudo table (or without the one it trains on).
        BirdnetUnavailableError: ai-edge-litert or the BirdNET model file is missing.
        DatasetError: as for torch runs (train.csv, taxonomy.csv); a pseudo table that does not fit the dataset.
    """
    from birdclef.birdnet.head_pseudo import add_pseudo_rows, add_reviewed_rows, open_pseudo, record_pseudo
    from birdclef.data.pseudo import clip_fold_map, follow_clip_folds
    from birdclef.data.reviewed import read_reviewed, record_reviewed
    from birdclef.train.run_folder import OOF_NOTE, collect_summary, init_run

    started, run = time.perf_counter(), Path(out)
    check_head_config(config)
    if config.train.embed_engine == "dask":  # a scheduler that is not there: said now, not after the cache
        from birdclef.utils.cluster import probe_scheduler

        probe_scheduler(config.train.embed_scheduler)
    from birdclef.data.metadata import DatasetLayout, load_classes

    layout = DatasetLayout.from_root(data_root)
    subset = subset_of(config.data, load_classes(layout), layout.taxonomy_csv)  # a misspelt name fails first
    inputs = HeadInputs.from_config(config)
    labels = None if pseudo is None else open_pseudo(config, data_root, Path(pseudo))
    reviewed = None if reviews is None else read_reviewed(reviews, list(subset.all_classes))
    init_run(run, config, resume)
    record_reviewed(run, reviewed, resume)
    write_text_atomic(licence_note(inputs.provenance()), run / "LICENSE-NOTE.txt")
    write_json_atomic({"foundation": inputs.provenance()}, run / "foundation.json")
    prep = _prepare(config, data_root, run, cache_dir, progress, subset)
    own = clip_fold_map(layout.train_audio, prep.cache.index["filename"].astype(str), prep.folds)
    record_pseudo(run, follow_clip_folds(labels, own))  # windows of the labelled clips: their clip's fold
    # Beside a shared wave cache, the embeddings are shared too (selftrain rounds, runs of one dataset).
    root = Path(cache_dir) / EMBEDDINGS_IN_CACHE if cache_dir is not None else run / "embeddings"
    folder = root / embedding_key(config, prep.cache, inputs)
    copies = embed_copies(config, prep.cache, inputs, prep.bank, folder, progress)
    clips, windows = clip_rows(prep.cache)
    head_data = HeadData(copies, clips, prep.targets, prep.weights, prep.folds)
    head_data.keep(prep.kept[clips[head_data.rows]])  # a specialist's dropped clips (all kept by default)
    labels, reviewed = cut_labels(labels, subset), cut_labels(reviewed, subset)
    skipped_pseudo = [] if labels is None else add_pseudo_rows(head_data, config, labels, inputs, folder.parent,
                                                                progress)
    if reviewed is not None:
        skipped_pseudo += add_reviewed_rows(head_data, config, reviewed, inputs, folder.parent, progress)
    embed_s, head_started = time.perf_counter() - started, time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small lose more to thread hand-offs than they gain
    try:
        for fold in (f for f in config.train.folds if not (run / f"fold{f}" / "done.json").is_file()):
            head = build_head(config, prep.classes, prep.names, inputs)
            _train_fold(config, prep.classes, head, head_data, fold, run, prep.cache.index, clips, windows)
    finally:
        torch.set_num_threads(threads)
    summary = collect_summary(run, list(config.train.folds), prep.classes, prep.targets, prep.cache.index)
    summary.n_clips, summary.elapsed_s = len(prep.cache.index), time.perf_counter() - started
    summary.skipped_clips, summary.cache_dir = prep.skipped, prep.cache.path
    summary.skipped_background = [] if prep.bank is None else list(prep.bank.skipped)
    write_json_atomic({"fold_scores": summary.fold_scores, "oof_auc": summary.oof_auc, "oof_note": OOF_NOTE,
                       "n_clips": summary.n_clips, "n_rows": len(clips), "n_examples": len(head_data.rows),
                       "n_pseudo_windows": int(head_data.pseudo.sum()), "skipped_pseudo": skipped_pseudo,
                       "n_reviewed_windows": 0 if reviewed is None else len(reviewed),
                       "classes": len(prep.classes), **subset_summary(subset, int(prep.kept.sum())),
                       "elapsed_s": round(summary.elapsed_s, 1),
                       "prepare_and_embed_s": round(embed_s, 1),
                       "head_s": round(time.perf_counter() - head_started, 1)}, run / "summary.json")
    return summary
