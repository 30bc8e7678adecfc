"""`dotsllm plan`: counts match transformers' Dots1 to the parameter; memory and FLOPs match hand arithmetic."""

import contextlib
import io
import json
import time

import pytest
import torch

# Imported before any megatron-core CPU patch: with `torch.cuda.Stream` patched into a lambda,
# transformers' generation module fails at import (`torch.cuda.Stream | None`).
from transformers import Dots1Config, Dots1ForCausalLM

from dotsllm.cli import main
from dotsllm.model import Dots1ModelConfig

SEQ_142B = 8192


def run_plan(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plan", *args]) == 0
    return out.getvalue()


def plan_json(*args: str) -> dict:
    return json.loads(run_plan(*args, "--json"))


@pytest.fixture(scope="module")
def plan_142b():
    start = time.perf_counter()
    plan = plan_json("--model", "dots1-142b")
    print(f"plan for dots1-142b (meta build included): {time.perf_counter() - start:.1f} s")
    return plan


@pytest.fixture(scope="module")
def hf_142b():
    """transformers' Dots1ForCausalLM for the same architecture, on the meta device."""
    with torch.device("meta"):
        return Dots1ForCausalLM(Dots1Config(**Dots1ModelConfig.from_preset("dots1-142b").hf_config_dict()))


def hf_counts(model) -> dict[str, int]:
    """Total and active parameters of an HF Dots1 model, and active ones that do matmuls."""
    cfg = model.config
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    moe_layers = range(cfg.first_k_dense_replace, cfg.num_hidden_layers)
    experts = (f"model.layers.{i}.mlp.experts.{name}" for i in moe_layers for name in ("gate_up_proj", "down_proj"))
    routed = sum(params[name].numel() for name in experts)
    inactive = routed // cfg.n_routed_experts * (cfg.n_routed_experts - cfg.num_experts_per_tok)
    embedding = params["model.embed_tokens.weight"].numel()
    norms = sum(p.numel() for n, p in params.items() if "norm" in n)
    return {"total": total, "active": total - inactive, "active_matmul": total - inactive - embedding - norms}


def test_142b_counts_equal_transformers_to_the_parameter(plan_142b, hf_142b):
    hf = hf_counts(hf_142b)
    assert plan_142b["total_params"] == hf["total"]
    assert plan_142b["active_params"] == hf["active"]
    assert plan_142b["active_matmul_params"] == hf["active_matmul"]
    assert round(plan_142b["total_params"] / 1e9, 2) == 142.77
    assert round(plan_142b["active_params"] / 1e9, 2) == 14.02  # the paper's headline includes the embedding
    embedding = 152064 * 4096
    assert plan_142b["params_by_role"]["embedding"] == plan_142b["params_by_role"]["output_layer"] == embedding
    assert plan_142b["active_params_without_embedding"] == plan_142b["active_params"] - embedding
    assert plan_142b["params_by_role"]["routed_experts"] == 61 * 128 * 3 * 4096 * 1408


def test_flops_per_token_is_6_active_matmul_params_plus_attention(plan_142b, hf_142b):
    attention = 12 * 62 * (32 * 128) * SEQ_142B
    assert plan_142b["flops_per_token"] == 6 * hf_counts(hf_142b)["active_matmul"] + attention
    shorter = plan_json("--model", "dots1-142b", "--seq-len", "4096", "--global-batch-tokens", "4096")
    assert plan_142b["flops_per_token"] - shorter["flops_per_token"] == attention // 2


def test_time_projection(plan_142b):
    plan = plan_json("--model", "dots1-142b", "--tokens", "1e12", "--mfu", "0.25", "--gpus", "1024", "--ep", "8")
    gpu_hours = 1e12 * plan_142b["flops_per_token"] / (989e12 * 0.25) / 3600
    assert plan["gpu_hours"] == pytest.approx(gpu_hours)
    assert plan["days"] == pytest.approx(gpu_hours / 1024 / 24)
    assert plan["steps"] == -(-10**12 // (64 * 2**20))


def test_memory_of_a_tiny_layout_matches_hand_arithmetic():
    # dots1-tiny: 4 layers (layer 0 dense), h=128, 4 heads x 32, ffn 384, 8 experts of 64, top-2,
    # 1 shared expert of 64, vocab 8192. Layout: TP=2, PP=2, EP=2, 8 GPUs -> DP=2, expert-DP=2.
    plan = plan_json(
        "--model", "dots1-tiny", "--tp", "2", "--pp", "2", "--ep", "2", "--gpus", "8",
        "--seq-len", "256", "--micro-batch-size", "2", "--global-batch-tokens", "4096",
    )  # fmt: skip
    assert plan["layout"] == dict(tp=2, pp=2, ep=2, etp=1, cp=1, dp=2, expert_dp=2, gpus=8)
    assert plan["microbatches_per_step"] == 4096 // (256 * 2 * 2)
    embedding = 8192 * 128 // 2
    attention = (3 * 128 * 128 + 128 * 128) // 2
    norms = 128 + 128 + 32 + 32  # input, pre-MLP, q, k
    dense_mlp = 3 * 128 * 384 // 2
    router = 8 * 128
    shared = 3 * 128 * 64 // 2
    experts = 8 * 3 * 128 * 64 // 2
    stage0_dense = embedding + 2 * (attention + norms) + dense_mlp + router + shared  # layers 0, 1
    stage1_dense = 2 * (attention + norms + router + shared) + 128 + embedding  # layers 2, 3, final norm, output
    stage0_experts, stage1_experts = experts, 2 * experts

    # per token held by a GPU (512 tokens per micro-batch / TP 2), bf16 elements saved per layer
    tokens = 256 * 2 // 2
    attention_act = 3 * 128 + 3 * 128 + 3 * 128
    dense_act = 128 + 3 * 384
    moe_act = 128 + (128 + 3 * 64) + 2 * (128 + 3 * 64)
    logits = 4 * tokens * 8192
    expected = [
        (stage0_dense, stage0_experts, 2 * tokens * 2 * (2 * attention_act + dense_act + moe_act)),  # 2 in flight
        (stage1_dense, stage1_experts, tokens * 2 * 2 * (attention_act + moe_act) + logits),  # 1 in flight
    ]
    for stage, (dense, expert, activations) in zip(plan["stages"], expected):
        params = dense + expert
        assert stage["params"] == params and stage["expert_params"] == expert
        assert (stage["weights"], stage["grads"], stage["optimizer"]) == (2 * params, 4 * params, 12 * params)
        assert stage["optimizer_distributed"] == 12 * (dense // 2 + expert // 2)
        assert stage["activations"] == activations
        assert stage["total_distributed"] == 6 * params + 12 * (dense // 2 + expert // 2) + activations
    assert plan["worst_stage"] == 1


def test_uneven_pipeline_stages_hold_every_parameter_once():
    plan = plan_json(
        "--model", "dots1-142b", "--pp", "8", "--ep", "8", "--gpus", "512",
        "--first-stage-layers", "7", "--last-stage-layers", "7",
    )  # fmt: skip
    assert [s["layers"] for s in plan["stages"]] == [7] + [8] * 6 + [7]
    # TP=1: each GPU of a stage holds all its non-expert parameters and 1/8 of its experts
    assert sum(s["params"] + 7 * s["expert_params"] for s in plan["stages"]) == plan["total_params"]
    with pytest.raises(ValueError, match="62 layers do not split evenly over --pp 8"):
        run_plan("--model", "dots1-142b", "--pp", "8")  # 62 layers do not split evenly over 8 stages


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        run_plan("--model", "dots1-tiny", "--tp", "3", "--gpus", "8")
    with pytest.raises(ValueError, match="ep\\*etp"):
        run_plan("--model", "dots1-tiny", "--ep", "3", "--dp", "4")
    with pytest.raises(ValueError, match="disagrees"):
        run_plan("--model", "dots1-tiny", "--dp", "2", "--gpus", "8")
    with pytest.raises(ValueError, match=r"context parallelism \(cp=2\) is not supported"):
        run_plan("--model", "dots1-tiny", "--cp", "2", "--gpus", "8")


def test_table_shows_counts_and_memory():
    text = run_plan("--model", "dots1-tiny", "--seq-len", "256", "--global-batch-tokens", "256")
    for expected in ("routed_experts", "589,824", "distributed optimizer", "GPU-hours", "wall-clock days"):
        assert expected in text


def test_tp_sharded_roles_are_the_ones_megatron_marks(megatron_world, tiny_config):
    from dotsllm.model import build_model
    from dotsllm.model.accounting import TP_SHARDED_ROLES, role_of

    roles = set()
    for name, param in build_model(tiny_config).named_parameters():
        role = role_of(name)
        roles.add(role)
        split = role in TP_SHARDED_ROLES or role == "routed_experts"  # experts: over ETP
        assert getattr(param, "tensor_model_parallel", False) == split, name
    assert roles == {"embedding", "output_layer", "attention", "dense_mlp", "routed_experts", "shared_experts",
                     "router", "norms"}  # fmt: skip


def test_hf_config_has_full_attention_and_real_rope_in_every_layer():
    deeper = Dots1ModelConfig.from_preset("dots1-142b", num_layers=64)  # Dots1Config's sliding window starts at 62
    hf = Dots1Config(**deeper.hf_config_dict())
    assert set(hf.layer_types) == {"full_attention"}
    assert hf.rope_parameters["rope_theta"] == 1e7 and hf.head_dim == 128 and hf.rms_norm_eps == 1e-5


def test_uneven_pipeline_error_is_one_line_whose_suggestion_plans():
    with pytest.raises(ValueError) as error:
        run_plan("--model", "dots1-142b", "--pp", "8", "--ep", "8", "--gpus", "512")
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        "62 layers do not split evenly over --pp 8: give the first/last stages fewer layers, "
        "e.g. --first-stage-layers 7 --last-stage-layers 7 (7 + 6×8 + 7 = 62)"
    )
    suggested = message.split("e.g. ")[1].split(" (")[0].split()
    plan = plan_json("--model", "dots1-142b", "--pp", "8", "--ep", "8", "--gpus", "512", *suggested)
    assert [s["layers"] for s in plan["stages"]] == [7] + [8] * 6 + [7]
    # a wrong uneven split names one that works, too
    wrong = (r"over --pp 8 with --first-stage-layers 5 --last-stage-layers 5: the 52 layers left do not split "
             r"evenly over the 6 middle stages: e.g. --first-stage-layers 7 --last-stage-layers 7 ")
    with pytest.raises(ValueError, match=wrong):
        run_plan("--model", "dots1-142b", "--pp", "8", "--first-stage-layers", "5", "--last-stage-layers", "5")


@pytest.mark.parametrize(("layers", "pp"), [(62, 8), (62, 16), (62, 4), (61, 2), (13, 3), (10, 8), (30, 7), (9, 9)])
def test_suggested_pipeline_splits_are_accepted_by_megatron(layers, pp):
    from dotsllm.parallel import ParallelConfig
    from dotsllm.plan import _stage_layers, check_pipeline_split, suggest_pipeline_split

    config = Dots1ModelConfig.from_preset("dots1-tiny", num_layers=layers)
    split = suggest_pipeline_split(layers, pp) or (None, None)
    assert (split == (None, None)) == (layers % pp == 0)
    check_pipeline_split(layers, pp, *split)
    stages = _stage_layers(config, ParallelConfig(pp=pp), *split)  # megatron-core's own split
    assert [i for stage in stages for i in stage] == list(range(layers))
    if split[0] is not None:
        suggestion = rf"e\.g\. --first-stage-layers {split[0]} --last-stage-layers {split[1]} "
        with pytest.raises(ValueError, match=suggestion):
            check_pipeline_split(layers, pp)


def test_verdict_of_a_layout_that_fits():
    plan = plan_json("--model", "dots1-tiny", "--seq-len", "256", "--global-batch-tokens", "256")
    verdict = plan["verdict"]
    assert verdict["fits"] and verdict["fits_without_distributed_optimizer"]
    assert verdict["gpu_memory_gib"] == 80 and verdict["alternatives"] == [] and verdict["more_gpus"] is None
    worst = plan["stages"][plan["worst_stage"]]
    assert verdict["worst_stage_gib"] == worst["total_distributed"] / 2**30
    text = run_plan("--model", "dots1-tiny", "--seq-len", "256", "--global-batch-tokens", "256")
    assert "verdict: fits in 80 GiB: worst stage 0 needs" in text
    # the same layout against a GPU too small for it
    small = plan_json("--model", "dots1-tiny", "--seq-len", "256", "--global-batch-tokens", "256",
                      "--gpu-memory", "0.001")  # fmt: skip
    assert not small["verdict"]["fits"]


LAYOUT_142B = ("--model", "dots1-142b", "--pp", "8", "--ep", "8", "--gpus", "512",
               "--first-stage-layers", "7", "--last-stage-layers", "7")  # fmt: skip


def test_verdict_of_a_layout_that_does_not_fit_lists_layouts_that_do():
    plan = plan_json(*LAYOUT_142B)
    verdict = plan["verdict"]
    worst = max(plan["stages"], key=lambda s: s["total_distributed"])
    assert not verdict["fits"] and not verdict["fits_without_distributed_optimizer"]
    assert verdict["worst_stage"] == worst["stage"] and verdict["worst_stage_gib"] == worst["total_distributed"] / 2**30
    assert verdict["worst_stage_gib"] > 80
    alternatives = verdict["alternatives"]
    assert alternatives and verdict["more_gpus"] is None
    assert all(alt["worst_stage_gib"] <= 80 and alt["layout"]["gpus"] == 512 for alt in alternatives)
    for alt in (alternatives[0], alternatives[-1]):  # re-planned, each fits with the GiB listed
        again = plan_json(*LAYOUT_142B, *alt["args"])
        assert again["verdict"]["fits"] and again["verdict"]["worst_stage_gib"] == alt["worst_stage_gib"]
        assert again["layout"]["gpus"] == 512
    text = run_plan(*LAYOUT_142B)
    assert "verdict: does not fit in 80 GiB: worst stage" in text
    assert "layouts of the same 512 GPUs that fit in 80 GiB" in text
    assert alternatives[0]["change"] in text


def test_verdict_names_more_gpus_when_no_layout_of_these_fits():
    plan = plan_json("--model", "dots1-142b", "--ep", "8", "--gpus", "8")
    verdict = plan["verdict"]
    assert not verdict["fits"] and verdict["alternatives"] == []
    more = verdict["more_gpus"]
    assert more["layout"]["gpus"] > 8 and more["worst_stage_gib"] <= 80
    again = plan_json("--model", "dots1-142b", *more["args"])
    assert again["verdict"]["fits"] and again["layout"]["gpus"] == more["layout"]["gpus"]
    assert f"{more['layout']['gpus']:,} GPUs would" in run_plan("--model", "dots1-142b", "--ep", "8", "--gpus", "8")
