"""lm-evaluation-harness, a standard evaluator, on a folder from ``dotsllm export-hf``: with the chat
template, greedy, its generations at batch size 8 (prompts of different lengths, padded on the left)
equal those at batch size 1 and ``dotsllm eval --chat``'s predictions, and the scores agree.

What this guards: transformers stops a row of a batch only at the ids of ``generation_config.json``
(``eos_token_id``) and fills it with ``pad_token_id`` until the whole batch stops. An export without
them lets a row that answered first run on past ``<|endofresponse|>`` while the others finish; lm-eval
decodes with ``skip_special_tokens``, so that run-on shows up in the row's text.
"""

import json
import os
import random
import subprocess
import sys

import pytest

# Before megatron: the CPU layer for megatron-core breaks importing transformers.generation afterwards.
from transformers import AutoTokenizer, GenerationConfig

from distributed.dist_launch import REPO
from dotsllm import cli
from dotsllm.chat_template import END_RESPONSE
from dotsllm.tokenizer import CHAT_TOKENS
from pretrain_runs import finish, start

pytest.importorskip("lm_eval", reason="lm-evaluation-harness: pip install -e '.[test]'")

SFT_CONFIG = REPO / "configs" / "sft" / "dots1-tiny.yaml"
# A reply per kind of request, whatever words follow the kind: learned in a few seconds, and replies
# of 1 to ~20 tokens, so the rows of a batch stop at different steps.
ANSWERS = {
    "color": "blue",
    "animal": "a small grey cat",
    "count": "one two three four five six",
    "greet": "good morning to you and your whole family",
    "agree": "yes",
    "weather": "rain and wind",
}
WORDS = "the old farmer saw three boats near a quiet harbour with red sails in morning light".split()
MAX_NEW_TOKENS = 24
TASK = "dots_chat"


