"""``train.distill_head_init``: start a distilled student's classifier from a trained embedding head, composed with
the student's projection.

Embedding distillation teaches the projection ``P = Linear(C, D)`` on the CNN's pooled features ``f`` to point
where the teacher's row embedding points (:mod:`birdclef.train.embedding_distill`). An embedding-head run on the
same teacher (``configs/birdnet-head.yaml``, :mod:`birdclef.birdnet.head`) maps such embeddings to logits,
``logits = W_h e + b_h``. So when the labels arrive (the first label epoch, ``epoch == train.distill_epochs``), fold
``k``'s ``LinearHead.fc`` is set to the composition::

    e ~ s (W_P f + b_P) + c          c: the teacher's mean embedding with train.distill_center, else 0
    fc.weight = s W_h W_P            (K, C)
    fc.bias   = s W_h b_P + W_h c + b_h

The cosine loss is scale-free, so ``P f`` has the teacher's direction but not its length: ``s`` is the
least-squares scale ``sum(t . P f) / sum(|P f|^2)`` over the last distillation epoch's training batches (``t`` the
target as trained: centred or raw, mixed as mixup mixed it), accumulated as they pass. The head's weights act on
the embeddings directly (it has no standardisation to fold in). The head scores each of a row's 3 s windows and
pools (``infer.birdnet_pool``: max) while the student's target is the *mean* of the window embeddings, so the
composed logits are the head's logit of the mean embedding: the mean of the window logits for a linear head
(ranking within a class nearly as the head's; a little lower than the max).

**The fold rule.** With a run folder, fold ``k`` takes the head's ``fold{k}/best.pt`` (the head that never saw
fold ``k``'s clips), so the run must split clips as this config does (``data.n_folds``, ``data.fold_seed``); one
``best.pt`` starts every fold (the caller's choice, as ``train.init_from``). The head's classes must hold the
student's (a taxon specialist takes its classes' rows); its foundation model must be ``train.distill_teacher``;
an MLP head (``model.head: mlp``) is not linear and is refused.

**Resuming.** The composition runs once, at the start of the first label epoch, and is then trained like any
weights; whether it ran, the scale sums and the record travel in ``last.ckpt`` (:meth:`HeadInit.state_dict`), so
a fold resumed at or after that epoch keeps what the checkpoint holds and one resumed at the boundary composes the
very same head. The record (checkpoint, its epoch, the scale) goes into the fold's ``done.json`` (``head_init``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from birdclef.config import Config, config_from_dict
from birdclef.errors import BirdclefError, ConfigError
from birdclef.zoo.runs import HEAD_RUN

KEY = "train.distill_head_init"


def head_checkpoint(config: Config, fold: int) -> Path:
    """The head ``best.pt`` fold `fold` starts from (module docstring: the fold rule).

    Raises:
        ConfigError: no such run or file, not an embedding-head run, another fold split, fold `fold` unfinished.
    """
    from birdclef.train.init_from import fold_checkpoint

    return fold_checkpoint(config.train.distill_head_init, KEY, config, fold, kind=HEAD_RUN,
                           kind_name=f"an embedding-head run ({HEAD_RUN}, configs/birdnet-head.yaml)")


@dataclass
class HeadStart:
    """Fold `k`'s head rows for the student's classes, where they came from, and the teacher's centre."""

    weight: np.ndarray
    """(K, D) float32: the head's rows of the student's classes, in the student's order."""
    bias: np.ndarray
    """(K,) float32."""
    checkpoint: Path
    epoch: int
    """The head's best epoch (its ``best.pt``)."""
    center: np.ndarray | None = None
    """(D,) float32 added back to the projection (``train.distill_center``), or None."""


