"""dotsllm checkpoints ⇄ HF folders, and evaluation: an EP=2 pretraining run exported to transformers
(same logits and greedy generations), imported back bit for bit, a transformers model trained from,
perplexity and exact match checked against transformers."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

# Before megatron: the CPU layer for megatron-core breaks importing transformers.generation afterwards.
from transformers import Dots1Config, Dots1ForCausalLM

from distributed.dist_launch import REPO, free_port
from dotsllm import cli
from pretrain_runs import TINY_CONFIG, run, train_records
from shards import write_shard

VOCAB, EOD = 8192, 0
BATCH = torch.randint(1, VOCAB, (2, 20), generator=torch.Generator().manual_seed(3))


def pretrain_overrides(run_dir, shard, *extra):
    return [
        f"run_dir={run_dir}", f"data.blend=[[1.0,{shard}]]", f"data.vocab_size={VOCAB}", f"data.eod_id={EOD}",
        "training.eval_interval=0", "checkpoint.save_every_steps=0", "checkpoint.milestone_every_tokens=0",
        "logging.log_interval=1", "logging.wandb_mode=disabled", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    return write_shard(tmp_path_factory.mktemp("shards") / "train", 300, VOCAB, EOD)


@pytest.fixture(scope="module")
def trained(shard, tmp_path_factory):
    """Two steps of dots1-tiny with EP=2 on 2 processes; its checkpoint exported through the CLI."""
    run_dir = tmp_path_factory.mktemp("ep2")
    run(2, pretrain_overrides(run_dir, shard, "parallel.ep=2", "training.train_tokens=2048"), run_dir / "run.log")
    ckpt = run_dir / "checkpoints" / "step_00000002"
    out = tmp_path_factory.mktemp("hf") / "dots1-tiny"
    return run_dir, ckpt, out


@pytest.fixture(scope="module")
def exported(trained, megatron_world):
    from dotsllm.convert.checkpoint_io import load_checkpoint_model

    _, ckpt, out = trained
    assert cli.main(["export-hf", str(ckpt), str(out), "--max-shard-size", "1MB"]) == 0
    (model,), cfg = load_checkpoint_model(ckpt)
    hf = Dots1ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    return model, cfg, hf


def megatron_logits(model, tokens):
    positions = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
    with torch.no_grad():
        return model(tokens, positions, None)


def test_export_of_expert_parallel_run_matches_transformers(trained, exported):
    from dotsllm.inference import GenerationRequest, SamplingParams, generate

    _, _, out = trained
    model, cfg, hf = exported
    assert len(list(out.glob("*.safetensors"))) > 1
    # no tokenizer given: no token ids to declare (test_lm_eval.py: the ones a tokenizer gives)
    assert not (out / "generation_config.json").exists()
    assert "eos_token_id" not in json.loads((out / "config.json").read_text())
    biases = [v for k, v in model.state_dict().items() if k.endswith("router.expert_bias")]
    assert len(biases) == cfg.num_layers - cfg.num_dense_layers and all(b.abs().max() > 0 for b in biases)
    with torch.no_grad():
        diff = (hf(BATCH).logits - megatron_logits(model, BATCH)).abs().max().item()
    assert diff < 1e-4, diff

    expected = hf.generate(BATCH, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[:, 20:]
    greedy = SamplingParams(temperature=0, max_new_tokens=12)
    assert [r.tokens for r in generate(model, [GenerationRequest(row, greedy) for row in BATCH.tolist()])] == (
        expected.tolist()
    )  # KV cache


def test_import_round_trips_the_checkpoint_bit_for_bit(trained, exported, tmp_path):
    from megatron.core import dist_checkpointing

    from dotsllm.training.checkpoint import read_meta

    _, ckpt, out = trained
    imported = tmp_path / "imported"
    assert cli.main(["import-hf", str(out), str(imported)]) == 0
    meta = read_meta(imported)
    assert (meta["kind"], meta["step"], meta["tokens_seen"], meta["has_optimizer"]) == ("imported", 0, 0, False)
    assert meta["model"] == {**read_meta(ckpt)["model"], "name": out.name} and meta["trainer"] == "import"
    assert meta["parallel"] is None and meta["train_state"] == {"step": 0, "consumed_samples": 0, "tokens_seen": 0, "nonfinite_skipped": 0}

    original = dist_checkpointing.load_plain_tensors(str(ckpt))
    again = {
        k: v for k, v in dist_checkpointing.load_plain_tensors(str(imported)).items() if isinstance(v, torch.Tensor)
    }
    model_keys = {k for k in original if k.startswith(("embedding.", "decoder.", "output_layer."))}
    assert again.keys() == model_keys
    assert any("experts.experts" in k for k in again) and any(k.endswith("expert_bias") for k in again)
    assert [k for k in again if not torch.equal(again[k], original[k])] == []


def test_pretraining_starts_from_an_imported_transformers_model(megatron_world, shard, tmp_path):
    """The trainer loads the import (no optimizer state) and its first loss is transformers' on that batch."""
    from dotsllm.convert import megatron_to_hf
    from dotsllm.model import Dots1ModelConfig
    from dotsllm.recipes.pretrain import PRETRAIN, PretrainConfig
    from dotsllm.train import Trainer

    cfg = Dots1ModelConfig.from_preset("dots1-tiny")
    torch.manual_seed(5)
    hf = Dots1ForCausalLM(Dots1Config(**cfg.hf_config_dict())).eval()
    with torch.no_grad():
        for name, tensor in hf.state_dict().items():
            if name.endswith("e_score_correction_bias"):
                tensor.copy_(torch.randn_like(tensor) * 0.1)
    hf.save_pretrained(tmp_path / "hf")
    assert cli.main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "imported")]) == 0

    run_dir = tmp_path / "run"
    config = PretrainConfig.load(TINY_CONFIG, pretrain_overrides(
        run_dir, shard, f"checkpoint.load_from={tmp_path / 'imported'}", "training.train_tokens=1024",
        "training.micro_batch_size=8",  # the step's 8 samples in one micro-batch
    ))  # fmt: skip
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        trainer = Trainer(PRETRAIN, config)
        loaded = dict(megatron_to_hf(trainer.model_chunks[0].module.state_dict().items(), cfg))
        expected = {k: v for f in (tmp_path / "hf").glob("*.safetensors") for k, v in load_file(f).items()}
        assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
        batch = next(trainer.data.microbatches(0))
        try:
            trainer.train()
        finally:
            trainer.metrics.close()
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    with torch.no_grad():
        logits = hf(batch["tokens"], position_ids=batch["position_ids"]).logits
    per_token = F.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="none")
    hf_loss = (per_token * batch["loss_mask"]).sum() / batch["loss_mask"].sum()
    records = train_records(run_dir)
    assert sorted(records) == [1]
    assert records[1]["loss"] == pytest.approx(hf_loss.item(), abs=1e-5)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    return write_shard(tmp_path_factory.mktemp("heldout") / "heldout", 6, VOCAB, EOD, seed=7)


