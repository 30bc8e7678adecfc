#!/usr/bin/env bash
# Create .venv and install dotsllm with its test extras. Idempotent.
# On a machine without an NVIDIA GPU the CPU build of torch is pinned first, so that no
# multi-GB CUDA build is pulled in by an unpinned `torch` requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

pip_install() {  # quiet pip; drops this machine's notes about missing local index folders
  python -m pip install -q "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }
}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip_install --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extras="test,gpu"
else
  python -c "import torch" 2>/dev/null || pip_install "torch==${DOTSLLM_CPU_TORCH:-2.13.0}"
  extras="test"
fi
pip_install -e ".[${extras}]"
python -W ignore -c "import torch, megatron.core, dotsllm; print(f'dotsllm ready: torch {torch.__version__}, megatron-core {megatron.core.__version__}')"
