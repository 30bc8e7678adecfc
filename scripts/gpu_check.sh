#!/usr/bin/env bash
# The GPU checks on one CUDA GPU, in a few minutes: tests/gpu (TE layer spec vs local, grouped-GEMM
# experts, THD packed attention, bf16 local spec vs fp32, a few bf16 steps of dots1-small logging MFU)
# and generation (tests/test_inference.py: KV cache vs recompute, seeds, log-probs) on CUDA.
# Tests that need Transformer Engine skip, naming it, where TE is absent.
#   bash scripts/gpu_check.sh [OUT_DIR]      (default gpu_check/; PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check}
mkdir -p "$out"
export GPU_CHECK_OUT="$out/gpu_check.json" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$python" -c "import torch, megatron.core; print('torch', torch.__version__, 'megatron-core', megatron.core.__version__)" \
  | tee -a "$out/gpu.txt"
"$python" -m pytest -q -rs -p no:cacheprovider tests/gpu tests/test_inference.py 2>&1 | tee "$out/pytest.log"
