"""HF Dots1 export/import: transformers reproduces dotsllm's logits and generations, weights round-trip
bit for bit, a transformers-made checkpoint imports, and broken checkpoints fail naming the tensor."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

# Before megatron_world: the CPU layer for megatron-core patches torch.cuda in ways that break
# importing transformers.generation afterwards.
from transformers import AutoTokenizer, Dots1Config, Dots1ForCausalLM, PreTrainedTokenizerFast

from dotsllm.convert import export_hf, import_hf, megatron_to_hf, read_hf_config, tensor_maps
from dotsllm.convert.hf_io import INDEX
from dotsllm.model import Dots1ModelConfig, build_model, list_presets

BATCH = torch.randint(0, 8192, (2, 24), generator=torch.Generator().manual_seed(1))


def megatron_logits(model, tokens):
    positions = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
    with torch.no_grad():
        return model(tokens, positions, None)


def state(model):
    return {k: v for k, v in model.state_dict().items() if not k.endswith("._extra_state")}


@pytest.fixture(scope="module")
def exported(megatron_world, tmp_path_factory):
    """dots1-tiny with non-zero expert biases, exported in several shards with a tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    cfg = Dots1ModelConfig.from_preset("dots1-tiny")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for name, bias in state(model).items():
        if name.endswith("router.expert_bias"):
            bias.copy_(torch.randn_like(bias) * 0.1)
    tok_dir = tmp_path_factory.mktemp("tok")
    tokenizer = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "world": 2}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(tok_dir)
    out = tmp_path_factory.mktemp("hf") / "dots1-tiny"
    export_hf(model.state_dict().items(), cfg, out, tokenizer_dir=tok_dir, max_shard_bytes=2_000_000)
    return cfg, model, out


