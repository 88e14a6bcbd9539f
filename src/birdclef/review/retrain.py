"""The app's "retrain": refit an embedding head on the reviews and re-score every window of the results.

Available when the results came from one embedding-head run (``analyze --run HEAD_RUN``, settings backend
``birdnet_head``) and were analysed with ``--embeddings`` (``embeddings.parquet``: each window's mean BirdNET
embedding). Each fold head of the run (or of the previous round) is fine-tuned, full batch, on the answered
windows' embeddings: a yes is a positive of its class, a no a negative of its class, every other class of
that window is masked out of the loss (unsure answers are left out). Decoupled weight decay pulls the head
back towards the weights it started from, so a few answers move it near them and not far elsewhere. The new
heads score every window from its embedding; the folds' probabilities are averaged and written to
``RESULTS/review_scores/round-N.parquet`` (the newest round feeds the top and margin queues), and the heads to
``RESULTS/review_heads/round-N/foldK/best.pt`` (a head run's checkpoints: ``predict --run`` takes the folder).

A window's embedding here is the mean of its chunks' embeddings, while the head run pools chunk scores; for a
linear head with mean pooling the two agree exactly, otherwise the re-scored values differ slightly in scale
from analyze's, which only the queues' order depends on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from birdclef.errors import BirdclefError
from birdclef.review.reviews import read_reviews
from birdclef.review.session import Session
from birdclef.review.source import KEYS, SCORES_DIR

HEADS_DIR = "review_heads"
EPOCHS, LR, WEIGHT_DECAY = 200, 1e-2, 1e-2
"""Full-batch AdamW steps, learning rate and decay towards the start weights of the refit (seconds on a CPU)."""


def _head_checkpoints(session: Session) -> list[Path]:
    rounds = sorted((session.folder / HEADS_DIR).glob("round-*"), key=lambda p: int(p.name.split("-")[1]))
    if rounds:
        return sorted(rounds[-1].glob("fold*/best.pt"))
    settings = json.loads((session.folder / "settings.json").read_text())
    return [Path(p) for p in settings["predictor"]["checkpoints"]]


def retrain_available(session: Session) -> tuple[bool, str]:
    """(whether the results allow a retrain, why not)."""
    settings = session.folder / "settings.json"
    if session.results.kind != "analyze" or not settings.is_file():
        return False, "retrain needs analyze results of an embedding-head run"
    predictor = json.loads(settings.read_text()).get("predictor", {})
    if predictor.get("backend") != "birdnet_head":
        return False, "retrain needs results of one BirdNET embedding-head run (analyze --run HEAD_RUN)"
    if not (session.folder / "embeddings.parquet").is_file():
        return False, "retrain needs the windows' embeddings (analyze --embeddings)"
    missing = [p for p in _head_checkpoints(session) if not p.is_file()]
    if missing:
        return False, f"{missing[0]}: head checkpoint not found"
    return True, ""


def review_targets(reviews: pd.DataFrame, keys: pd.DataFrame, classes: list[str]):
    """(rows of `keys`, (n, K) targets, (n, K) mask) of the answered windows: yes 1 / no 0 in its class only."""
    answered = reviews[reviews["answer"].isin(("yes", "no")) & reviews["class"].isin(classes)]
    where = {(f, round(float(s), 3), round(float(e), 3)): i
             for i, (f, s, e) in enumerate(zip(keys["path"].astype(str), keys["start_s"], keys["end_s"]))}
    index = {c: k for k, c in enumerate(classes)}
    rows: dict[int, int] = {}
    targets, mask = [], []
    for cls, file, start_s, end_s, ans in zip(answered["class"], answered["file"], answered["start_s"],
                                              answered["end_s"], answered["answer"]):
        row = where.get((file, round(float(start_s), 3), round(float(end_s), 3)))
        if row is None:
            continue
        if row not in rows:
            rows[row] = len(targets)
            targets.append(np.zeros(len(classes), np.float32))
            mask.append(np.zeros(len(classes), bool))
        targets[rows[row]][index[cls]] = 1.0 if ans == "yes" else 0.0
        mask[rows[row]][index[cls]] = True
    order = np.asarray(list(rows), np.int64)
    if not len(order):
        return order, np.zeros((0, len(classes)), np.float32), np.zeros((0, len(classes)), bool)
    return order, np.stack(targets), np.stack(mask)


def finetune(head, emb, target, mask, epochs: int = EPOCHS, lr: float = LR, weight_decay: float = WEIGHT_DECAY):
    """Fit `head` (anchored at its current weights) on (n, D) embeddings with masked BCE, full batch."""
    import torch

    from birdclef.birdnet.head import EmbeddingHead

    start = EmbeddingHead(head.weight.detach(), head.bias.detach(), head.hidden)
    start.load_state_dict(head.state_dict())
    x, y, m = (torch.from_numpy(np.asarray(a)) for a in (emb.astype(np.float32), target, mask))
    opt = torch.optim.AdamW(start.parameters(), lr=lr, weight_decay=0.0)
    start.train()
    for _ in range(epochs):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(start(x), y, reduction="none")
        loss = (loss * m).sum() / m.sum().clamp_min(1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        start.decay_to_init(lr * weight_decay)
    return start.eval()


def retrain_session(session: Session) -> dict:
    """Refit, re-score and write the next round (module docstring); a summary for the app."""
    import torch

    from birdclef.birdnet.head import load_head, save_head
    from birdclef.config import config_from_dict

    available, why = retrain_available(session)
    if not available:
        raise BirdclefError(why)
    started = time.perf_counter()
    table = pd.read_parquet(session.folder / "embeddings.parquet")
    emb_cols = [c for c in table.columns if c.startswith("emb_")]
    emb = table[emb_cols].to_numpy(np.float32).copy()  # writable, for torch.from_numpy
    checkpoints = _head_checkpoints(session)
    classes = list(load_head(checkpoints[0])[1]["classes"])
    rows, target, mask = review_targets(read_reviews(session.folder), table[KEYS], classes)
    if not len(rows):
        raise BirdclefError("no yes/no answers of windows in embeddings.parquet yet: answer some items first")
    n_round = len(list((session.folder / HEADS_DIR).glob("round-*"))) + 1
    probs = np.zeros((len(table), len(classes)), np.float64)
    for path in checkpoints:
        head, state = load_head(path)
        head = finetune(head, emb[rows], target, mask)
        save_head(session.folder / HEADS_DIR / f"round-{n_round}" / path.parent.name / "best.pt", head,
                  config_from_dict(state["config"]), classes, int(state["epoch"]), float(state["score"]))
        with torch.no_grad():
            probs += torch.sigmoid(head(torch.from_numpy(emb))).double().numpy() / len(checkpoints)
    scores = table[KEYS].copy()
    wanted = [c for c in session.results.classes if c in classes]
    scores = pd.concat([scores, pd.DataFrame(probs[:, [classes.index(c) for c in wanted]].astype(np.float32),
                                             columns=wanted)], axis=1)
    from birdclef.utils.io import write_parquet_atomic

    target_path = write_parquet_atomic(scores, session.folder / SCORES_DIR / f"round-{n_round}.parquet")
    elapsed = time.perf_counter() - started
    return {"round": n_round, "answers": int(mask.sum()), "windows": len(rows), "scores": str(target_path),
            "elapsed_s": elapsed, "message": f"round {n_round}: refit {len(checkpoints)} fold heads on "
            f"{int(mask.sum())} answers in {elapsed:.1f} s; the queues now use its scores"}
