#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install hpa-wsss into it.
# Torch comes from `pip install torch==2.14.1 torchvision==0.29.1` (on this workplace's machines pip
# takes both from local files; elsewhere from PyPI). Idempotent: re-running installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "hpa-wsss needs Python 3.11, found " + sys.version' 
VENV="${WSSS_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"$VENV/bin/python" -c 'import torch, torchvision' 2>/dev/null || {
  echo "[install] torch==2.14.1 torchvision==0.29.1"
  "${PIP[@]}" install torch==2.14.1 torchvision==0.29.1
}
echo "[install] hpa-wsss and its dependencies"
"${PIP[@]}" install -e '.[test]'
"$VENV/bin/python" -c 'import torch, timm, albumentations, iterstrat, wsss, hpa_seg' 
echo "[install] ok: $VENV"
