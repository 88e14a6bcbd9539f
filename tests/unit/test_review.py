"""The review app's parts: the reviews table (atomic, two writers, kills), queues, restart, media endpoints."""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from birdclef.errors import BirdclefError
from birdclef.review.queue import Bins, build_queue, margin_queue, stratified_queue, top_queue
from birdclef.review.reviews import COLUMNS, LOG, TABLE, Answer, compact, read_reviews, save_answer
from birdclef.review.session import Session
from birdclef.review.source import open_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from review_data import FILES, make_results  # noqa: E402


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return make_results(tmp_path)[0]


def test_an_answer_is_saved_at_once_and_the_latest_per_item_wins(tmp_path):
    save_answer(tmp_path, Answer("a", "f.wav", 0.0, 5.0, "yes", "ann", "m1", 0.8, "loud", "top"))
    table = pd.read_parquet(tmp_path / TABLE)
    assert list(table.columns) == COLUMNS and len(table) == 1
    assert table.loc[0, ["class", "answer", "reviewer", "note", "queue"]].tolist() == ["a", "yes", "ann", "loud", "top"]
    save_answer(tmp_path, Answer("a", "f.wav", 0.0, 5.0, "no", "bob"))  # same item: replaces
    save_answer(tmp_path, Answer("b", "f.wav", 0.0, 5.0, "unsure"))  # other class: a new item
    table = pd.read_parquet(tmp_path / TABLE)
    assert len(table) == 2
    assert table.set_index("class").loc["a", "answer"] == "no"
    with pytest.raises(BirdclefError, match="answer 'maybe'"):
        Answer("a", "f.wav", 0.0, 5.0, "maybe")


def _writer(folder: str, who: int, n: int) -> None:
    for i in range(n):
        save_answer(folder, Answer("a", f"w{who}.wav", float(5 * i), float(5 * i + 5), "yes", f"r{who}"))


def test_two_processes_writing_at_once_lose_no_answer(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), who, 25)) for who in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    table = pd.read_parquet(tmp_path / TABLE)
    assert len(table) == 50 and sorted(table["reviewer"].value_counts().tolist()) == [25, 25]


def test_an_answer_logged_by_a_killed_process_is_recovered_and_a_cut_line_ignored(tmp_path):
    save_answer(tmp_path, Answer("a", "f.wav", 0.0, 5.0, "yes"))
    row = Answer("a", "f.wav", 5.0, 10.0, "no", time="2030-01-01T00:00:00+00:00").row()
    with open(tmp_path / LOG, "a") as fh:  # killed after the log append, before compaction; then mid-line
        fh.write(json.dumps(row) + "\n" + '{"class": "a", "file": "f.wa')
    assert len(pd.read_parquet(tmp_path / TABLE)) == 1
    assert len(read_reviews(tmp_path)) == 2
    assert len(compact(tmp_path)) == 2 and len(pd.read_parquet(tmp_path / TABLE)) == 2


def test_an_unreadable_reviews_table_is_one_line_naming_it(tmp_path):
    (tmp_path / TABLE).write_bytes(b"not parquet")
    with pytest.raises(BirdclefError, match=r"reviews.parquet: unreadable reviews table"):
        read_reviews(tmp_path)


def test_queue_orders():
    scores = np.array([0.2, 0.9, np.nan, 0.58, 0.45, 0.7])
    assert top_queue(scores, 3).tolist() == [1, 5, 3]
    assert margin_queue(scores, 0.5, 3).tolist() == [4, 3, 5]  # 0.05, 0.08, 0.2 from the threshold
    rng = np.random.default_rng(0)
    many = rng.uniform(size=500)
    bins = Bins(5, 0.0)
    queue = stratified_queue(many, bins, 20, seed=1, cls="a")
    assert len(queue) == 20 and len(set(queue)) == 20
    which = bins.of(many[queue])
    assert which[:5].tolist() == [4, 3, 2, 1, 0]  # dealt round-robin from the top bin
    assert np.bincount(which, minlength=5).tolist() == [4] * 5
    assert stratified_queue(many, bins, 20, seed=1, cls="a").tolist() == queue.tolist()  # deterministic
    assert stratified_queue(many, bins, 20, seed=2, cls="a").tolist() != queue.tolist()
    with pytest.raises(BirdclefError, match="queue 'best'"):
        build_queue(pd.DataFrame({"a": many}), "a", "best", 5, bins, 0.5)


def test_a_restarted_session_resumes_the_queue_where_it_stood(results):
    first = Session(results, reviewer="ann")
    queue = first.queue("amerob", "margin")
    for item in queue["items"][:3]:
        first.answer("amerob", item["file"], item["start_s"], item["end_s"], "no", queue="margin")
    again = Session(results)
    resumed = again.queue("amerob", "margin")
    assert resumed["resume"] == 3 and resumed["answered"] == 3
    assert [i["file"] for i in resumed["items"]] == [i["file"] for i in queue["items"]]
    assert [i["answer"] for i in resumed["items"][:4]] == ["no", "no", "no", ""]


def test_settings_that_would_break_the_stratified_sample_are_refused_once_answered(results):
    session = Session(results, settings={"bins": 5})
    item = session.queue("amerob", "stratified")["items"][0]
    session.answer("amerob", item["file"], item["start_s"], item["end_s"], "yes", queue="stratified")
    assert Session(results).settings.bins == 5  # stored
    with pytest.raises(BirdclefError, match="review.json"):
        Session(results, settings={"bins": 8})


