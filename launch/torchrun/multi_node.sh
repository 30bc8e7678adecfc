#!/bin/bash
# dotsllm pretraining on several machines: run this same command on every node; torchrun starts one
# process per GPU and the nodes meet at a c10d rendezvous hosted by RDZV_HOST (any one of them).
#
#   NNODES=4 RDZV_HOST=node0 launch/torchrun/multi_node.sh CONFIG [key=value ...]
#   NNODES=64 RDZV_HOST=10.0.0.1 launch/torchrun/multi_node.sh configs/pretrain/dots1-142b.yaml \
#     run_dir=/lustre/runs/dots1-142b
#
# Environment: NNODES and RDZV_HOST (required), RDZV_PORT (default 29500), RDZV_ID (a name for this
# run, the same on every node; default dotsllm), NPROC (processes per node; default: the GPUs
# nvidia-smi lists), SHUTDOWN_TIMEOUT (seconds to save a checkpoint after a stop signal, default 600),
# NCCL_* (launch/README.md). run_dir must be on a file system all nodes share.
# Stop: `kill -USR1 <torchrun pid>` on every node; rerunning the command resumes from the latest checkpoint.
set -euo pipefail

: "${NNODES:?set NNODES, the number of nodes}" "${RDZV_HOST:?set RDZV_HOST, the host of the rendezvous}"
nproc=${NPROC:-$(nvidia-smi -L | wc -l)}
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}  # TP/SP comm-compute overlap order

# Ranks are contiguous per node, so TP (and EP) groups stay inside a node's NVLink domain.
exec torchrun --nnodes="$NNODES" --nproc-per-node="$nproc" \
  --rdzv-backend=c10d --rdzv-endpoint="$RDZV_HOST:${RDZV_PORT:-29500}" --rdzv-id="${RDZV_ID:-dotsllm}" \
  --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout="${SHUTDOWN_TIMEOUT:-600}" \
  -m dotsllm.cli pretrain "$@"
