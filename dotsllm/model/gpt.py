"""megatron-core's ``GPTModel`` with rotary embeddings taken from explicit ``position_ids``.

megatron-core 0.16.1 builds RoPE for the positions ``0..s-1`` of every row whatever ``position_ids``
says (``GPTModel._preprocess`` calls ``RotaryEmbedding(seq_len)``; position ids only feed learned
absolute embeddings). That is right for plain causal-LM rows but not for rows whose positions
restart: packed conversations (SFT) and shared-prefix GRPO groups ``[P; R1; R2]`` where each
response continues at ``len(P)``. megatron has no option for it, hence this small override.
"""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel


class Dots1GPTModel(GPTModel):
    """``GPTModel`` whose RoPE angles follow ``position_ids`` ([b, s]) token by token.

    The rotary frequencies are gathered per token into the ``[s, b, 1, d]`` layout that megatron's
    ``apply_rotary_pos_emb`` broadcasts over heads; for ``position_ids = arange(s)`` they equal
    megatron's own ``[s, 1, 1, d]`` table bit for bit. Left to megatron: THD-packed batches (RoPE
    follows ``cu_seqlens``) and KV-cache decoding, whose cache slots are the positions
    (``dotsllm.inference`` lays prompts out so).
    """

    def _preprocess(self, input_ids, position_ids, decoder_input=None, inference_context=None,
                    packed_seq_params=None, padding_mask=None):  # fmt: skip
        outputs = super()._preprocess(
            input_ids, position_ids, decoder_input, inference_context, packed_seq_params, padding_mask
        )
        rotary = outputs[1]
        if rotary is None or position_ids is None or packed_seq_params is not None or inference_context is not None:
            return outputs
        return (outputs[0], self.rotary_for_positions(position_ids), *outputs[2:])

    def rotary_for_positions(self, position_ids: torch.Tensor) -> torch.Tensor:
        """RoPE angles ``[s, b, 1, d]`` for ``position_ids`` ``[b, s]`` (megatron's non-interleaved layout)."""
        rope = self.rotary_pos_emb
        if rope.rotary_interleaved or rope.seq_len_interpolation_factor is not None:
            raise ValueError("explicit position ids support plain, non-interleaved RoPE only (dots1's)")
        inv_freq = rope.inv_freq.to(position_ids.device)
        freqs = position_ids.to(inv_freq.dtype)[..., None] * inv_freq  # [b, s, d/2], as torch.outer
        return torch.cat((freqs, freqs), dim=-1).transpose(0, 1)[:, :, None, :]
