"""Prefix-grouped core attention (dotsllm/model/prefix_grouped_attention.py) against megatron's local
attention under the explicit grouped mask: outputs and gradients equal (fp32), no ``s × s`` tensor ever
built; without a layout a model built with it generates exactly as the standard one."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dotsllm.model.prefix_grouped_attention import LocalPrefixGroupedAttention, PrefixGroupLayout


def prefix_group_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """The reference: ``[b, 1, s, s]`` boolean, True = masked out (megatron's convention), of rows with
    ``segment_ids`` ``[b, s]``: a token attends to the earlier tokens of its own segment and of the prompt."""
    s = segment_ids.shape[-1]
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    keys = segment_ids[:, None, :]
    visible = (segment_ids[:, :, None] == keys) | (keys == 0)
    return ~(visible & causal)[:, None]


def segment_ids(s: int, *rows: tuple[int, list[int]]) -> torch.Tensor:
    """Rows ``[P; R1; …; RG]`` then padding: each ``(len(P), [len(R1), …])``."""
    ids = torch.full((len(rows), s), -1)
    for r, (lp, lengths) in enumerate(rows):
        layout = [0] * lp + [j + 1 for j, n in enumerate(lengths) for _ in range(n)]
        ids[r, : len(layout)] = torch.tensor(layout)
    return ids


def core_attention(heads: int, groups: int, head_dim: int) -> LocalPrefixGroupedAttention:
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.enums import AttnMaskType

    config = TransformerConfig(
        num_layers=1, hidden_size=heads * head_dim, num_attention_heads=heads, num_query_groups=groups,
        attention_softmax_in_fp32=True, attention_dropout=0.0,
    )  # fmt: skip
    return LocalPrefixGroupedAttention(
        config=config, layer_number=1, attn_mask_type=AttnMaskType.arbitrary, attention_type="self"
    )


def qkv(s: int, b: int, heads: int, groups: int, head_dim: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(s + b)
    shapes = ((s, b, heads, head_dim), (s, b, groups, head_dim), (s, b, groups, head_dim))
    return [torch.randn(shape, generator=generator, requires_grad=True) for shape in shapes]


def test_grouped_attention_equals_the_masked_reference_values_and_gradients(megatron_world):
    ids = segment_ids(
        24, (5, [3, 1, 4]), (2, [6, 6, 6, 2]), (24, []), (7, [1]), (1, [9, 4]),
    )  # fmt: skip  # the third: a padding row (all prompt); the last ones: padded
    module = core_attention(heads=4, groups=2, head_dim=8)
    q, k, v = qkv(24, len(ids), 4, 2, 8)
    used = (ids >= 0).T[:, :, None]  # [s, b, 1]
    upstream = torch.randn(24, len(ids), 32, generator=torch.Generator().manual_seed(1)) * used

    outputs, grads = [], []
    for mask in (PrefixGroupLayout.from_segment_ids(ids), prefix_group_mask(ids)):
        out = module(q, k, v, mask)
        (out * upstream).sum().backward()
        outputs.append(out.detach() * used)
        grads.append([x.grad.clone() for x in (q, k, v)])
        for x in (q, k, v):
            x.grad = None
    grouped, reference = outputs
    assert grouped.shape == (24, len(ids), 32)
    torch.testing.assert_close(grouped, reference, rtol=0, atol=1e-6)
    assert grouped.abs().min(dim=-1).values[used[..., 0]].gt(0).all()  # every real position has an output
    for got, want in zip(*grads):
        assert want.abs().max() > 0.1
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_grouped_attention_builds_no_s_by_s_tensor(megatron_world):
    class LargestTensor(TorchDispatchMode):
        """The largest number of elements of any tensor an operator returns (forward and backward)."""

        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in torch.utils._pytree.tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    self.largest = max(self.largest, tensor.numel())
            return out

    s = 4 + 16 * 4  # one row: a prompt of 4, 16 responses of 4
    ids = segment_ids(s, (4, [4] * 16))
    module = core_attention(heads=4, groups=4, head_dim=4)
    for mask, builds_s_by_s in ((PrefixGroupLayout.from_segment_ids(ids), False), (prefix_group_mask(ids), True)):
        q, k, v = qkv(s, 1, 4, 4, 4)
        with LargestTensor() as seen:
            module(q, k, v, mask).sum().backward()
        assert (seen.largest >= s * s) == builds_s_by_s, seen.largest  # the reference shows the check bites


def test_layout_of_segment_ids_and_malformed_rows():
    layout = PrefixGroupLayout.from_segment_ids(segment_ids(10, (2, [3, 1]), (10, [])))
    first, padding_row = layout.rows
    assert (first.prompt_length, first.used_length) == (2, 6)
    assert first.response_positions.tolist() == [[2, 3, 4], [5, 5, 5]]
    assert first.response_present.tolist() == [[True, True, True], [True, False, False]]
    assert (padding_row.prompt_length, padding_row.response_positions) == (10, None)
    for bad in ([0, 1, 0, -1], [0, 2, 2, -1], [0, -1, 1, -1], [1, 1, -1, -1]):
        with pytest.raises(ValueError, match="are not \\[P; R1; …; RG\\] then padding"):
            PrefixGroupLayout.from_segment_ids(torch.tensor([bad]))


def test_a_model_built_for_grouping_generates_as_the_standard_one(megatron_world):
    from dotsllm.inference import GenerationRequest, SamplingParams, generate
    from dotsllm.model import Dots1ModelConfig
    from dotsllm.model.builder import build_model

    cfg = Dots1ModelConfig.from_preset("dots1-tiny")
    standard = build_model(cfg, backend="local").eval()
    grouped = build_model(cfg, backend="local", prefix_grouping=True).eval()
    grouped.load_state_dict(standard.state_dict())
    assert sum(isinstance(m, LocalPrefixGroupedAttention) for m in grouped.modules()) == cfg.num_layers
    generator = torch.Generator().manual_seed(2)
    requests = [
        GenerationRequest(torch.randint(1, 8192, (n,), generator=generator).tolist(),
                          SamplingParams(temperature=0.7, max_new_tokens=6), seed=n)
        for n in (5, 9, 3)
    ]  # fmt: skip
    want, got = generate(standard, requests), generate(grouped, requests)
    assert [r.tokens for r in got] == [r.tokens for r in want]
    assert [r.log_probs for r in got] == [r.log_probs for r in want]  # bit for bit