def request(rng: random.Random, kind: str) -> str:
    return " ".join([kind, *rng.choices(WORDS, k=rng.randint(0, 5))])  # prompts of different lengths


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """dots1-tiny after ~150 SFT steps (~25 s) on 600 synthetic requests, with its SentencePiece
    tokenizer (the chat tokens reserved): (run dir, tokenizer, task file of 24 unseen requests)."""
    from dotsllm.tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("lm_eval")
    kinds, rng = list(ANSWERS), random.Random(0)
    conversations = [
        [{"role": "user", "content": request(rng, kind)}, {"role": "assistant", "content": ANSWERS[kind]}]
        for kind in (kinds[i % len(kinds)] for i in range(600))
    ]
    (root / "train.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    texts = [m["content"] for c in conversations for m in c] + ["You are a helpful assistant."] * 20
    tokenizer = train_sentencepiece(texts, str(root / "sp"), vocab_size=300, threads=1)
    rng = random.Random(1)
    samples = [{"prompt": request(rng, kind), "answer": ANSWERS[kind]} for kind in kinds * 4]
    (root / f"{TASK}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))

    run_dir = root / "run"
    overrides = [
        f"run_dir={run_dir}", "model=dots1-tiny", f"data.sources=[{{path: {root / 'train.jsonl'}}}]", "data.valid=[]",
        f"data.tokenizer={tokenizer}", "data.epochs=1", "training.seq_length=128", "training.micro_batch_size=2",
        "training.global_batch_size=2", "training.eval_interval=0", "checkpoint.load_from=null",
        "checkpoint.save_every_steps=0", "logging.log_interval=50",
    ]  # fmt: skip
    finish(start(1, overrides, root / "sft.log", command=("sft", str(SFT_CONFIG))), root / "sft.log", timeout_s=300)
    return run_dir, tokenizer, root / f"{TASK}.jsonl"


@pytest.fixture(scope="module")
def exported(chat_model, megatron_world, tmp_path_factory):
    run_dir, tokenizer, _ = chat_model
    out = tmp_path_factory.mktemp("hf") / "dots1-tiny-chat"
    assert cli.main(["export-hf", str(run_dir), str(out), "--tokenizer", tokenizer]) == 0
    return out


def test_export_declares_stop_and_pad_tokens(exported):
    """generation_config.json and config.json carry the stop and pad ids; the tokenizer knows them."""
    tokenizer = AutoTokenizer.from_pretrained(exported)
    stop, eod = tokenizer.convert_tokens_to_ids([END_RESPONSE, "</s>"])  # </s>: the SentencePiece eos
    written = json.loads((exported / "generation_config.json").read_text())
    assert written == {"bos_token_id": None, "eos_token_id": [stop, eod], "pad_token_id": eod}
    generation = GenerationConfig.from_pretrained(exported)
    assert (generation.eos_token_id, generation.pad_token_id, generation.bos_token_id) == ([stop, eod], eod, None)
    config = json.loads((exported / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"], config["bos_token_id"]) == (stop, eod, None)

    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == (END_RESPONSE, "</s>", None)
    assert set(tokenizer.convert_tokens_to_ids(list(CHAT_TOKENS))) <= set(tokenizer.all_special_ids)
    answer = tokenizer("rain and wind", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode([*answer, stop, eod, eod], skip_special_tokens=True) == "rain and wind"


def lm_eval(folder, task_file, batch_size, out):
    """``lm_eval run`` (its CLI, offline) on the HF ``folder`` with the chat template: {doc_id: generation}, score."""
    tasks = out / "tasks"
    tasks.mkdir(parents=True)
    yaml = f"""\
task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {task_file}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["{END_RESPONSE}"]
  do_sample: false
  max_gen_toks: {MAX_NEW_TOKENS}
metric_list:
  - metric: exact_match  # dotsllm eval's "exact": surrounding whitespace aside
    regexes_to_ignore: ["^\\\\s+", "\\\\s+$"]
"""
    (tasks / f"{TASK}.yaml").write_text(yaml)
    env = {
        **os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
        "HF_DATASETS_CACHE": str(out / "datasets"), "PYTHONWARNINGS": "ignore",
    }  # fmt: skip
    command = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={folder}",
        "dtype=float32", "--tasks", TASK, "--include_path", str(tasks), "--apply_chat_template", "--batch_size", str(batch_size),
        "--device", "cpu", "--output_path", str(out / "results"), "--log_samples",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (samples,) = (out / "results").rglob(f"samples_{TASK}_*.jsonl")
    (results,) = (out / "results").rglob("results_*.json")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    generations = {row["doc_id"]: row["resps"][0][0] for row in rows}
    return generations, json.loads(results.read_text())["results"][TASK]["exact_match,none"]


def test_lm_eval_batched_equals_unbatched_equals_dotsllm_eval(chat_model, exported, tmp_path):
    run_dir, tokenizer, task = chat_model
    args = ["eval", str(run_dir), "--tasks", str(task), "--tokenizer", tokenizer, "--chat"]
    assert cli.main([*args, "--max-new-tokens", str(MAX_NEW_TOKENS), "--output", str(tmp_path / "dotsllm.json")]) == 0
    ours = json.loads((tmp_path / "dotsllm.json").read_text())["tasks"][TASK]
    predictions = [p["prediction"] for p in ours["predictions"]]
    assert 0 < ours["correct"], predictions  # the model learned something: the scores below mean something

    # lm-eval's batches (prompts sorted longest first): some hold prompts of different lengths (left
    # padding) and replies of different lengths (rows that stop before the others).
    hf = AutoTokenizer.from_pretrained(exported)
    samples = [json.loads(line) for line in task.read_text().splitlines()]
    prompts = [
        hf.apply_chat_template([{"role": "user", "content": s["prompt"]}], tokenize=False, add_generation_prompt=True)
        for s in samples
    ]
    order = sorted(range(len(samples)), key=lambda i: (-len(hf(prompts[i])["input_ids"]), prompts[i]))
    batches = [order[start : start + 8] for start in range(0, len(order), 8)]
    prompt_lengths = [{len(hf(prompts[i])["input_ids"]) for i in batch} for batch in batches]
    reply_lengths = [{len(hf(predictions[i])["input_ids"]) for i in batch} for batch in batches]
    assert any(len(p) > 1 and len(r) > 1 for p, r in zip(prompt_lengths, reply_lengths))

    one, one_score = lm_eval(exported, task, 1, tmp_path / "bs1")
    eight, eight_score = lm_eval(exported, task, 8, tmp_path / "bs8")
    in_order = lambda generations: [generations[i] for i in range(len(samples))]  # noqa: E731
    assert in_order(one) == predictions
    assert in_order(eight) == predictions
    assert one_score == eight_score == pytest.approx(ours["accuracy"])
