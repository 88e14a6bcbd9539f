"""The review web app (Flask): a page of plain HTML/JS/CSS (``static/``) over a small JSON API.

Routes::

    GET  /                        the page
    GET  /api/state               classes (most confident first), reviewer, settings, answers per class, retrain
    GET  /api/queue?class=&kind=  the queue's items with their answers, and where to resume
    POST /api/answer              {class, file, start_s, end_s, answer, note, queue, score, model}: saved at once
    GET  /api/spectrogram?file=&start_s=&end_s=   PNG (cached)
    GET  /api/audio?file=&start_s=&end_s=         WAV with context (cached)
    GET  /api/precision?class=&target=            precision per score bin with intervals, threshold for target
    POST /api/retrain             refit the head on the reviews and re-score (when the results allow it)

Only recordings of the results table are served (a ``file`` not in it is a 404), and the server binds to
127.0.0.1 unless told otherwise: the page has no login.
"""

from __future__ import annotations

import math
import threading
from importlib import resources
from pathlib import Path

import numpy as np

from birdclef.errors import AudioError, BirdclefError
from birdclef.review.queue import KINDS
from birdclef.review.render import audio_file, image_file
from birdclef.review.session import Session


def _clean(value):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def create_app(session: Session):
    """The Flask app of `session` (BirdclefError when Flask is not installed)."""
    try:
        from flask import Flask, abort, jsonify, request, send_file
    except ImportError:
        raise BirdclefError('birdclef review needs Flask: pip install "birdclef[review]"') from None

    static = Path(str(resources.files("birdclef.review") / "static"))
    app = Flask(__name__, static_folder=str(static), static_url_path="/static")
    files = set(session.results.table["path"].astype(str))
    retrain_lock = threading.Lock()

    @app.errorhandler(BirdclefError)
    def user_error(exc):
        return jsonify({"error": str(exc)}), 400

    def window_args() -> tuple[Path, str, float, float]:
        rel = request.args.get("file", "")
        if rel not in files:
            abort(404)
        try:
            start_s, end_s = float(request.args["start_s"]), float(request.args["end_s"])
        except (KeyError, ValueError):
            abort(400)
        return session.results.audio(rel), rel, start_s, end_s

    @app.get("/")
    def index():
        return send_file(static / "index.html")

    @app.get("/api/state")
    def state():
        table = session.results.table
        peak = {c: float(np.nan_to_num(table[c].to_numpy(np.float64), nan=-1).max()) for c in session.results.classes}
        from birdclef.review.retrain import retrain_available

        available, why = retrain_available(session)
        return jsonify(_clean({"classes": sorted(peak, key=lambda c: (-peak[c], c)), "kinds": list(KINDS),
                               "reviewer": session.reviewer, "settings": session.settings.__dict__,
                               "progress": session.progress(), "results": str(session.folder),
                               "retrain": {"available": available, "why": why}}))

    @app.get("/api/queue")
    def queue():
        kind = request.args.get("kind", "top")
        return jsonify(_clean(session.queue(request.args.get("class", ""), kind)))

    @app.post("/api/answer")
    def answer():
        body = request.get_json(force=True, silent=True) or {}
        try:
            row = session.answer(str(body["class"]), str(body["file"]), float(body["start_s"]), float(body["end_s"]),
                                 str(body["answer"]), str(body.get("note", "")), str(body.get("queue", "")),
                                 float(body.get("score") if body.get("score") is not None else "nan"),
                                 str(body.get("model", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise BirdclefError(f"bad answer ({exc})") from None
        return jsonify(_clean({"saved": row, "progress": session.progress()}))

    @app.get("/api/spectrogram")
    def spectrogram():
        path, rel, start_s, end_s = window_args()
        try:
            png = image_file(session.cache, path, start_s, end_s, f"{rel}  {start_s:g}-{end_s:g} s")
        except AudioError as exc:
            raise BirdclefError(str(exc)) from None
        return send_file(png, mimetype="image/png", max_age=3600)

    @app.get("/api/audio")
    def audio():
        path, _, start_s, end_s = window_args()
        try:
            wav = audio_file(session.cache, path, start_s, end_s)
        except AudioError as exc:
            raise BirdclefError(str(exc)) from None
        return send_file(wav, mimetype="audio/wav", max_age=3600)

    @app.get("/api/precision")
    def precision():
        cls = request.args.get("class", "")
        target = float(request.args.get("target", 0.9))
        curves = session.curves([cls])
        if cls not in curves:
            return jsonify({"class": cls, "rows": [], "threshold": None,
                            "note": "no stratified answers yet: review the stratified queue"})
        from birdclef.review.precision import threshold_for

        threshold, note = threshold_for(curves[cls], target)
        return jsonify(_clean({"class": cls, "rows": curves[cls].to_dict(orient="records"),
                               "threshold": threshold, "note": note, "target": target}))

    @app.post("/api/retrain")
    def retrain():
        from birdclef.review.retrain import retrain_session

        if not retrain_lock.acquire(blocking=False):
            raise BirdclefError("a retrain is already running")
        try:
            return jsonify(_clean(retrain_session(session)))
        finally:
            retrain_lock.release()

    return app


def _check_port(host: str, port: int) -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug's server does
            probe.bind((host, port))
    except OSError as exc:
        raise BirdclefError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); another "
                            "review may be running: choose another --port (0 picks a free one)") from None


def serve(session: Session, host: str = "127.0.0.1", port: int = 8765, announce=print) -> None:
    """Serve `session` until interrupted; `announce` gets the address line (port 0: a free port)."""
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in the reviewer's terminal

    app = create_app(session)
    _check_port(host, port)  # werkzeug would print its own lines and exit
    server = make_server(host, port, app, threaded=True)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    announce(f"review: http://{shown}:{server.server_port}/  (results {session.folder}; Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
