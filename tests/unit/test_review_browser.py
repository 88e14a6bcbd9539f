"""The review app in a real browser: Debian's chromium driven by Playwright (never a downloaded browser build).

Open the app on a synthetic analyze result, play a clip, answer with the keyboard, reload (answers persisted,
queue resumed), kill the server (a real subprocess, SIGKILL) mid-session and restart it: nothing lost.
Prints the time to the first item and per answer (not asserted: speed goes to benchmarks, not tests).
With BIRDCLEF_REVIEW_SCREENSHOT=PATH it also saves a screenshot of the app there (the README's).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from review_data import make_results  # noqa: E402

INSTALL = ("install Debian's chromium (apt-get update && apt-get install -y chromium) and the dev extra's "
           "playwright (pip install playwright); never `playwright install`")
CHROMIUM = next((p for p in (os.environ.get("BIRDCLEF_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p), None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason=f"no chromium on PATH: {INSTALL}")]
SRC = Path(__file__).resolve().parents[2] / "src"


def _start(results: Path, port: int = 0) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "birdclef", "review", str(results), "--port", str(port),
                             "--reviewer", "browser-test"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.startswith("review: http://"):
            return proc, line.split()[1]
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"the server did not print its address (exit {proc.poll()})")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def _progress(page) -> int:
    return int(page.locator("#progress").get_attribute("data-answered") or 0)


def _wait_answered(page, n: int) -> None:
    page.wait_for_function(f"document.getElementById('progress').dataset.answered == '{n}'", timeout=30_000)


def _wait_saves(page, n: int) -> None:
    """Until the page has saved `n` answers since it loaded (the server acknowledged each)."""
    page.wait_for_function(f"S.saves >= {n}", timeout=30_000)


def _wait_image(page) -> None:
    page.wait_for_function("(() => { const i = document.getElementById('spec'); "
                           "return i.complete && i.naturalWidth > 0; })()", timeout=60_000)


def test_review_in_chromium_keyboard_reload_and_kill(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason=f"playwright is not installed: {INSTALL}")
    results, _ = make_results(tmp_path)
    proc, address = _start(results)
    port = int(address.rstrip("/").rsplit(":", 1)[1])
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            started = time.perf_counter()
            page.goto(f"{address}?class=amerob&kind=margin")
            _wait_image(page)
            page.wait_for_function("document.getElementById('audio').readyState >= 2", timeout=60_000)
            first_item_s = time.perf_counter() - started
            assert page.locator("#meta").inner_text().startswith("amerob · score")
            duration = page.evaluate("document.getElementById('audio').duration")
            assert 6.5 <= duration <= 7.5  # the 5 s window and 1 s of context either side

            page.keyboard.press(" ")  # play
            page.wait_for_function("document.getElementById('audio').currentTime > 0.2", timeout=30_000)
            page.keyboard.press(" ")  # pause

            first = page.locator("#item").get_attribute("data-file"), page.locator("#item").get_attribute("data-start")
            saved_s, shown_s = [], []
            for key, n in (("y", 1), ("n", 2), ("u", 3)):
                page.wait_for_timeout(1500)  # a reviewer listens before answering (the next item is fetched ahead)
                t0 = time.perf_counter()
                page.keyboard.press(key)
                _wait_saves(page, n)
                saved_s.append(time.perf_counter() - t0)
                _wait_answered(page, n)
                _wait_image(page)
                shown_s.append(time.perf_counter() - t0)
            page.keyboard.press("b")  # back to the third item: change its answer, with a note
            page.fill("#note", "faint, far away")
            page.locator("#note").blur()
            page.keyboard.press("n")
            _wait_saves(page, 4)  # the fourth save: the changed answer
            saved = pd.read_parquet(results / "reviews.parquet")
            assert sorted(saved["answer"]) == ["no", "no", "yes"] and (saved["reviewer"] == "browser-test").all()
            assert saved.set_index("note").index.tolist().count("faint, far away") == 1
            assert set(saved["queue"]) == {"margin"} and set(saved["class"]) == {"amerob"}

            page.reload()  # answers persisted, queue resumed at the fourth item
            _wait_image(page)
            assert _progress(page) == 3 and "item 4 of" in page.locator("#progress").inner_text()
            page.keyboard.press("ArrowLeft")
            assert "answered no" in page.locator("#meta").inner_text()
            page.keyboard.press("ArrowRight")
            page.keyboard.press("y")
            _wait_saves(page, 1)

            _kill(proc)  # mid-session, no goodbye
            assert len(pd.read_parquet(results / "reviews.parquet")) == 4
            proc, address = _start(results, port)
            page.reload()
            _wait_image(page)
            assert _progress(page) == 4 and "item 5 of" in page.locator("#progress").inner_text()
            page.keyboard.press("Home")
            items = page.evaluate("S.queue.items.slice(0, 4).map(i => [i.file, String(i.start_s), i.answer])")
            assert items[0][:2] == list(first) and [a for _, _, a in items] == ["yes", "no", "no", "yes"]

            page.select_option("#kind", "stratified")  # the class switcher and another queue
            page.wait_for_function("S.queue.kind == 'stratified'", timeout=30_000)
            _wait_image(page)
            before = _progress(page)  # windows of the draw answered in the margin queue count here too
            for n in range(3):
                page.keyboard.press("y")
                _wait_saves(page, n + 1)
            assert _progress(page) >= before
            page.wait_for_function("document.querySelectorAll('#prec tbody tr').length > 0", timeout=30_000)
            page.select_option("#cls", "norcar")
            page.wait_for_function("S.queue.class == 'norcar'", timeout=30_000)
            _wait_image(page)
            assert page.locator("#meta").inner_text().startswith("norcar")
            shot = os.environ.get("BIRDCLEF_REVIEW_SCREENSHOT")
            if shot:
                page.select_option("#cls", "amerob")
                page.wait_for_function("S.queue.class == 'amerob'", timeout=30_000)
                _wait_image(page)
                page.screenshot(path=shot)
            browser.close()
        print(f"\nreview app in chromium: first item {first_item_s:.2f} s; per answer: saved "
              f"{', '.join(f'{t:.3f}' for t in saved_s)} s, next item shown {', '.join(f'{t:.3f}' for t in shown_s)} s")
    finally:
        _kill(proc)
    saved = pd.read_parquet(results / "reviews.parquet")
    assert (saved["queue"] == "margin").sum() == 4 and (saved["queue"] == "stratified").sum() >= 1
