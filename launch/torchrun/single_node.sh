#!/bin/bash
# dotsllm pretraining on one machine: torchrun starts one process per GPU.
#
#   launch/torchrun/single_node.sh CONFIG [key=value ...]
#   NPROC=8 launch/torchrun/single_node.sh configs/pretrain/dots1-142b.yaml run_dir=/data/runs/x parallel.pp=8
#
# Environment: NPROC (processes; default: the GPUs nvidia-smi lists), SHUTDOWN_TIMEOUT (seconds the
# processes get to save a checkpoint after a stop signal, default 600), NCCL_* (launch/README.md).
# Stop: `kill -USR1 <torchrun pid>` (or SIGTERM, or Ctrl-C) makes every process save a checkpoint and
# exit; rerunning the same command resumes from <run_dir>/checkpoints/latest.
set -euo pipefail

nproc=${NPROC:-$(nvidia-smi -L | wc -l)}
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}  # TP/SP comm-compute overlap order

# torchrun passes these signals on to the processes (SIGUSR1 it would otherwise die of) and waits
# SHUTDOWN_TIMEOUT seconds for them to exit before it kills them.
exec torchrun --standalone --nproc-per-node="$nproc" \
  --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout="${SHUTDOWN_TIMEOUT:-600}" \
  -m dotsllm.cli pretrain "$@"
