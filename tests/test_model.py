"""The dots1 config maps onto megatron-core exactly; the model takes explicit masks and positions."""

import pytest
import torch

from dotsllm.model import Dots1ModelConfig, build_model, list_presets, resolve_backend

from dotsllm.parallel import ParallelConfig


def test_142b_preset_is_the_released_architecture():
    cfg = Dots1ModelConfig.from_preset("dots1-142b")
    tc = cfg.transformer_config()
    assert (tc.num_layers, tc.hidden_size, tc.num_attention_heads, tc.num_query_groups, tc.kv_channels) == (
        62, 4096, 32, 32, 128,
    )
    assert tc.ffn_hidden_size == 10944 and tc.moe_ffn_hidden_size == 1408
    assert tc.num_moe_experts == 128 and tc.moe_router_topk == 6
    assert tc.moe_shared_expert_intermediate_size == 2816
    assert tc.moe_layer_freq == [0] + [1] * 61
    assert tc.moe_router_score_function == "sigmoid" and tc.moe_router_enable_expert_bias
    assert tc.moe_router_topk_scaling_factor == 2.5
    assert tc.moe_router_load_balancing_type == "seq_aux_loss"
    assert tc.moe_router_dtype == "fp32"
    assert tc.qk_layernorm and tc.normalization == "RMSNorm" and tc.layernorm_epsilon == 1e-5
    assert tc.gated_linear_unit and not tc.add_bias_linear
    assert tc.init_method_std == 0.006
    kwargs = cfg.gpt_model_kwargs()
    assert kwargs["rotary_base"] == 10_000_000 and kwargs["vocab_size"] == 152064
    assert kwargs["share_embeddings_and_output_weights"] is False


def test_presets_span_tiny_to_142b():
    assert {"dots1-tiny", "dots1-142b"} <= set(list_presets())
    tiny = Dots1ModelConfig.from_preset("dots1-tiny")
    assert tiny.num_experts >= 4 and tiny.moe_router_topk == 2 and tiny.num_shared_experts == 1
    assert tiny.num_dense_layers == 1 and tiny.qk_layernorm and tiny.untie_embeddings


def test_bad_preset_fields_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnum_layers: 2\nhidden_sise: 8\n")
    with pytest.raises(ValueError, match="hidden_sise"):
        Dots1ModelConfig.from_preset(bad)
    with pytest.raises(FileNotFoundError, match="dots1-tiny"):
        Dots1ModelConfig.from_preset("dots1-nope")
    with pytest.raises(ValueError, match="moe_router_topk"):
        Dots1ModelConfig.from_preset("dots1-tiny", moe_router_topk=9)


def test_parallel_layout_validation():
    assert ParallelConfig(tp=2, pp=2, ep=4).data_parallel_size(16) == 4
    with pytest.raises(ValueError, match="divisible"):
        ParallelConfig(tp=3).data_parallel_size(8)
    with pytest.raises(ValueError, match="ep\\*etp"):
        ParallelConfig(ep=3).data_parallel_size(4)


def test_backend_is_te_exactly_when_te_and_cuda_are_present():
    from megatron.core.extensions.transformer_engine import HAVE_TE

    have_te = HAVE_TE and torch.cuda.is_available()
    assert resolve_backend("auto") == ("te" if have_te else "local")
    assert resolve_backend("local") == "local"
    if have_te:
        assert resolve_backend("te") == "te"
    else:
        with pytest.raises(RuntimeError, match="Transformer Engine"):
            resolve_backend("te")


def test_tiny_model_layout(megatron_world, tiny_config):
    from megatron.core.transformer.moe.moe_layer import MoELayer

    model = build_model(tiny_config)
    layers = model.decoder.layers
    assert not isinstance(layers[0].mlp, MoELayer)
    assert all(isinstance(layer.mlp, MoELayer) for layer in layers[1:])
    assert layers[1].mlp.shared_experts is not None
    assert model.output_layer.weight.data_ptr() != model.embedding.word_embeddings.weight.data_ptr()
    assert layers[0].self_attention.q_layernorm is not None


def test_packed_sequences_with_explicit_mask_and_positions(megatron_world, tiny_config):
    """Two documents packed in one row with a block-causal mask and reset positions give the
    same logits as each document alone: what packing and GRPO prefix sharing rely on."""
    model = build_model(tiny_config).eval()
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, tiny_config.vocab_size, (1, 24), generator=gen)
    b = torch.randint(0, tiny_config.vocab_size, (1, 40), generator=gen)

    def alone(tokens):
        return model(tokens, torch.arange(tokens.shape[1])[None], None)

    packed = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(24), torch.arange(40)])[None]
    allowed = torch.zeros(64, 64, dtype=torch.bool)
    allowed[:24, :24] = True
    allowed[24:, 24:] = True
    allowed &= torch.ones(64, 64, dtype=torch.bool).tril()
    mask = ~allowed[None, None]  # megatron: True = masked out
    with torch.no_grad():
        packed_logits = model(packed, positions, mask)
        expected = torch.cat([alone(a), alone(b)], dim=1)
        causal_default = model(packed, torch.arange(64)[None], None)
    torch.testing.assert_close(packed_logits, expected, rtol=1e-5, atol=1e-5)
    # Without the mask the second document would see the first: the mask is really used.
    assert (causal_default[:, 24:] - expected[:, 24:]).abs().max() > 1e-3


def test_positions_restarting_after_a_shared_prefix_reach_rope(megatron_world, tiny_config):
    """A GRPO group row [P; R1; R2]: R2's positions restart at len(P) and R2 is masked from R1. R2's
    logits must equal those of [P; R2] alone, which needs position ids to reach RoPE (R2 starts at
    slot len(P)+len(R1), not at len(P)); the first-token prediction from P's last position too."""
    model = build_model(tiny_config).eval()
    gen = torch.Generator().manual_seed(1)
    p, r1, r2 = (torch.randint(0, tiny_config.vocab_size, (1, n), generator=gen) for n in (10, 7, 5))
    lp, l1, l2 = 10, 7, 5
    row = torch.cat([p, r1, r2], dim=1)
    positions = torch.cat([torch.arange(lp + l1), torch.arange(lp, lp + l2)])[None]
    allowed = torch.ones(lp + l1 + l2, lp + l1 + l2, dtype=torch.bool).tril()
    allowed[lp + l1 :, lp : lp + l1] = False  # R2 does not see R1
    with torch.no_grad():
        grouped = model(row, positions, ~allowed[None, None])
        alone = model(torch.cat([p, r2], dim=1), torch.arange(lp + l2)[None], None)
        slots = model(row, torch.arange(lp + l1 + l2)[None], ~allowed[None, None])
    torch.testing.assert_close(grouped[:, lp + l1 :], alone[:, lp:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grouped[:, :lp], alone[:, :lp], rtol=1e-5, atol=1e-5)
    # With slot positions (what megatron-core's GPTModel uses whatever position_ids says) R2 differs.
    assert (slots[:, lp + l1 :] - alone[:, lp:]).abs().max() > 1e-3


def test_rotary_for_arange_positions_equals_megatrons_table(megatron_world, tiny_config):
    model = build_model(tiny_config)
    ours = model.rotary_for_positions(torch.arange(16).expand(3, 16))
    theirs = model.rotary_pos_emb(16)
    assert ours.shape == (16, 3, 1, tiny_config.head_dim)
    assert torch.equal(ours, theirs.expand(16, 3, 1, -1))
