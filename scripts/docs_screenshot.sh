#!/usr/bin/env bash
# Re-take docs/img/demo-report.png (the report's top: summary, per-class AUC, training) and
# docs/img/demo-detections.png (its first detections figure), the images of the Get started page, from a finished demo:
#   .venv/bin/birdclef demo --out /tmp/demo && scripts/docs_screenshot.sh /tmp/demo/report
# Needs headless Chromium (Debian: apt-get install -y chromium) and Pillow (in the base install).
set -euo pipefail
cd "$(dirname "$0")/.."
report=${1:?usage: scripts/docs_screenshot.sh DEMO/report}
[ -f "$report/index.html" ] || { echo "$report/index.html: not found (run birdclef demo first)" >&2; exit 2; }
command -v chromium >/dev/null || { echo "chromium not found: apt-get install -y chromium" >&2; exit 2; }
python=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,2000 \
    --screenshot="$tmp/full.png" "file://$(cd "$report" && pwd)/index.html" >/dev/null 2>&1
"$python" - "$tmp/full.png" docs/img/demo-report.png "$report" docs/img/demo-detections.png <<'PY'
import sys
from pathlib import Path

from PIL import Image

full = Image.open(sys.argv[1]).convert("RGB")
page = full.crop((0, 0, full.width, min(full.height, 1900)))   # the summary, per-class AUC and training curves
page.thumbnail((900, 1400))
page.quantize(colors=128).save(sys.argv[2], optimize=True)
figure = Image.open(sorted(Path(sys.argv[3]).glob("detections_*.png"))[0]).convert("RGB")
figure.thumbnail((900, 900))
figure.quantize(colors=128).save(sys.argv[4], optimize=True)
PY
ls -l docs/img/demo-report.png docs/img/demo-detections.png
