#!/usr/bin/env bash
# Refresh constraints.txt: install the package with every extra into a throw-away venv, unconstrained, and
# freeze what pip resolved. `make install` then installs exactly these versions (pip -c constraints.txt).
# Usage: scripts/lock.sh [PYTHON]   (default python3; the pins are valid for that Python's version)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
extras=${LOCK_EXTRAS:-dev}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --upgrade pip
"$tmp/venv/bin/python" -m pip install --quiet ".[$extras]"
{
  echo "# Pinned versions for \`make install\` (pip -c). Made by scripts/lock.sh on $(date -u +%Y-%m-%d) with"
  echo "# $("$tmp/venv/bin/python" --version) on $(uname -m); refresh with \`make lock\` and run \`make test\`."
  "$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | grep -v -i '^birdclef[= @]'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pins"
