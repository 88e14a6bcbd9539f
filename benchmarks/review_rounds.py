"""Simulated review rounds: does answering margin-queue items and retraining a BirdNET head lift held-out AUC?

Run by hand, never as a test (it trains one head run per round):

    nice -n 10 python benchmarks/review_rounds.py --data ../shared/data/multitaxa-dev-v1 --out /tmp/rounds \
        [--rounds 20 50 100] [--queue margin|top|random] [--set train.embed_copies=0 ...]

The labelled soundscapes are DATA/test_soundscapes (solution.csv: 0/1 per 5 s window); DATA/train_soundscapes
carry no labels. So the test soundscapes are split **by file** (seeded): the first half is the review pool, the
other half is held out for evaluation and never reviewed. Round 0 is the head trained on the clips alone
(``configs/birdnet-head.yaml``); each round r then

1. scores the review pool with the previous round's head and builds each class's **margin queue** (the
   windows nearest 0.5 that have no answer for that class yet, :func:`birdclef.review.queue.margin_queue`);
2. a simulated reviewer answers from solution.csv until the class has N answers in all (N = 20, 50, 100 by
   default, cumulative): yes where the window holds the class, no where it does not;
3. every answer goes through the app's own table (:func:`birdclef.review.reviews.save_answer`), and a new head
   run trains with ``train --reviews`` (the same clips, the reviewed windows as masked hard labels);
4. the held-out half is scored (fold heads soft-voted, raw probabilities: no power adjustment) and its macro
   ROC-AUC over the classes with a positive there is reported, with the gain over round 0 and its 95 %
   interval (paired percentile bootstrap over held-out files, 1000 resamples).

``--queue random`` (a seeded random draw of unanswered pool windows per class) is the control: the same number
of answers without active learning; ``--queue top`` answers the highest scores first.

Embeddings are cached: the clips' once in OUT/cache (shared by every round), the soundscape windows' once in
OUT/windows; round 0 (OUT/round-0) is shared by every queue. Prints a markdown table and writes
OUT/review_rounds-<queue>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing


def _windows(data: Path) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """(one row per labelled window: path, start_s, end_s, stem; (W, K) 0/1 targets; classes)."""
    solution = pd.read_csv(data / "solution.csv")
    classes = [c for c in solution.columns if c != "row_id"]
    stem = solution["row_id"].str.rsplit("_", n=1).str[0]
    end = solution["row_id"].str.rsplit("_", n=1).str[1].astype(float)
    table = pd.DataFrame({"path": stem + ".ogg", "start_s": end - 5.0, "end_s": end, "stem": stem})
    return table, solution[classes].to_numpy(np.float32), classes


def _embed_windows(config, table: pd.DataFrame, root: Path, classes: list[str], out: Path):
    """(W, C, D) BirdNET chunk embeddings of every labelled window (cached in OUT/windows)."""
    from birdclef.birdnet.head_pseudo import embed_pseudo
    from birdclef.birdnet.model import BirdnetModel
    from birdclef.data.pseudo import PseudoLabels

    frame = table[["path", "start_s", "end_s"]].assign(fold=-1, audio=[str(root / p) for p in table["path"]])
    labels = PseudoLabels(frame, np.zeros((len(frame), len(classes)), np.float32),
                          np.zeros((len(frame), len(classes)), bool), {"soundscapes": str(root)}, root,
                          "all-windows-" + str(len(frame)))
    model = BirdnetModel(config.model.birdnet_path, batch_size=config.infer.birdnet_batch_size)
    rows, emb, _ = embed_pseudo(config, labels, model, out / "windows", progress=False)
    ordered = np.zeros_like(emb)
    ordered[rows] = emb
    return ordered


def _score(run: Path, emb: np.ndarray) -> np.ndarray:
    """(W, K) fold-averaged head probabilities of chunk embeddings (the run's pooling)."""
    import torch

    from birdclef.birdnet.head import load_head, pool_logits
    from birdclef.config import config_from_dict

    probs = []
    x = torch.from_numpy(emb.astype(np.float32))
    for path in sorted(run.glob("fold*/best.pt")):
        head, state = load_head(path)
        pool = config_from_dict(state["config"]).infer.birdnet_pool
        with torch.no_grad():
            probs.append(torch.sigmoid(pool_logits(head(x), pool)).double().numpy())
    return np.mean(probs, axis=0)


def _train(config, data: Path, run: Path, cache: Path, reviews: Path | None) -> float:
    from birdclef.birdnet.head_train import train_embedding_head

    started = time.perf_counter()
    if not (run / "summary.json").is_file():
        train_embedding_head(config, data, run, cache_dir=cache, progress=False, reviews=reviews,
                             resume=(run / "config.yaml").is_file())
    return time.perf_counter() - started


def _answer(results: Path, table: pd.DataFrame, target: np.ndarray, scores: np.ndarray, pool: np.ndarray,
            classes: list[str], n_total: int, model: str, queue: str = "margin", seed: int = 0) -> int:
    """The simulated reviewer: for each class, answer its `queue` (margin, top, or a seeded random draw: the
    control) until it has `n_total` answers."""
    from birdclef.review.queue import margin_queue, top_queue
    from birdclef.review.reviews import Answer, read_reviews, save_answers

    done = read_reviews(results)
    answered = {(c, f, s) for c, f, s in zip(done["class"], done["file"], done["start_s"])}
    given = []
    for k, cls in enumerate(classes):
        have = sum(1 for c, _, _ in answered if c == cls)
        open_rows = np.array([i for i in pool if (cls, table["path"].iat[i], round(table["start_s"].iat[i], 3))
                              not in answered])
        if have >= n_total or not len(open_rows):
            continue
        n = n_total - have
        if queue == "margin":
            picks = open_rows[margin_queue(scores[open_rows, k], 0.5, n)]
        elif queue == "top":
            picks = open_rows[top_queue(scores[open_rows, k], n)]
        else:
            picks = np.random.default_rng([seed, k, n_total]).permutation(open_rows)[:n]
        given += [Answer(cls, table["path"].iat[i], float(table["start_s"].iat[i]), float(table["end_s"].iat[i]),
                         "yes" if target[i, k] > 0 else "no", "simulated", model, float(scores[i, k]), queue=queue)
                  for i in picks]
    save_answers(results, given)  # the app's table, one compaction for the round
    return len(given)


def _paired_gain(target: np.ndarray, now: np.ndarray, before: np.ndarray, files: np.ndarray,
                 reps: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of macro AUC(now) - AUC(before) over held-out files resampled with replacement."""
    from birdclef.eval.metrics import macro_roc_auc

    names = np.unique(files)
    rows = {f: np.flatnonzero(files == f) for f in names}
    rng, gains = np.random.default_rng(seed), []
    for _ in range(reps):
        idx = np.concatenate([rows[f] for f in rng.choice(names, len(names))])
        if not target[idx].any():
            continue
        gains.append(macro_roc_auc(target[idx], now[idx]) - macro_roc_auc(target[idx], before[idx]))
    low, high = np.percentile(gains, [2.5, 97.5])
    return float(low), float(high)


def main(argv: list[str] | None = None) -> int:
    from birdclef.config import load_config
    from birdclef.eval.metrics import macro_roc_auc
    from birdclef.review.reviews import read_reviews
    from birdclef.utils.io import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, nargs="+", default=[20, 50, 100],
                        help="answers per class after each round (cumulative)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the review / evaluation split of files")
    parser.add_argument("--queue", choices=["margin", "top", "random"], default="margin",
                        help="which items the simulated reviewer answers (random: the control)")
    parser.add_argument("-c", "--config", type=Path, default=REPO / "configs" / "birdnet-head.yaml")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[])
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    out, data = args.out, args.data
    out.mkdir(parents=True, exist_ok=True)
    table, target, classes = _windows(data)
    stems = sorted(table["stem"].unique())
    review_stems = set(np.random.default_rng(args.seed).permutation(stems)[: len(stems) // 2])
    pool = np.flatnonzero(table["stem"].isin(review_stems).to_numpy())
    held = np.flatnonzero(~table["stem"].isin(review_stems).to_numpy())
    emb = _embed_windows(config, table, data / "test_soundscapes", classes, out)
    results = out / f"reviews-{args.queue}"
    results.mkdir(exist_ok=True)
    (results / "archive.json").write_text(json.dumps({"archive": str((data / "test_soundscapes").resolve())}))

    rows, run = [], out / "round-0"
    seconds = _train(config, data, run, out / "cache", None)
    for r, n_total in enumerate([0, *args.rounds]):
        if r > 0:
            _answer(results, table, target, scores, pool, classes, n_total, f"round-{r - 1}", args.queue, args.seed)
            run = out / f"{args.queue}-round-{r}"
            seconds = _train(config, data, run, out / "cache", results / "reviews.parquet")
        scores = _score(run, emb)
        reviews = read_reviews(results)
        reviews = reviews[reviews["model"].isin([f"round-{j}" for j in range(r)])]  # this round's and earlier ones
        auc = macro_roc_auc(target[held], scores[held])
        if r == 0:
            first = scores
        gain = _paired_gain(target[held], scores[held], first[held], table["stem"].to_numpy()[held]) if r else (0, 0)
        row = {"queue": args.queue, "round": r, "answers_per_class": n_total, "answers": int(len(reviews)),
               "yes": int((reviews["answer"] == "yes").sum()), "held_out_auc": round(float(auc), 4),
               "gain_95": [round(g, 4) for g in gain],
               "review_pool_auc": round(float(macro_roc_auc(target[pool], scores[pool])), 4),
               "train_s": round(seconds, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| queue | round | answers per class | answers (yes) | held-out macro ROC-AUC | gain vs round 0 "
          "(95 % file bootstrap) | review-pool AUC | train s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        low, high = row["gain_95"]
        gain = row["held_out_auc"] - rows[0]["held_out_auc"]
        print(f"| {row['queue']} | {row['round']} | {row['answers_per_class']} | {row['answers']} ({row['yes']}) | "
              f"{row['held_out_auc']:.4f} | {gain:+.4f} [{low:+.4f}, {high:+.4f}] | {row['review_pool_auc']:.4f} | "
              f"{row['train_s']:.0f} |")
    write_json_atomic({"data": str(data), "review_files": sorted(review_stems), "held_out_files": len(held) // 12,
                       "config": str(args.config), "overrides": args.overrides, "rows": rows},
                      out / f"review_rounds-{args.queue}.json")
    print(f"\nwritten: {out / f'review_rounds-{args.queue}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
