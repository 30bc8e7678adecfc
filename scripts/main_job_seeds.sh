#!/usr/bin/env bash
# The main job (scripts/main_job.sh) once per seed and thread count, one after another, each in its own
# folder outputs/seeds/s<SEED>-t<THREADS>/ (runs, evaluations, report.json); then `dotsllm report --combine`
# of their reports: each headline number per run with its mean, standard deviation, min and max, and each
# run's GRPO gain (outputs/seeds/combined.json). What the README's table of the main job reports.
#   SEEDS="1 2 3" THREADS_LIST="1 2" bash scripts/main_job_seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
ROOT=outputs/seeds
mkdir -p $ROOT
reports=()
for threads in ${THREADS_LIST:-1 2}; do
  for seed in ${SEEDS:-1 2 3}; do
    dir=$ROOT/s$seed-t$threads
    echo "=== seed $seed, $threads thread(s): $dir"
    SEED=$seed THREADS=$threads RUNS=$dir/runs JOB=$dir bash scripts/main_job.sh > "$dir.log" 2>&1 || {
      echo "failed: see $dir.log" >&2
      exit 1
    }
    reports+=("$dir/report.json")
  done
done
dotsllm report --combine "${reports[@]}" --output $ROOT/combined.json
