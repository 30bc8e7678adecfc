"""``dotsllm grpo`` end to end on dots1-tiny (fp32, CPU): a run whose reward functions raise, hang and
return NaN finishes, counting them; a killed run resumes bit-identically; TP=2 and EP=2 runs give the
single process's rollouts and losses."""

import json
import os
import signal
from pathlib import Path

import pytest

from pretrain_runs import finish, metrics, run, start, wait_for

GRPO_CONFIG = Path(__file__).parents[2] / "configs" / "grpo" / "dots1-tiny.yaml"
SMALL_VOCAB = 320
GROUP = 4
FAULTS = {2: "raise", 5: "hang", 9: "nan"}  # train records whose rewards fail
MALFORMED = [
    "{not json",
    json.dumps({"answer": "3"}),
    json.dumps({"prompt": 5, "answer": "3"}),
    json.dumps({"prompt": [{"role": "robot", "content": "hi"}], "answer": "3"}),
    json.dumps({"prompt": "What is " + "one plus " * 30 + "one?", "answer": "31"}),
    "[1, 2]",
]
STEPS = 4
COMPARED = ("reward_mean", "reward/by_field", "reward/parity", "rollout_checksum", "groups_kept", "loss", "pg_loss",
            "kl", "entropy", "grad_norm", "advantage_std", "logprob_mismatch_max")  # fmt: skip


def problem(i: int) -> dict:
    a, b = i % 7 + 1, i % 5 + 2
    return {"prompt": f"What is {a} plus {b}?", "answer": str(a + b)}


@pytest.fixture(scope="module")
def task(tmp_path_factory, megatron_world):
    """Prompt files (12 train records, 3 with faults, and malformed lines), a tokenizer with the chat
    tokens, and a dots1-tiny checkpoint to start from."""
    import dataclasses

    import torch

    from dotsllm.model import Dots1ModelConfig
    from dotsllm.model.builder import build_model
    from dotsllm.tokenizer import train_sentencepiece
    from dotsllm.training.checkpoint import write_checkpoint
    from dotsllm.training.checkpoint_state import CheckpointMeta

    root = tmp_path_factory.mktemp("grpo_task")
    records = [{**problem(i), **({"fault": FAULTS[i]} if i in FAULTS else {})} for i in range(12)]
    lines = [json.dumps(r) for r in records]
    lines[4:4] = MALFORMED
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    (root / "heldout.jsonl").write_text("".join(json.dumps(problem(i)) + "\n" for i in range(20, 24)))
    texts = [problem(i)["prompt"] + f" The answer is {i}." for i in range(200)]
    tokenizer = train_sentencepiece(texts, str(root / "sp"), vocab_size=300, threads=1)
    torch.manual_seed(0)
    cfg = Dots1ModelConfig.from_preset("dots1-tiny")
    model = build_model(cfg, backend="local")
    meta = CheckpointMeta(kind="imported", step=0, tokens_seen=0, model=dataclasses.asdict(cfg), trainer="import")
    write_checkpoint(root / "start", {"model": model.sharded_state_dict()}, meta.as_dict())
    small = dataclasses.replace(cfg, vocab_size=SMALL_VOCAB)  # the tokenizer's 300 ids and a few more
    model = build_model(small, backend="local")
    meta = CheckpointMeta(kind="imported", step=0, tokens_seen=0, model=dataclasses.asdict(small), trainer="import")
    write_checkpoint(root / "start_small_vocab", {"model": model.sharded_state_dict()}, meta.as_dict())
    return root, tokenizer


def overrides(task, run_dir, *extra):
    root, tokenizer = task
    return [
        f"run_dir={run_dir}", f"tokenizer={tokenizer}", f"checkpoint.load_from={root / 'start'}",
        "checkpoint.save_every_steps=2", "checkpoint.keep_last=2",
        f"prompts.path={root / 'train.jsonl'}", "prompts.system=null", f"eval.path={root / 'heldout.jsonl'}",
        "training.eval_interval=0", "eval.samples=0",
        f"training.steps={STEPS}", "training.seq_length=32", "training.micro_batch_size=4",
        f"rollout.group_size={GROUP}", "rollout.prompts_per_step=3", "rollout.max_new_tokens=8",
        "rewards.functions=[{function: 'faulty_rewards:by_field'}, {function: 'faulty_rewards:parity', weight: 0.5}, "
        "{function: math_accuracy}]",
        "rewards.accuracy=math_accuracy", "rewards.timeout_s=1", "rewards.workers=2", "dynamic_sampling.reward=parity",
        "updates.mini_batches=2", "dynamic_sampling.max_tries=2", "objective.kl_beta=0.05",
        "lr_schedule.peak_lr=1e-3", "logging.wandb_mode=disabled", *extra,
    ]  # fmt: skip