def test_transformers_reproduces_logits_and_greedy_generation(exported):
    cfg, model, out = exported
    index = json.loads((out / INDEX).read_text())
    files = list(index["weight_map"].values())
    assert len(set(files)) > 1  # sharded, each shard within the limit unless it holds one larger tensor
    assert all((out / f).stat().st_size < 2_000_000 + 2**14 or files.count(f) == 1 for f in files)
    assert "model.layers.1.mlp.experts.7.gate_proj.weight" in index["weight_map"]  # the hub's per-expert names
    assert AutoTokenizer.from_pretrained(out)("hello world")["input_ids"] == [1, 2]
    # a tokenizer without a stop token (nor the chat tokens): no generation_config.json, no token ids
    assert not (out / "generation_config.json").exists()
    assert not {"eos_token_id", "pad_token_id"} & json.loads((out / "config.json").read_text()).keys()

    hf, info = Dots1ForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    hf.eval()
    assert not any(info.values()), info
    expected = megatron_logits(model, BATCH)
    with torch.no_grad():
        diff = (hf(BATCH).logits - expected).abs().max().item()
    assert diff < 1e-4, diff

    generated = hf.generate(BATCH, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    tokens = BATCH
    for _ in range(16):
        tokens = torch.cat([tokens, megatron_logits(model, tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, tokens)

    # The expert biases were carried over and change the routing.
    with torch.no_grad():
        for layer in hf.model.layers[cfg.num_dense_layers :]:
            layer.mlp.gate.e_score_correction_bias.zero_()
        assert (hf(BATCH).logits - expected).abs().max() > 1e-3


def test_copied_chat_tokenizer_gets_stop_and_pad_ids(exported, tmp_path):
    """HF tokenizer files with the dots chat tokens and <|endoftext|>, copied: the chat template, the
    end of document as pad, and both stop ids in generation_config.json (what transformers reads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from dotsllm.tokenizer import CHAT_TOKENS

    cfg, model, _ = exported
    words = {"<unk>": 0, "<|endoftext|>": 1, **{t: 2 + i for i, t in enumerate(CHAT_TOKENS)}, "hello": 8, "world": 9}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(tmp_path / "tok")
    out = export_hf(model.state_dict().items(), cfg, tmp_path / "hf", tokenizer_dir=tmp_path / "tok")

    ids = {"bos_token_id": None, "eos_token_id": [7, 1], "pad_token_id": 1}  # <|endofresponse|>, <|endoftext|>
    assert json.loads((out / "generation_config.json").read_text()) == ids
    assert Dots1ForCausalLM.from_pretrained(out).generation_config.eos_token_id == [7, 1]
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ids} == {**ids, "eos_token_id": 7}
    hf = AutoTokenizer.from_pretrained(out)
    assert (hf.eos_token_id, hf.pad_token_id, hf.bos_token_id) == (7, 1, None) and "<|userprompt|>" in hf.chat_template
    assert hf.decode([8, 7, 1, 1], skip_special_tokens=True) == "hello"


def test_import_round_trips_bit_for_bit(exported):
    cfg, model, out = exported
    imported_cfg = read_hf_config(out)
    assert dataclasses.replace(imported_cfg, name=cfg.name) == cfg
    torch.manual_seed(1)
    fresh = build_model(imported_cfg)
    import_hf(out, fresh, imported_cfg)
    original, loaded = state(model), state(fresh)
    assert loaded.keys() == original.keys()
    assert [k for k in original if not torch.equal(original[k], loaded[k])] == []
    assert loaded["decoder.layers.2.mlp.router.expert_bias"].abs().min() > 0


def test_te_names_map_like_local_names(exported):
    cfg, model, _ = exported
    local = state(model)
    pairs = zip(tensor_maps(cfg), tensor_maps(cfg, te=True))
    te_named = [(te.megatron_name, local[m.megatron_name]) for m, te in pairs]
    assert any(name.endswith("linear_fc1.weight3") for name, _ in te_named)
    from_te = dict(megatron_to_hf(te_named, cfg))
    from_local = dict(megatron_to_hf(local.items(), cfg))
    assert from_te.keys() == from_local.keys()
    assert all(torch.equal(from_te[k], from_local[k]) for k in from_local)


def test_transformers_checkpoint_imports_with_same_logits(megatron_world, tmp_path):
    """GQA with head_dim != hidden/heads exercises megatron's interleaved qkv layout."""
    hf_cfg = Dots1Config(
        vocab_size=512, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, n_routed_experts=6, num_experts_per_tok=2,
        n_shared_experts=1, first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5,
        rope_theta=10_000_000, rms_norm_eps=1e-5, max_position_embeddings=256,
    )
    torch.manual_seed(2)
    hf = Dots1ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for name, tensor in hf.state_dict().items():
            if tensor.dim() == 1:  # norms (ones) and expert biases (zeros) get distinct values
                tensor.copy_(1 + torch.randn_like(tensor) * 0.1 if "norm" in name else torch.randn_like(tensor) * 0.1)
    hf.save_pretrained(tmp_path)

    cfg = read_hf_config(tmp_path)
    assert (cfg.num_query_groups, cfg.head_dim, cfg.num_dense_layers) == (2, 32, 1)
    assert (cfg.moe_router_topk_scaling_factor, cfg.rotary_base, cfg.norm_epsilon) == (2.5, 1e7, 1e-5)
    model = build_model(cfg).eval()
    import_hf(tmp_path, model, cfg)
    tokens = BATCH % 512
    with torch.no_grad():
        diff = (megatron_logits(model, tokens) - hf(tokens).logits).abs().max().item()
    assert diff < 1e-4, diff


@pytest.mark.parametrize("preset", list_presets())
def test_hf_config_round_trips_every_preset(preset):
    cfg = Dots1ModelConfig.from_preset(preset)
    assert Dots1ModelConfig.from_hf_config(cfg.hf_config_dict(), name=cfg.name) == cfg


def test_unsupported_hf_features_are_named(exported):
    _, _, out = exported
    config = json.loads((out / "config.json").read_text())
    with pytest.raises(ValueError, match="norm_topk_prob"):
        Dots1ModelConfig.from_hf_config({**config, "norm_topk_prob": False})
    with pytest.raises(ValueError, match="sliding-window"):
        Dots1ModelConfig.from_hf_config({**config, "sliding_window": 16, "max_window_layers": 2})


def _broken_copy(out, tmp_path, tensor, edit):
    """A copy of the folder ``out`` where ``edit(path)`` changed the shard that holds ``tensor``."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in out.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    file = json.loads((out / INDEX).read_text())["weight_map"][tensor]
    edit(broken / file)
    return broken, file


def _drop(name):
    def edit(path):
        tensors = load_file(path)
        del tensors[name]
        save_file(tensors, path, metadata={"format": "pt"})

    return edit


def _reshape(name):
    def edit(path):
        tensors = load_file(path)
        tensors[name] = tensors[name][:-1].clone()
        save_file(tensors, path, metadata={"format": "pt"})

    return edit


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BIAS, EXPERT = "model.layers.2.mlp.gate.e_score_correction_bias", "model.layers.3.mlp.experts.5.down_proj.weight"


@pytest.mark.parametrize(
    "tensor, edit, error",
    [(BIAS, _truncate, "truncated or corrupt"), (BIAS, _drop(BIAS), "missing"), (EXPERT, _reshape(EXPERT), "shape")],
)
def test_broken_checkpoint_names_tensor_and_file(exported, tmp_path, tensor, edit, error):
    cfg, _, out = exported
    broken, file = _broken_copy(out, tmp_path, tensor, edit)
    model = build_model(cfg)
    with pytest.raises(ValueError) as raised:
        import_hf(broken, model, cfg)
    message = str(raised.value)
    assert error in message and file in message
    # A truncated file fails at the first of its tensors that is read.
    named = message.split(":")[0]
    assert named == tensor or (edit is _truncate and json.loads((out / INDEX).read_text())["weight_map"][named] == file)


def test_export_names_missing_megatron_tensor(exported, tmp_path):
    cfg, model, _ = exported
    partial = [(k, v) for k, v in state(model).items() if k != "decoder.layers.1.mlp.router.expert_bias"]
    with pytest.raises(ValueError, match="decoder.layers.1.mlp.router.expert_bias"):
        export_hf(partial, cfg, tmp_path / "out")
