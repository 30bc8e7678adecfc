"""Training rows of a rollout batch, and their split into data-parallel shares and micro-batches.

A row holds one prompt and the responses to it trained together: ``[P; R1; …; Rk]`` then right-padding
to the row length. In the standard layout k = 1 (``prompt + response``, the causal attention of a plain
row); with prefix grouping (:mod:`dotsllm.posttrain.grpo.prefix_grouping`) a row is a whole group, its
prompt encoded once: each response's positions restart at ``len(P)`` and its tokens see the prompt
and the earlier tokens of their own response only (``segment_ids``: 0 the prompt, j the j-th response,
-1 padding).

Per-response tensors are ``[rows, slots, max_new_tokens]`` (slot j: the row's j-th response, an empty
slot where a row holds fewer responses than the widest): flattened to ``[rows × slots, L]`` they are the
response layout of :mod:`dotsllm.posttrain.grpo.losses`, the same for both layouts. ``logit_index``
gives, per response token, the row position whose output predicts it: token 0 is predicted from the
prompt's last position (``len(P) − 1``), token t > 0 from the response's token t − 1.

Every data-parallel rank runs the same number of micro-batches of the same shape (pipeline and
expert-parallel communication need it): a share that falls short is filled with padding rows, which
have no response tokens and weigh nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dotsllm.model.prefix_grouped_attention import PADDING_SEGMENT, PROMPT_SEGMENT
from dotsllm.model.routing_replay import ROUTING_DTYPE
from dotsllm.posttrain.grpo.rollout import Sample


def shared_prompt_groups(samples: Sequence[Sample]) -> list[list[int]]:
    """Indices of ``samples`` in runs of consecutive samples of the same drawn prompt (a rollout group;
    dynamic sampling keeps or drops whole groups, so runs may be of any size)."""
    groups: list[list[int]] = []
    for i, sample in enumerate(samples):
        previous = samples[groups[-1][0]] if groups else None
        if previous is not None and previous.draw == sample.draw and previous.prompt.ids == sample.prompt.ids:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def row_tokens(samples: Sequence[Sample], group: Sequence[int]) -> int:
    """Tokens of the row holding ``group``: its prompt once, then each response."""
    return len(samples[group[0]].prompt.ids) + sum(len(samples[i].response) for i in group)


def training_rows(
    samples: Sequence[Sample], seq_length: int, max_new_tokens: int, groups: Sequence[Sequence[int]] | None = None
) -> dict[str, torch.Tensor]:
    """The rows of ``samples``, one per entry of ``groups`` (sample indices sharing a prompt; default:
    one sample per row): ``tokens``, ``position_ids``, ``segment_ids`` ``[n, seq_length]``,
    ``response_tokens``, ``response_mask``, ``behaviour_log_probs``, ``logit_index`` ``[n, slots,
    max_new_tokens]``, ``sample_index`` ``[n, slots]`` (-1: an empty slot), and ``routing`` ``[n,
    seq_length, layers, k]`` when every sample has one.

    A group's prompt routing is its first sample's (prompts prefilled once per group record the same
    for all); positions without a recorded routing (each response's last token, padding) take experts
    0..k-1: no loss position depends on them.
    """
    groups = [[i] for i in range(len(samples))] if groups is None else [list(g) for g in groups]
    n, slots = len(groups), max((len(g) for g in groups), default=1)
    rows = {
        "tokens": torch.zeros(n, seq_length, dtype=torch.long),
        "position_ids": torch.arange(seq_length).expand(n, seq_length).clone(),
        "segment_ids": torch.full((n, seq_length), PADDING_SEGMENT, dtype=torch.long),
        "response_tokens": torch.zeros(n, slots, max_new_tokens, dtype=torch.long),
        "response_mask": torch.zeros(n, slots, max_new_tokens, dtype=torch.bool),
        "behaviour_log_probs": torch.zeros(n, slots, max_new_tokens),
        "logit_index": torch.zeros(n, slots, max_new_tokens, dtype=torch.long),
        "sample_index": torch.full((n, slots), -1, dtype=torch.long),
    }
    routed = len(samples) > 0 and all(s.routing is not None for s in samples)
    if routed:
        layers, topk = samples[0].routing.shape[1:]
        rows["routing"] = torch.arange(topk, dtype=ROUTING_DTYPE).expand(n, seq_length, layers, topk).clone()
    for r, group in enumerate(groups):
        prompt = samples[group[0]].prompt.ids
        if any(samples[i].prompt.ids != prompt for i in group):
            raise ValueError(f"row {r}: samples {group} do not share one prompt")
        if row_tokens(samples, group) > seq_length or any(len(samples[i].response) > max_new_tokens for i in group):
            raise ValueError(f"samples {group}: {row_tokens(samples, group)} tokens do not fit a row of {seq_length}")
        lp = len(prompt)
        rows["tokens"][r, :lp] = torch.tensor(prompt)
        rows["segment_ids"][r, :lp] = PROMPT_SEGMENT
        if routed:
            prompt_routing = samples[group[0]].routing[:lp]
            rows["routing"][r, : len(prompt_routing)] = prompt_routing
        start = lp
        for slot, i in enumerate(group):
            response = samples[i].response
            end = start + len(response)
            rows["tokens"][r, start:end] = torch.tensor(response, dtype=torch.long)
            rows["position_ids"][r, start:end] = torch.arange(lp, lp + len(response))
            rows["segment_ids"][r, start:end] = slot + 1
            rows["response_tokens"][r, slot, : len(response)] = torch.tensor(response, dtype=torch.long)
            rows["response_mask"][r, slot, : len(response)] = True
            rows["behaviour_log_probs"][r, slot, : len(response)] = torch.tensor(samples[i].log_probs)
            predictors = [lp - 1, *range(start, end - 1)][: len(response)]  # token 0 from the prompt's last
            rows["logit_index"][r, slot, : len(response)] = torch.tensor(predictors, dtype=torch.long)
            rows["sample_index"][r, slot] = i
            if routed:
                rows["routing"][r, start : end - 1] = samples[i].routing[lp:]
            start = end
    return rows


def per_slot(values: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
    """Per-sample ``values`` ``[samples, ...]`` in the slot layout ``[rows, slots, ...]`` (0 in empty slots)."""
    picked = values[sample_index.clamp(min=0)]
    present = (sample_index >= 0).reshape(*sample_index.shape, *[1] * (values.dim() - 1))
    return picked * present


def rank_share(num_rows: int, dp_rank: int, dp_size: int, micro_batch_size: int) -> list[int | None]:
    """Row indices of this data-parallel rank's share of ``num_rows`` (contiguous), None for padding
    rows; every rank gets the same whole number of micro-batches."""
    per_rank = math.ceil(math.ceil(num_rows / dp_size) / micro_batch_size) * micro_batch_size
    start = dp_rank * per_rank
    return [i if i < num_rows else None for i in range(start, start + per_rank)]


def select_rows(rows: dict[str, torch.Tensor], indices: Sequence[int | None]) -> dict[str, torch.Tensor]:
    """``rows`` at ``indices``; a None index gives a padding row (zeros, no response)."""
    real = torch.tensor([i if i is not None else 0 for i in indices], dtype=torch.long)
    is_padding = torch.tensor([i is None for i in indices])
    selected = {}
    for name, tensor in rows.items():
        picked = tensor[real].clone()
        if is_padding.any() and name not in ("position_ids", "routing"):
            picked[is_padding] = -1 if name == "sample_index" else 0
        selected[name] = picked
    return selected


def micro_batches(rows: dict[str, torch.Tensor], micro_batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive ``micro_batch_size`` rows (the number of rows is a multiple of it)."""
    count = len(next(iter(rows.values())))
    starts = range(0, count, micro_batch_size)
    return [{name: t[start : start + micro_batch_size] for name, t in rows.items()} for start in starts]
