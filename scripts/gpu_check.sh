#!/usr/bin/env bash
# GPU acceptance check of this checkout (scripts/gpu_check.py): fp16 + GradScaler and bf16 Puzzle-CAM
# training of seresnext50_32x4d at 512 on synthetic data, training img/s with channels_last on/off,
# stage-1 img/s, stage-2 crops/s (bare forward and the real drivers), the watershed network's
# forward, a 1-GPU DDP (NCCL) smoke test; one JSON summary on stdout (progress on stderr).
#
#   bash scripts/gpu_check.sh [--out gpu_check.json] [any scripts/gpu_check.py option]
#
# Uses the project's own install (.venv of this checkout, else $PYTHON, else python3) with this
# checkout first on PYTHONPATH; fetches nothing (offline flags set, random init); stops after 8
# minutes (exit 124). On a machine without a CUDA GPU it prints one line and exits 0.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1 TIMM_USE_OLD_CACHE=0
"$PY" - <<'PYEOF'
import sys
try:
    import torch
except ImportError as exc:
    print(f"gpu_check: torch is not installed for {sys.executable} ({exc}); run scripts/install.sh first")
    sys.exit(1)
if not torch.cuda.is_available():
    from wsss.precision import cpu_capability
    print(f"gpu_check: no CUDA GPU on this machine (torch {torch.__version__}, {cpu_capability().describe()}): nothing to check")
    sys.exit(3)
PYEOF
probe=$?
[ "$probe" -eq 3 ] && exit 0
[ "$probe" -ne 0 ] && exit "$probe"
exec timeout --signal=INT --kill-after=20 480 "$PY" "$ROOT/scripts/gpu_check.py" "$@"
