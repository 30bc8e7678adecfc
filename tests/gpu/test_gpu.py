"""GPU paths, checked where a CUDA GPU is (``scripts/gpu_check.sh`` runs them all in a few minutes).

Without CUDA every test here is skipped; those that need Transformer Engine (the TE layer spec,
TE's grouped-GEMM experts, THD packed attention) skip naming it where TE is absent. Tolerances are
bf16's: logits within a few percent of their scale, gradients aligned to cosine > 0.99.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
requires_te = pytest.mark.skipif(
    importlib.util.find_spec("transformer_engine") is None,
    reason="needs Transformer Engine (pip install 'dotsllm[gpu]'), not installed here",
)


def tokens(vocab_size: int, batch: int = 2, seq: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(seed)).cuda()


def loss_and_grads(model, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token loss (the MoE aux loss rides along) and every parameter's gradient."""
    model.zero_grad()
    inputs, labels = batch[:, :-1], batch[:, 1:]
    positions = torch.arange(inputs.shape[1], device="cuda").expand_as(inputs)
    loss = model(inputs, positions, None, labels=labels).float().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


def copy_through_checkpoint(source, target, tmp_path: Path) -> None:
    """megatron's checkpoints are layer-spec agnostic: save one model, load into another spec."""
    from megatron.core import dist_checkpointing

    dist_checkpointing.save(source.sharded_state_dict(), str(tmp_path))
    target.load_state_dict(dist_checkpointing.load(target.sharded_state_dict(), str(tmp_path)))


def assert_grads_align(got: dict, want: dict, min_cosine: float = 0.99) -> None:
    assert got.keys() == want.keys()
    for name in want:
        cosine = torch.nn.functional.cosine_similarity(got[name].flatten(), want[name].flatten(), dim=0)
        assert cosine > min_cosine or want[name].norm() < 1e-6, f"{name}: cosine {cosine:.4f}"


def test_cpu_layer_is_off_and_groups_use_nccl(megatron_world):
    from dotsllm.compat import megatron_cpu

    assert megatron_cpu.apply() is False
    assert torch.distributed.get_backend() == "nccl"


def model_pair(cfg, tmp_path: Path, first: dict, second: dict):
    """Two builds of ``cfg`` (``build_model`` keyword sets) on the GPU holding the same weights."""
    from dotsllm.model import build_model

    torch.manual_seed(0)
    a, b = (build_model(cfg, **kwargs).cuda() for kwargs in (first, second))
    copy_through_checkpoint(a, b, tmp_path)
    return a, b


def test_local_spec_in_bf16_tracks_fp32(megatron_world, tiny_config, tmp_path):
    fp32, bf16 = model_pair(tiny_config, tmp_path, {"backend": "local"}, {"backend": "local", "params_dtype": torch.bfloat16})
    batch = tokens(tiny_config.vocab_size)
    loss32, grads32 = loss_and_grads(fp32, batch)
    loss16, grads16 = loss_and_grads(bf16, batch)
    assert abs(loss16 - loss32) < 2e-2 * loss32
    assert_grads_align(grads16, grads32)


@requires_te
def test_te_spec_matches_local_spec(megatron_world, tiny_config, tmp_path):
    """TE layers (fused norm+linear, TE attention, grouped-GEMM experts) against megatron's local ones."""
    bf16 = {"params_dtype": torch.bfloat16}
    local, te = model_pair(tiny_config, tmp_path, {"backend": "local", **bf16}, {"backend": "te", **bf16})
    assert te.config.moe_grouped_gemm
    batch = tokens(tiny_config.vocab_size)
    with torch.no_grad():
        positions = torch.arange(128, device="cuda")[None].expand(2, -1)
        logits_local, logits_te = (m(batch[:, :-1], positions, None).float() for m in (local, te))
    assert (logits_te - logits_local).abs().max() < 3e-2 * logits_local.abs().max()
    loss_local, _ = loss_and_grads(local, batch)
    loss_te, _ = loss_and_grads(te, batch)
    assert abs(loss_te - loss_local) < 1e-2 * loss_local


@requires_te
def test_grouped_gemm_experts_match_sequential_experts(megatron_world, tiny_config, tmp_path):
    te = {"backend": "te", "params_dtype": torch.bfloat16}
    sequential, grouped = model_pair(tiny_config, tmp_path, {**te, "config_overrides": {"moe_grouped_gemm": False}}, te)
    batch = tokens(tiny_config.vocab_size)
    loss_seq, grads_seq = loss_and_grads(sequential, batch)
    loss_grouped, grads_grouped = loss_and_grads(grouped, batch)
    assert abs(loss_grouped - loss_seq) < 1e-2 * loss_seq
    assert len(grads_grouped) < len(grads_seq)  # one grouped weight per layer, not one per expert