def head_start(config: Config, classes: list[str], fold: int, center: np.ndarray | None = None) -> HeadStart:
    """Read and check fold `fold`'s head (module docstring).

    Raises:
        ConfigError: see :func:`head_checkpoint`; an unreadable checkpoint; an MLP head; a head on another
            foundation model than ``train.distill_teacher``; classes of the student the head does not score.
    """
    from birdclef.birdnet.head import load_head
    from birdclef.birdnet.head_inputs import run_foundations

    path = head_checkpoint(config, fold)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, foreign pickle: unusable either way
        raise ConfigError(f"{KEY} {path}: unreadable checkpoint ({type(exc).__name__})") from None
    if int(state.get("hidden", 0)) > 0:
        raise ConfigError(f"{KEY} {path}: an MLP head (model.head: mlp, hidden {state['hidden']}) is not linear; "
                          "compose a linear one (model.head: linear)")
    try:
        teachers = run_foundations(config_from_dict(state.get("config") or {}).model)
    except ConfigError as exc:
        raise ConfigError(f"{KEY} {path}: its stored config does not load ({exc})") from None
    if teachers != [config.train.distill_teacher]:
        raise ConfigError(f"{KEY} {path}: that head hears {', '.join(teachers)}, this run's teacher is "
                          f"train.distill_teacher={config.train.distill_teacher}; use a head on the same teacher")
    head_classes = [str(c) for c in state["classes"]]
    missing = [c for c in classes if c not in head_classes]
    if missing:
        raise ConfigError(f"{KEY} {path}: the head does not score {len(missing)} of this run's {len(classes)} "
                          f"classes: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    try:
        head, _ = load_head(path)
    except BirdclefError as exc:
        raise ConfigError(f"{KEY} {exc}") from None
    rows = [head_classes.index(c) for c in classes]
    return HeadStart(head.weight.detach().numpy()[rows].copy(), head.bias.detach().numpy()[rows].copy(), path,
                     int(state.get("epoch", -1)), center)


def check_head_init(config: Config, classes: list[str]) -> None:
    """Every fold of ``train.folds`` has a usable head (before any slow step); nothing without the setting."""
    if config.train.distill_head_init is not None:
        for fold in config.train.folds:
            head_start(config, classes, fold)


@torch.no_grad()
def compose(start: HeadStart, projection: nn.Linear, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (K, C), bias (K,)) of ``head(scale * projection(f) + center)`` as one linear map of ``f``.

    Raises:
        ConfigError: the head takes embeddings of another size than the projection gives.
    """
    w_h = torch.as_tensor(start.weight, dtype=torch.float64)
    if w_h.shape[1] != projection.out_features:
        raise ConfigError(f"{KEY} {start.checkpoint}: the head takes {w_h.shape[1]}-d embeddings, the teacher gives "
                          f"{projection.out_features}-d ones")
    w_p, b_p = projection.weight.double().cpu(), projection.bias.double().cpu()
    bias = scale * (w_h @ b_p) + torch.as_tensor(start.bias, dtype=torch.float64)
    if start.center is not None:
        bias = bias + w_h @ torch.as_tensor(start.center, dtype=torch.float64)
    return scale * (w_h @ w_p), bias


@dataclass
class HeadInit:
    """The composition's state in one fold: the scale sums, whether it ran, and its record (module docstring)."""

    start: HeadStart
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0])
    """(sum of t . P f, sum of |P f|^2) over the current distillation epoch's batches."""
    record: dict | None = None
    """After the composition: what ``done.json`` says of it; None before."""

    @property
    def done(self) -> bool:
        return self.record is not None

    def reset(self) -> None:
        self.sums = [0.0, 0.0]

    @torch.no_grad()
    def accumulate(self, student: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch's (B, D) projections and (B, D) targets (as trained: centred or raw, mixed)."""
        student, target = student.detach().double(), target.detach().double()
        self.sums[0] += float((student * target).sum())
        self.sums[1] += float((student * student).sum())

    @torch.no_grad()
    def apply(self, fc: nn.Linear, projection: nn.Linear, reduce=None) -> None:
        """Set `fc` to the composition (`reduce`: sums a tensor over DDP ranks, so every rank composes alike)."""
        sums = torch.tensor(self.sums, dtype=torch.float64)
        if reduce is not None:
            sums = reduce(sums)
        scale = float(sums[0] / sums[1]) if float(sums[1]) > 0 else 1.0
        weight, bias = compose(self.start, projection, scale)
        fc.weight.copy_(weight.to(fc.weight))
        fc.bias.copy_(bias.to(fc.bias))
        self.record = {"checkpoint": str(self.start.checkpoint.resolve()), "head_epoch": self.start.epoch,
                       "scale": scale, "centred": self.start.center is not None}

    def state_dict(self) -> dict:
        return {"sums": list(self.sums), "record": self.record}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.record = list(state["sums"]), state["record"]
