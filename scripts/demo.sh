#!/usr/bin/env bash
# Install the project into .venv (see install.sh) and run the main job on embedded synthetic data:
# synthesise, prepare, folds, train the tiny config (fold 0), segment, stage 1, stage 2, ensemble,
# submission and per-cell evaluation against the synthetic truth. Extra arguments go to wsss-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
VENV="${WSSS_VENV:-.venv}"
exec "$VENV/bin/wsss-demo" "$@"