@requires_te
def test_thd_packed_attention_equals_each_sequence_alone(megatron_world, tiny_config):
    """Two sequences packed in one THD row (PackedSeqParams, cu_seqlens) through TE attention give each
    sequence's own logits: the form SFT packing uses on a GPU."""
    from megatron.core.packed_seq_params import PackedSeqParams

    from dotsllm.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config, backend="te", params_dtype=torch.bfloat16).cuda().eval()
    a, b = tokens(tiny_config.vocab_size, 1, 48, seed=1)[:, :48], tokens(tiny_config.vocab_size, 1, 80, seed=2)[:, :80]
    cu = torch.tensor([0, 48, 128], dtype=torch.int32, device="cuda")
    packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=80, max_seqlen_kv=80)
    positions = torch.cat([torch.arange(48), torch.arange(80)]).cuda()[None]
    with torch.no_grad():
        together = model(torch.cat([a, b], 1), positions, None, packed_seq_params=packed).float()
        alone = [model(t, torch.arange(t.shape[1], device="cuda")[None], None).float() for t in (a, b)]
    expected = torch.cat(alone, dim=1)
    assert (together - expected).abs().max() < 3e-2 * expected.abs().max()


@pytest.mark.parametrize("backend", ["local", pytest.param("te", marks=requires_te)])
def test_prefix_grouped_row_equals_each_response_alone(megatron_world, tiny_config, backend):
    """A GRPO group row ``[P; R1; R2]`` through the prefix-grouped core attention (its layout as the
    attention mask; on TE the swapped ``TEDotProductAttention``) gives P's and each response's logits of
    ``[P; Ri]`` alone (the same model, plain causal)."""
    from dotsllm.model import build_model
    from dotsllm.model.prefix_grouped_attention import PrefixGroupLayout

    torch.manual_seed(0)
    model = build_model(tiny_config, backend=backend, params_dtype=torch.bfloat16, prefix_grouping=True)
    model = model.cuda().eval()
    p, r1, r2 = (tokens(tiny_config.vocab_size, 1, n, seed=n)[:, :n] for n in (40, 56, 24))
    row = torch.cat([p, r1, r2], 1)
    positions = torch.cat([torch.arange(96), torch.arange(40, 64)]).cuda()[None]
    segments = torch.tensor([0] * 40 + [1] * 56 + [2] * 24, device="cuda")[None]
    with torch.no_grad():
        grouped = model(row, positions, PrefixGroupLayout.from_segment_ids(segments)).float()
        alone = [model(torch.cat([p, r], 1), torch.arange(40 + r.shape[1], device="cuda")[None], None).float()
                 for r in (r1, r2)]  # fmt: skip
    expected = torch.cat([alone[0], alone[1][:, 40:]], dim=1)
    assert (grouped - expected).abs().max() < 3e-2 * expected.abs().max()


def test_bf16_steps_of_dots1_small_log_mfu(tmp_path):
    """`dotsllm pretrain` of dots1-small in bf16 on this GPU: the loss falls and MFU is logged."""
    sys.path.insert(0, str(REPO / "tests"))
    from shards import write_shard

    prefix = write_shard(tmp_path / "shards" / "web", 400, 152064, 0)
    run_dir = tmp_path / "run"
    steps, seq, batch_tokens = 12, 2048, 2048 * 8
    overrides = [
        f"run_dir={run_dir}", "model=dots1-small", f"data.blend=[{prefix}]", "data.vocab_size=152064",
        "data.eod_id=0", "data.split='100,0,0'", f"training.seq_length={seq}", "training.micro_batch_size=4",
        f"training.train_tokens={steps * batch_tokens}", "training.precision=bf16", "training.eval_interval=0",
        "lr_schedule.peak_lr=1e-3", "lr_schedule.warmup_steps=2",
        f"batch_ramp.points=[{{from_tokens: 0, global_batch_tokens: {batch_tokens}}}]",
        "checkpoint.save_every_steps=0", "logging.wandb_mode=disabled",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", "dotsllm.cli", "pretrain", str(REPO / "configs/pretrain/dots1-tiny.yaml"),
                    *overrides], check=True, env=env, cwd=REPO, timeout=400)  # fmt: skip
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert records[-1]["loss"] < records[0]["loss"] and all(r["update_applied"] for r in records)
    mfu = [r["mfu"] for r in records[2:]]
    assert all(0 < m < 1 for m in mfu)
    summary = {
        "dots1_small_bf16": {
            "tokens_per_s": sorted(r["tokens_per_s"] for r in records[2:])[len(mfu) // 2],
            "mfu": sorted(mfu)[len(mfu) // 2],
            "loss_first_last": [records[0]["loss"], records[-1]["loss"]],
            "gpu": torch.cuda.get_device_name(),
        }
    }
    print(json.dumps(summary))
    if out := os.environ.get("GPU_CHECK_OUT"):
        Path(out).write_text(json.dumps(summary, indent=1))
