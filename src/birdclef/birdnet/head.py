"""A light head on frozen BirdNET v2.4 embeddings, and the predictor of such runs (``model.freeze_backbone``).

Each 3 s chunk's 1024-d embedding ``e`` gets ``logit = W e + b`` (K classes); a 5 s row takes the max
(``infer.birdnet_pool: max``; or the mean of the sigmoids) over its chunks, exactly as zero-shot BirdNET
pools. Rows of ``W, b`` of the classes BirdNET knows start as BirdNET's own dense rows
(:func:`~birdclef.birdnet.model.output_layer`, matched by scientific name), so an untrained head *is*
zero-shot BirdNET for them; the other classes (insects, frogs) start at zero weight and a low bias.
``model.head: mlp`` adds a residual branch ``Linear -> GELU -> Linear`` whose last layer starts at zero.
Training decays the weights towards that start, not towards zero (:meth:`EmbeddingHead.decay_to_init`).

A run's ``foldK/best.pt`` is a plain dict (``torch.load(weights_only=True)``)::

    {"kind": "birdnet_head", "model": state_dict, "config": {...}, "classes": [...], "epoch", "score",
     "hidden": H, "embedding_size": D}

:class:`HeadPredictor` scores a run's folds (soft vote) from LiteRT embeddings; the model zoo
(:mod:`birdclef.zoo`) builds it for ``predict --run`` and blends it with other kinds.

Example:
    >>> head = EmbeddingHead.from_birdnet(classes, names, model)   # zero-shot for the known classes
    >>> predictor = HeadPredictor("runs/head", InferConfig(smoothing=False))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from birdclef.birdnet.head_inputs import UNKNOWN_BIAS, HeadInputs, run_foundations
from birdclef.birdnet.model import LICENSE, model_name
from birdclef.config import Config, InferConfig, config_from_dict, config_to_dict
from birdclef.errors import BirdclefError
from birdclef.infer.base import (ROW_WINDOW_S, SinglePart, class_positions, scatter_columns, span,
                                 unscored_classes)
from birdclef.zoo.runs import HEAD_RUN, Run

KIND = HEAD_RUN
HEADS = ("linear", "mlp")
MLP_HIDDEN = 256
LICENSE_NOTE = (f"The heads in this run are derived from BirdNET v2.4 (its output layer and embeddings; "
                f"Cornell Lab of Ornithology / Chemnitz University of Technology), licensed {LICENSE}: "
                "non-commercial use, share alike, attribution.\n")


def licence_note(models: list[dict]) -> str:
    """The run's LICENSE-NOTE.txt: what its heads derive from (each foundation model's file, hash and licence)."""
    if len(models) == 1 and models[0]["kind"] == "birdnet":
        return LICENSE_NOTE
    lines = ["The heads in this run are derived from these foundation models (their embeddings, and output layers "
             "where they start from them); each one's licence applies to what is derived from it:"]
    lines += [f"- {m['spec']}: {m['model']} (sha256 {m['sha256'] or '-'}), licensed {m['licence']}" for m in models]
    return "\n".join(lines) + "\n"


class EmbeddingHead(nn.Module):
    """(..., D) BirdNET embeddings -> (..., K) logits: ``W e + b`` (+ an optional zero-started MLP residual).

    Args:
        weight: (K, D) start weights (also the anchor of :meth:`decay_to_init`).
        bias: (K,) start biases.
        hidden: width of the residual MLP branch; 0 for none.
        drop_rate: dropout inside the MLP branch.
    """

    def __init__(self, weight: np.ndarray | torch.Tensor, bias: np.ndarray | torch.Tensor, hidden: int = 0,
                 drop_rate: float = 0.0):
        super().__init__()
        weight = torch.as_tensor(np.asarray(weight, np.float32))
        bias = torch.as_tensor(np.asarray(bias, np.float32))
        self.weight, self.bias = nn.Parameter(weight.clone()), nn.Parameter(bias.clone())
        self.register_buffer("weight0", weight.clone(), persistent=False)
        self.register_buffer("bias0", bias.clone(), persistent=False)
        self.hidden = int(hidden)
        self.mlp = None
        if self.hidden > 0:
            out = nn.Linear(self.hidden, len(bias))
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.mlp = nn.Sequential(nn.Linear(weight.shape[1], self.hidden), nn.GELU(), nn.Dropout(drop_rate), out)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        logits = embeddings @ self.weight.T + self.bias
        return logits if self.mlp is None else logits + self.mlp(embeddings)

    @torch.no_grad()
    def decay_to_init(self, rate: float) -> None:
        """Decoupled weight decay (AdamW's, per step) towards the start rows instead of zero; MLP towards zero."""
        self.weight.sub_(rate * (self.weight - self.weight0))
        self.bias.sub_(rate * (self.bias - self.bias0))
        if self.mlp is not None:
            for param in self.mlp.parameters():
                param.mul_(1.0 - rate)


def pool_logits(chunk_logits: torch.Tensor, pool: str) -> torch.Tensor:
    """(R, C, K) chunk logits -> (R, K) row logits: max (= the max of sigmoids), or the logit of their mean."""
    if pool == "max":
        return chunk_logits.amax(dim=1)
    return torch.logit(torch.sigmoid(chunk_logits).mean(dim=1), eps=1e-6)


def save_head(path: Path, head: EmbeddingHead, config: Config, classes: Sequence[str], epoch: int,
              score: float) -> None:
    from birdclef.utils.io import write_atomic

    state = {"kind": KIND, "model": head.state_dict(), "config": config_to_dict(config), "classes": list(classes),
             "epoch": int(epoch), "score": float(score), "hidden": head.hidden,
             "embedding_size": int(head.weight.shape[1])}
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def load_head(path: Path) -> tuple[EmbeddingHead, dict]:
    """(head in eval mode, the checkpoint dict) of a ``foldK/best.pt`` written by :func:`save_head`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, unpickling error: all mean "unusable"
        raise BirdclefError(f"{path}: unreadable BirdNET head checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("kind") != KIND:
        raise BirdclefError(f"{path}: not a BirdNET embedding-head checkpoint (kind {KIND!r})")
    weights = state["model"]
    k, d = weights["weight"].shape
    head = EmbeddingHead(np.zeros((k, d), np.float32), np.zeros(k, np.float32), hidden=int(state["hidden"]))
    head.load_state_dict(weights)
    return head.eval(), state


class HeadPredictor(SinglePart):
    """The finished folds of one embedding-head run as a predictor: foundation-model embeddings -> heads -> soft
    vote.

    Every class of the run is scored; `classes` may add others it leaves NaN (a taxon specialist blended with
    full runs, :mod:`birdclef.data.subset`). Rows are cut into the models' windows as in training
    (:class:`~birdclef.birdnet.head_inputs.HeadInputs`: the hop and pooling the head was trained with, the run's
    ``infer.birdnet_hop_s`` / ``birdnet_pool``, whatever a blend's settings say: other windows are not what the
    head learned from), at the run's ``data.sample_rate``.

    Args:
        run: run folder (its finished folds) or one ``foldK/best.pt``.
        config: infer settings (post-processing, batch size).
        classes: output column order (default the run's); must hold every class of the run.
        model: the run's foundation model(s), loaded (a list, in the run's order, or one model); None loads them
            (the run's ``model.foundation``, else its ``model.birdnet_path``).
        threads: runtime threads when loading.
    """

    def __init__(self, run: str | Path, config: InferConfig, classes: Sequence[str] | None = None,
                 model=None, threads: int | None = None):
        self.path, self.config = Path(run), config
        paths = Run.open(self.path).checkpoints
        loaded = [load_head(p) for p in paths]
        self.heads = [head for head, _ in loaded]
        run_classes = list(loaded[0][1]["classes"])
        for (_, state), path in zip(loaded[1:], paths[1:]):
            if list(state["classes"]) != run_classes:
                raise BirdclefError(f"{path}: its class list differs from {paths[0]}'s")
        self.checkpoints = [str(p.resolve()) for p in paths]
        self.classes = list(classes) if classes is not None else run_classes
        self._positions = class_positions(run_classes, self.classes, str(self.path))
        self.unscored = unscored_classes(self.classes, self._positions)
        self.run_config = config_from_dict(loaded[0][1]["config"])
        self.pool = self.run_config.infer.birdnet_pool
        specs = run_foundations(self.run_config.model)
        if model is None:
            from birdclef.zoo.registry import BuildContext

            self.inputs = HeadInputs.from_config(self.run_config, BuildContext(config, threads=threads))
        else:
            models = list(model) if isinstance(model, (list, tuple)) else [model]
            self.inputs = HeadInputs(models, specs, self.run_config.infer.birdnet_hop_s,
                                     self.run_config.data.sample_rate)
        self.model = self.inputs.models[0]
        size = int(loaded[0][1]["embedding_size"])
        if self.inputs.embedding_size != size:
            raise BirdclefError(f"{self.path}: the heads take {size}-d embeddings but {', '.join(specs)} give "
                                f"{self.inputs.embedding_size}-d ones; use the foundation model(s) the run was "
                                "trained on")
        self.sample_rate = self.inputs.sample_rate
        self.offsets = self.inputs.offsets[0]
        self.lead, self.length = span(self.sample_rate, ROW_WINDOW_S)  # each 5 s row alone, as zero-shot
        self.weights = np.ones(1)
        self.model_file = model_name(self.model.path)

    @torch.no_grad()
    def predict_rows(self, wave: np.ndarray, n_rows: int) -> np.ndarray:
        """(n_rows, K) fold-averaged pooled probabilities of a wave at :attr:`sample_rate`, before
        post-processing."""
        row_len = int(round(ROW_WINDOW_S * self.sample_rate))
        padded = np.zeros(n_rows * row_len, np.float32)
        padded[: min(len(wave), len(padded))] = wave[: len(padded)]
        chunks = torch.from_numpy(self.inputs.embed(padded.reshape(n_rows, row_len), np.float32))
        folds = [torch.sigmoid(pool_logits(head(chunks), self.pool)) for head in self.heads]
        return scatter_columns(torch.stack(folds).mean(0).double().numpy(), self._positions)

    def score(self, spans: np.ndarray) -> list[np.ndarray]:
        """[(N, K)] of (N, 5 s) spans: rows laid end to end are a wave whose rows they are."""
        return [self.predict_rows(spans.reshape(-1), len(spans))]

    @property
    def model_files(self) -> list[str]:
        return [model_name(m.path) for m in self.inputs.models]

    def settings(self) -> dict:
        models = self.inputs.provenance()
        info = {"backend": KIND, "checkpoints": list(self.checkpoints),
                **({"unscored": self.unscored} if self.unscored else {}),  # a specialist's NaN classes
                "model": self.model_file, "licence": LICENSE if len(models) == 1 and models[0]["kind"] == "birdnet"
                else "; ".join(f"{m['spec']}: {m['licence']}" for m in models),
                "chunk_offsets_s": self.offsets, "pool": self.pool, "infer": config_to_dict(self.config)}
        if len(models) > 1 or models[0]["kind"] != "birdnet":
            info["foundation"] = models
        return info