def test_perplexity_equals_transformers_mean_token_loss(trained, exported, heldout, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    _, ckpt, _ = trained
    _, _, hf = exported
    docs = IndexedDataset(heldout)  # kept alive: its documents are views of its memory map
    stream = torch.from_numpy(np.concatenate([doc.astype(np.int64) for doc in docs]))
    seq = 64

    def evaluate(*extra):
        out = tmp_path / "ppl.json"
        args = [
            "eval",
            str(ckpt),
            "--tasks",
            "perplexity",
            "--data",
            heldout,
            "--seq-len",
            str(seq),
            "--batch-size",
            "3",
        ]
        assert cli.main([*args, *extra, "--output", str(out)]) == 0
        return json.loads(out.read_text())["tasks"]["perplexity"]

    loss_sum, windows = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(stream) - 1, seq):
            window = stream[start : start + seq + 1]
            logits = hf(window[None, :-1]).logits[0]
            loss_sum += F.cross_entropy(logits, window[1:], reduction="sum").item()
            windows += 1
    result = evaluate()
    assert result["tokens"] == len(stream) - 1 and windows > 3
    assert result["mean_loss"] == pytest.approx(loss_sum / (len(stream) - 1), rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(loss_sum / (len(stream) - 1)), rel=1e-6)
    assert evaluate("--max-samples", "2")["tokens"] == 2 * seq