def test_media_endpoints_serve_png_and_wav_and_only_files_of_the_results(results):
    session = Session(results)
    from birdclef.review.server import create_app

    client = create_app(session).test_client()
    state = client.get("/api/state").get_json()
    assert set(state["classes"]) == {"amerob", "norcar"}
    item = client.get("/api/queue?class=norcar&kind=top").get_json()["items"][0]
    query = f"file={item['file']}&start_s={item['start_s']}&end_s={item['end_s']}"
    png = client.get(f"/api/spectrogram?{query}")
    assert png.status_code == 200 and png.data[:8] == b"\x89PNG\r\n\x1a\n"
    wav = client.get(f"/api/audio?{query}")
    assert wav.status_code == 200 and wav.data[:4] == b"RIFF" and wav.data[8:12] == b"WAVE"
    assert len(list((results / ".review_cache").iterdir())) == 2  # cached on disk
    assert client.get("/api/audio?file=../../etc/passwd&start_s=0&end_s=5").status_code == 404
    saved = client.post("/api/answer", json={"class": "norcar", "file": item["file"], "start_s": item["start_s"],
                                             "end_s": item["end_s"], "answer": "yes", "note": "clear song",
                                             "queue": "top", "score": item["score"]})
    assert saved.status_code == 200 and saved.get_json()["progress"] == {"norcar": 1}
    bad = client.post("/api/answer", json={"class": "norcar", "file": FILES[0], "start_s": 0, "end_s": 5,
                                           "answer": "perhaps"})
    assert bad.status_code == 400 and "perhaps" in bad.get_json()["error"]
    assert client.post("/api/retrain").status_code == 400  # not a head run: a message, not a crash


def test_missing_or_broken_results_are_one_line_naming_the_file(tmp_path, results):
    with pytest.raises(BirdclefError, match="nowhere"):
        open_results(tmp_path / "nowhere")
    (results / "detections.parquet").write_bytes(b"broken")
    with pytest.raises(BirdclefError, match=r"detections.parquet: unreadable results table"):
        open_results(results)


def test_a_submission_csv_with_its_soundscapes_can_be_reviewed(tmp_path):
    results, archive = make_results(tmp_path)
    table = pd.read_parquet(results / "detections.parquet")
    sub = pd.DataFrame({"row_id": [f"{Path(p).stem}_{int(e)}" for p, e in zip(table["path"], table["end_s"])],
                        "amerob": table["amerob"], "norcar": table["norcar"]})
    csv = tmp_path / "submission.csv"
    sub.to_csv(csv, index=False)
    session = Session(csv, archive)
    assert session.folder == tmp_path / "submission.review"
    item = session.queue("amerob", "top")["items"][0]
    assert item["file"] in FILES and item["end_s"] - item["start_s"] == 5.0
    with pytest.raises(BirdclefError, match="--soundscapes"):
        open_results(csv)


def test_review_verb_refuses_missing_results_in_one_line(tmp_path, capsys):
    from birdclef.cli import main

    assert main(["review", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none" in err


def _head_results(results: Path, tmp_path: Path) -> np.ndarray:
    """Make `results` look like `analyze --run HEAD --embeddings`: a 2-fold zero head, 4-d window embeddings."""
    from birdclef.birdnet.head import EmbeddingHead, save_head
    from birdclef.config import load_config

    table = pd.read_parquet(results / "detections.parquet")
    emb = np.random.default_rng(1).normal(0.0, 1.0, (len(table), 4)).astype(np.float32)
    frame = table[["path", "start_s", "end_s"]].copy()
    for j in range(4):
        frame[f"emb_{j}"] = emb[:, j]
    frame.to_parquet(results / "embeddings.parquet", index=False)
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "birdnet-head.yaml")
    checkpoints = []
    for fold in range(2):
        path = tmp_path / "head" / f"fold{fold}" / "best.pt"
        save_head(path, EmbeddingHead(np.zeros((2, 4), np.float32), np.zeros(2, np.float32)), config,
                  ["amerob", "norcar"], 3, 0.9)
        checkpoints.append(str(path))
    (results / "settings.json").write_text(json.dumps({"predictor": {"backend": "birdnet_head",
                                                                     "checkpoints": checkpoints}}))
    return emb


def test_retrain_refits_the_head_on_the_answers_and_the_margin_queue_follows(results, tmp_path):
    from sklearn.metrics import roc_auc_score

    from birdclef.review.server import create_app

    emb = _head_results(results, tmp_path)
    session = Session(results)
    table = session.results.table
    for i in range(0, len(table), 2):  # the truth: amerob where the first embedding feature is positive
        row = table.iloc[i]
        session.answer("amerob", row["path"], row["start_s"], row["end_s"], "yes" if emb[i, 0] > 0 else "no")
    client = create_app(session).test_client()
    assert client.get("/api/state").get_json()["retrain"]["available"]
    done = client.post("/api/retrain")
    assert done.status_code == 200 and done.get_json()["round"] == 1
    scores = pd.read_parquet(results / "review_scores" / "round-1.parquet")
    unseen = np.arange(1, len(table), 2)  # windows never answered
    assert roc_auc_score(emb[unseen, 0] > 0, scores["amerob"].to_numpy()[unseen]) > 0.9
    assert scores["norcar"].nunique() == 1  # no answers about norcar: masked, its head row untouched
    assert sorted(p.name for p in (results / "review_heads" / "round-1").iterdir()) == ["fold0", "fold1"]
    margin = session.queue("amerob", "margin")
    assert margin["model"] == "retrain-round-1"
    assert session.queue("amerob", "stratified")["model"] == session.results.model  # precision stays on analyze's
    assert client.post("/api/retrain").get_json()["round"] == 2  # the next round starts from round 1's heads


def test_a_port_in_use_is_one_line(results):
    import socket

    from birdclef.review.server import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BirdclefError, match=f"--port {port}: cannot listen there"):
            serve(Session(results), port=port)
