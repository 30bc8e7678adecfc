#!/usr/bin/env bash
# The README's main job, on the embedded data, one stage after another; ends with `dotsllm report`'s
# table of what each stage achieved and its wall time (kept in $JOB, default outputs/main_job/).
#   data pipeline  the sample corpus → filtered, deduplicated token shards and a SentencePiece tokenizer
#   pretraining    dots1-tiny on those shards (every run also writes its plots, RUN_DIR/plots/*.png)
#   SFT            the digit-copy demo set plus 30 demonstrations of the GRPO task (the middle digit of a
#                  three-digit number); held-out exact match of the copy tasks before and after
#   GRPO           the middle digit, from the SFT checkpoint, with an exact-match verifier; held-out greedy
#                  accuracy, sampled accuracy and pass@8 before and after (200 numbers no training data holds)
#   export to HF   the GRPO checkpoint as a Dots1ForCausalLM folder with the tokenizer
#   evaluation     the held-out set on that folder (transformers) and on the checkpoint (dotsllm)
# SEED (default 1) seeds every training stage; THREADS (default 2) is the torch/OMP thread count; RUNS
# (default runs) and JOB (default outputs/main_job) are where the runs and the job's results go.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
SEED=${SEED:-1}
export OMP_NUM_THREADS=${THREADS:-2}
RUNS=${RUNS:-runs}
JOB=${JOB:-outputs/main_job}
TOK=outputs/data_sample/tokenizer.model
COPY_TASK=dotsllm/posttrain/sft/demo/heldout_eval.jsonl
TASK=outputs/middle_digit
HELDOUT=(--tasks $TASK/heldout.jsonl --tokenizer $TOK --chat --max-new-tokens 8 --batch-size 100)
SAMPLED=(--samples 8 --temperature 1.0 --pass-k 8)  # pass@1 is the sampled accuracy, reported anyway

data_pipeline_stage() {
  data_pipeline run configs/data/sample.yaml
}
pretraining() {
  dotsllm pretrain configs/pretrain/dots1-tiny.yaml run_dir=$RUNS/dots1-tiny training.seed=$SEED \
    data.blend=[outputs/data_sample/tokens] data.tokenizer=$TOK
}
sft() {
  python -m dotsllm.posttrain.grpo.middle_digit $TASK
  dotsllm eval $RUNS/dots1-tiny --tasks $COPY_TASK --tokenizer $TOK --chat --output $JOB/eval_pretrained.json
  dotsllm sft configs/sft/dots1-tiny.yaml run_dir=$RUNS/dots1-tiny-sft training.seed=$SEED \
    checkpoint.load_from=$RUNS/dots1-tiny
  dotsllm eval $RUNS/dots1-tiny-sft --tasks $COPY_TASK --tokenizer $TOK --chat --output $JOB/eval_sft.json
}
grpo() {
  dotsllm eval $RUNS/dots1-tiny-sft "${HELDOUT[@]}" "${SAMPLED[@]}" --output $JOB/eval_before_grpo.json
  dotsllm grpo configs/grpo/dots1-tiny.yaml run_dir=$RUNS/dots1-tiny-grpo training.seed=$SEED \
    checkpoint.load_from=$RUNS/dots1-tiny-sft
  dotsllm eval $RUNS/dots1-tiny-grpo "${HELDOUT[@]}" "${SAMPLED[@]}" --output $JOB/eval_after_grpo.json
}
export_hf() {
  rm -rf $JOB/hf
  dotsllm export-hf $RUNS/dots1-tiny-grpo $JOB/hf --tokenizer $TOK
}
evaluation() {
  dotsllm eval $JOB/hf "${HELDOUT[@]}" --output $JOB/eval_hf.json
  dotsllm eval $RUNS/dots1-tiny-grpo "${HELDOUT[@]}" --output $JOB/eval_grpo.json
}

mkdir -p $JOB
: > $JOB/stages.tsv
stage() {  # stage NAME FUNCTION: run it, and append its wall time to stages.tsv
  local start=$SECONDS
  echo "=== $1"
  "$2"
  printf '%s\t%s\n' "$1" "$((SECONDS - start))" >> $JOB/stages.tsv
}
stage "data pipeline" data_pipeline_stage
stage "pretraining" pretraining
stage "SFT" sft
stage "GRPO" grpo
stage "export to HF" export_hf
stage "evaluation" evaluation
dotsllm report --times $JOB/stages.tsv --data outputs/data_sample --pretrain $RUNS/dots1-tiny \
  --sft $RUNS/dots1-tiny-sft --sft-eval $JOB/eval_pretrained.json $JOB/eval_sft.json \
  --grpo $RUNS/dots1-tiny-grpo --grpo-eval $JOB/eval_before_grpo.json $JOB/eval_after_grpo.json \
  --hf $JOB/hf --export-eval $JOB/eval_grpo.json $JOB/eval_hf.json \
  --output $JOB/report.json