@pytest.fixture(scope="module")
def own_task(exported, tmp_path_factory):
    """A task of the model's own greedy continuations (as transformers generates them), every third one
    made wrong: (task file, tokenizer.json, which samples are correct)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    _, _, hf = exported
    tmp_path = tmp_path_factory.mktemp("own_task")
    words = {"<|endoftext|>": EOD, **{f"w{i}": i for i in range(1, VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))

    lines, expected = [], []
    for i, length in enumerate([3, 5, 5, 8, 8, 8]):
        prompt = torch.randint(1, VOCAB, (1, length), generator=torch.Generator().manual_seed(i))
        continuation = hf.generate(prompt, max_new_tokens=4, do_sample=False, eos_token_id=EOD, pad_token_id=EOD)
        answer = [f"w{t}" for t in continuation[0, length:].tolist() if t != EOD]
        if i % 3 == 2:  # wrong: another last word
            answer[-1] = f"w{int(answer[-1][1:]) % (VOCAB - 1) + 1}"
        expected.append(i % 3 != 2)
        lines.append(json.dumps({"prompt": " ".join(f"w{t}" for t in prompt[0].tolist()), "answer": " ".join(answer)}))
    (tmp_path / "own.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "own.jsonl", tmp_path / "tokenizer.json", expected


def test_exact_match_scores_own_greedy_continuations(trained, own_task, tmp_path):
    _, ckpt, _ = trained
    task, tokenizer, expected = own_task
    out = tmp_path / "gen.json"
    args = ["eval", str(ckpt), "--tasks", str(task), "--tokenizer", str(tokenizer)]
    assert cli.main([*args, "--batch-size", "2", "--output", str(out)]) == 0
    result = json.loads(out.read_text())["tasks"]["own"]
    assert (result["correct"], result["samples"], result["accuracy"]) == (4, 6, 4 / 6)
    assert [p["correct"] for p in result["predictions"]] == expected


SAMPLED = ["--samples", "3", "--temperature", "0.05", "--pass-k", "1", "2", "3", "--seed", "7"]


def test_eval_of_the_exported_folder_by_transformers_equals_the_checkpoints(trained, own_task, tmp_path):
    """`dotsllm eval HF_FOLDER` (transformers' generate, prompts of one length batched) gives the
    checkpoint's predictions; sampled (transformers' forward, the same seeded sampler), its samples."""
    _, ckpt, out = trained
    task, tokenizer, expected = own_task
    results = {}
    for name, model in (("checkpoint", ckpt), ("hf", out)):
        args = ["eval", str(model), "--tasks", str(task), "--tokenizer", str(tokenizer), "--batch-size", "4"]
        assert cli.main([*args, *SAMPLED, "--output", str(tmp_path / f"{name}.json")]) == 0
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())["tasks"]["own"]
    assert results["hf"] == results["checkpoint"] and results["hf"]["correct"] == 4
    assert [p["correct"] for p in results["hf"]["predictions"]] == expected
    sampled = results["hf"]["sampled"]
    assert sampled["samples"] == 3 and list(sampled["pass_at_k"]) == ["1", "2", "3"]
    assert all(len(p["sampled_predictions"]) == 3 for p in results["hf"]["predictions"])
    with pytest.raises(SystemExit, match="perplexity needs a dotsllm checkpoint"):
        cli.main(["eval", str(out), "--tasks", "perplexity", "--data", "x"])


def test_math_score_finds_the_boxed_answer():
    from dotsllm.evaluation.generation import score_predictions

    predictions, answers = ["3 + 4 = 7. \\boxed{7}", "7 + 1 = 7. \\boxed{8}", " 7 ", "seven"], ["7"] * 4
    assert score_predictions(predictions, answers, "math") == [True, False, True, False]
    assert score_predictions(predictions, answers, "exact") == [False, False, True, False]


def test_eval_under_torchrun_with_expert_parallelism_matches_one_process(trained, heldout, own_task, tmp_path):
    """`dotsllm eval --ep 2` on two processes (data-parallel ranks sharing windows, prompts and
    samples): the same results, samples included."""
    _, ckpt, _ = trained
    task, tokenizer, _ = own_task
    args = [
        "eval", str(ckpt), "--tasks", "perplexity", str(task), "--tokenizer", str(tokenizer), "--data", heldout,
        "--seq-len", "48", "--batch-size", "2", *SAMPLED,
    ]  # fmt: skip
    assert cli.main([*args, "--output", str(tmp_path / "one.json")]) == 0
    torchrun = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}", "-m", "dotsllm.cli",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*torchrun, *args, "--ep", "2", "--output", str(tmp_path / "ep2.json")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one, ep2 = (json.loads((tmp_path / f"{name}.json").read_text())["tasks"] for name in ("one", "ep2"))
    assert ep2["own"] == one["own"] and one["own"]["correct"] == 4 and "sampled" in one["own"]
    assert ep2["perplexity"]["tokens"] == one["perplexity"]["tokens"] > 0
    assert ep2["perplexity"]["mean_loss"] == pytest.approx(one["perplexity"]["mean_loss"], rel=1e-6)


def test_ckpt_list_shows_the_runs_checkpoints(trained, capsys):
    run_dir, ckpt, _ = trained
    assert cli.main(["ckpt", "list", str(run_dir), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["name"], row["step"], row["tokens_seen"], row["kind"], row["latest"]) == (
        ckpt.name,
        2,
        2048,
        "rolling",
        True,
    )
    assert row["bytes"] == sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()) > 1_000_000
    assert cli.main(["ckpt", "list", str(run_dir)]) == 0
    assert ckpt.name in capsys.readouterr().out


def test_import_of_truncated_folder_names_the_tensor_and_writes_nothing(trained, exported, tmp_path):
    _, _, out = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in out.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    victim = index["model.layers.2.mlp.gate.e_score_correction_bias"]
    (broken / victim).write_bytes((out / victim).read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"^model\.layers\.\S+: cannot read .*{victim} \(truncated or corrupt\?\)"):
        cli.main(["import-hf", str(broken), str(tmp_path / "ckpt")])
    assert not (tmp_path / "ckpt").exists()


class _Tripwire:
    """Unpickling this touches a file: proof that a loader executed pickle code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_hf_weights_are_never_unpickled(trained, tmp_path):
    """A HF folder whose only weights are a pickle (pytorch_model.bin) is refused without being read."""
    import pickle

    _, _, out = trained
    folder, marker = tmp_path / "pickled", tmp_path / "code-ran"
    folder.mkdir()
    (folder / "config.json").write_text((out / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": _Tripwire(marker)}))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors.index.json nor model.safetensors"):
        cli.main(["import-hf", str(folder), str(tmp_path / "ckpt")])
    assert not marker.exists() and not (tmp_path / "ckpt").exists()