RUN_ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}


def grpo(nproc, task, run_dir, *extra, timeout_s=300):
    run(nproc, overrides(task, run_dir, *extra), run_dir.parent / f"{run_dir.name}.log", timeout_s=timeout_s,
        command=("grpo", str(GRPO_CONFIG)), env=RUN_ENV)  # fmt: skip


def step_records(run_dir: Path) -> dict[int, dict]:
    """The last record of each step (a resumed run logs the steps after its checkpoint again)."""
    return {r["step"]: r for r in metrics(run_dir) if "reward_mean" in r}


@pytest.fixture(scope="module")
def reference(task, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    grpo(1, task, run_dir)
    return run_dir


def test_faulty_rewards_are_counted_and_the_run_finishes(reference):
    records = step_records(reference)
    assert sorted(records) == list(range(1, STEPS + 1))
    failures = {kind: sum(r["reward_failures"]["by_field"][kind] for r in records.values()) for kind in ("errors", "timeouts", "nonfinite")}
    # every record is drawn (12 prompts, >= 12 draws), each fault fails all G samples of its group
    assert all(count >= GROUP and count % GROUP == 0 for count in failures.values()), failures
    assert sum(r["reward_failed_samples"] for r in records.values()) == sum(failures.values())
    assert records[STEPS]["reward_failures_total"] == sum(failures.values())
    assert all(r["reward_failures"]["parity"] == {"errors": 0, "timeouts": 0, "nonfinite": 0} for r in records.values())
    for r in records.values():
        assert r["updates"] == 2 and r["updates_applied"] == 2  # two mini-batches
        assert r["first_update_ratio_dev"] == 0.0  # old log-probs = the first update's own: ρ = 1 exactly
        assert r["logprob_mismatch_max"] < 1e-5  # router replay: the training forward sees the rollout's experts
        # dynamic sampling: every group with unequal parity rewards is kept, the others dropped and redrawn
        assert r["groups_kept"] == r["groups_drawn"] - round(r["zero_variance_share"] * r["groups_drawn"])
        assert r["groups_kept"] == 3 or r["rollout_tries"] == 2
        assert r["samples_trained"] == GROUP * r["groups_kept"] - r["reward_masked_samples"] and r["kl"] >= 0
        assert r["expert_bias_update_rate"] == 0.0 and r["router_replay"] is True
    assert records[STEPS]["kl"] > 0  # the policy moved away from the reference
    heldout = [r for r in metrics(reference) if "heldout_accuracy" in r]
    assert [(r["step"], r["heldout_samples"]) for r in heldout] == [(0, 4), (STEPS, 4)]
    errors = [json.loads(line) for line in (reference / "prompt_errors.jsonl").read_text().splitlines()]
    assert [e["reason"].split(":")[0] for e in errors] == ["not JSON", "no prompt", "bad prompt", "bad messages", "too long", "not an object"]
    assert [int(e["source"].rsplit(":", 1)[1]) for e in errors] == [5, 6, 7, 8, 9, 10]
    assert (reference / "plots" / "grpo.png").is_file()
    meta = json.loads((reference / "checkpoints" / f"step_{STEPS:08d}" / "dotsllm.json").read_text())
    assert meta["trainer"] == "grpo" and meta["train_state"]["consumed_samples"] >= 12


def test_killed_run_resumes_bit_identically(task, reference, tmp_path):
    run_dir = tmp_path / "killed"
    log = tmp_path / "killed.log"
    proc = start(1, overrides(task, run_dir), log, command=("grpo", str(GRPO_CONFIG)), env=RUN_ENV)
    wait_for(lambda: max(step_records(run_dir), default=0) >= 3, proc, log, timeout_s=300)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    grpo(1, task, run_dir)
    assert [r["step"] for r in metrics(run_dir) if "reward_mean" in r].count(3) == 2  # step 3 ran again
    got, want = step_records(run_dir), step_records(reference)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in want:
        for key in COMPARED:
            assert got[step][key] == want[step][key], f"step {step}: {key}"


LAYOUTS = {"tp2": ["parallel.tp=2", "parallel.etp=2"], "ep2": ["parallel.ep=2"]}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_parallel_layout_gives_the_single_process_rollouts_and_losses(task, reference, tmp_path, layout):
    grpo(2, task, tmp_path / layout, *LAYOUTS[layout], "training.steps=2", "eval.path=null")
    got, want = step_records(tmp_path / layout), step_records(reference)
    assert sorted(got) == [1, 2]
    for step in (1, 2):
        for key in ("rollout_checksum", "reward_mean", "reward/by_field", "reward/parity", "groups_kept"):
            assert got[step][key] == want[step][key], f"step {step}: {key}"
        for key in ("loss", "pg_loss", "kl", "entropy", "grad_norm"):  # float order (TP reductions): 1.4e-5 seen
            assert got[step][key] == pytest.approx(want[step][key], rel=5e-5, abs=1e-7), f"step {step}: {key}"


def test_prefix_grouping_gives_the_standard_steps(task, tmp_path):
    """``training.prefix_grouping`` (each group one row, its prompt encoded once) runs the same steps:
    the same rollouts and rewards, and losses, KL (the reference forward is grouped too), entropy and
    grad norms to float tolerance; it logs its rows, peak memory and train-step time. With G = 1 it is
    switched off, and the run says so."""
    common = ("training.steps=2", "eval.path=null", "updates.mini_batches=1", "moe.aux_loss_coeff=0")
    grpo(1, task, tmp_path / "standard", *common)
    grpo(1, task, tmp_path / "grouped", *common, "training.prefix_grouping=true")
    standard, grouped = step_records(tmp_path / "standard"), step_records(tmp_path / "grouped")
    assert sorted(standard) == sorted(grouped) == [1, 2]
    for step in (1, 2):
        want, got = standard[step], grouped[step]
        for key in ("rollout_checksum", "reward_mean", "groups_kept", "samples_trained"):
            assert got[key] == want[key], f"step {step}: {key}"
        for key in ("loss", "pg_loss", "kl", "entropy", "grad_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), f"step {step}: {key}"
        # rollout vs log-prob pass: float noise either way (grouped rows take another attention kernel)
        assert max(want["logprob_mismatch_max"], got["logprob_mismatch_max"]) < 1e-5, f"step {step}"
        assert (want["prefix_grouping"], got["prefix_grouping"]) == (False, True)
        assert (want["training_rows"], got["training_rows"]) == (want["samples_trained"], got["groups_kept"])
        assert got["peak_memory_kind"] == "cpu_max_rss" and got["peak_memory_gib"] > 0 and got["train_step_s"] > 0
    grpo(1, task, tmp_path / "single", "training.steps=1", "eval.path=null", "rollout.group_size=1",
         "moe.aux_loss_coeff=0", "training.prefix_grouping=true")  # fmt: skip
    assert "prefix grouping off: rollout.group_size 1 shares no prompt" in (tmp_path / "single.log").read_text()


LEARNING_STEPS = 6


@pytest.mark.parametrize("rows", ["standard", "prefix_grouped"])
def test_grpo_learns_to_raise_a_reward_it_can_reach(task, tmp_path, rows):
    """GRPO moves the policy the right way: from a random dots1-tiny (a vocabulary of 320), the share of a
    completion's tokens among the 32 lowest ids (1/10 at first) rises past 0.3 in 6 steps; with the
    gradient's sign flipped it falls instead (the loss value and ratio at ρ = 1 would not tell)."""
    root, tokenizer = task
    grouped = ["training.prefix_grouping=true", "moe.aux_loss_coeff=0"] if rows == "prefix_grouped" else []
    run_dir = tmp_path / rows
    run(1, [
        f"run_dir={run_dir}", f"tokenizer={tokenizer}", f"checkpoint.load_from={root / 'start_small_vocab'}",
        "checkpoint.save_every_steps=0", f"prompts.path={root / 'heldout.jsonl'}", "prompts.system=null",
        "eval.path=null", f"training.steps={LEARNING_STEPS}", "training.seq_length=48", "training.micro_batch_size=16",
        "rollout.group_size=8", "rollout.prompts_per_step=4", "rollout.max_new_tokens=16", "rollout.temperature=1.0",
        "rewards.functions=[{function: 'learning_rewards:share_below', kwargs: {below: 32}}]", "rewards.accuracy=null",
        "dynamic_sampling.enabled=false", "updates.mini_batches=1", "objective.kl_beta=0",
        "lr_schedule.peak_lr=1e-2", "lr_schedule.warmup_steps=0", "logging.wandb_mode=disabled", *grouped,
    ], run_dir.parent / f"{rows}.log", command=("grpo", str(GRPO_CONFIG)), env=RUN_ENV)  # fmt: skip
    rewards = [step_records(run_dir)[step]["reward_mean"] for step in range(1, LEARNING_STEPS + 1)]
    assert rewards[-1] > 0.3 > 0.2 > rewards[0], rewards  # measured 0.09 → 0.53; sign flipped 0.09 → 0.02
