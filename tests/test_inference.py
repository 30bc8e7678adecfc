"""Generation with the KV cache in one process (dots1-tiny, fp32): references are full forwards without cache."""

import pytest
import torch

from dotsllm.inference import GenerationRequest, SamplingParams, generate
from dotsllm.inference.sampling import filter_top_k_top_p

PROMPT_LENGTHS = [5, 9, 3, 9, 6]
GREEDY = SamplingParams(temperature=0, max_new_tokens=7)
SAMPLED = SamplingParams(temperature=0.7, top_k=50, top_p=0.9, max_new_tokens=6)


@pytest.fixture(scope="module")
def model(megatron_world):
    from dotsllm.model import Dots1ModelConfig
    from dotsllm.model.builder import build_model

    torch.manual_seed(11)
    return build_model(Dots1ModelConfig.from_preset("dots1-tiny"), backend="local").eval()


@pytest.fixture(scope="module")
def prompts():
    generator = torch.Generator().manual_seed(2)
    return [tuple(torch.randint(1, 8192, (n,), generator=generator).tolist()) for n in PROMPT_LENGTHS]


def full_logits(model, tokens: list[int]) -> torch.Tensor:
    """Logits ``[len(tokens), vocab]`` of one sequence, without cache."""
    ids = torch.tensor([tokens])
    with torch.no_grad():
        return model(ids, torch.arange(len(tokens))[None], None, runtime_gather_output=True)[0]


def greedy_by_recompute(model, prompt, max_new_tokens, stop=()):
    tokens = list(prompt)
    for _ in range(max_new_tokens):
        tokens.append(int(full_logits(model, tokens)[-1].argmax()))
        if tokens[-1] in stop:
            break
    return tokens[len(prompt) :]


def teacher_forced_log_probs(model, prompt, generated, temperature):
    """log_softmax(logits / T) of each generated token, from one forward of prompt + generated."""
    logits = full_logits(model, [*prompt, *generated])[len(prompt) - 1 : -1]
    return torch.log_softmax(logits / temperature, dim=-1).gather(-1, torch.tensor(generated)[:, None])[:, 0]


def test_greedy_with_cache_equals_full_recompute(model, prompts):
    results = generate(model, [GenerationRequest(p, GREEDY) for p in prompts])
    for prompt, result in zip(prompts, results):
        assert result.tokens == greedy_by_recompute(model, prompt, GREEDY.max_new_tokens)
        assert result.finish_reason == "length"
        expected = teacher_forced_log_probs(model, prompt, result.tokens, 1.0)
        torch.testing.assert_close(torch.tensor(result.log_probs), expected, rtol=0, atol=1e-5)
    assert model.training is False


def test_stop_token_ends_its_row_and_is_included(model, prompts):
    free = generate(model, [GenerationRequest(p, GREEDY) for p in prompts])
    stop = free[1].tokens[2]  # row 1 stops at its third token; others where (if) they meet it
    params = SamplingParams(temperature=0, max_new_tokens=7, stop_token_ids=[stop])
    stopped = generate(model, [GenerationRequest(p, params) for p in prompts])
    for before, after in zip(free, stopped):
        end = before.tokens.index(stop) + 1 if stop in before.tokens else len(before.tokens)
        assert after.tokens == before.tokens[:end]
        assert after.log_probs == pytest.approx(before.log_probs[:end], abs=1e-6)
        assert after.finish_reason == ("stop" if stop in before.tokens else "length")
    assert stopped[1].tokens[-1] == stop and len(stopped[1].tokens) == 3


def test_seeded_sample_is_reproducible_and_independent_of_its_batch(model, prompts):
    request = GenerationRequest(prompts[0], SAMPLED, seed=7)
    alone = generate(model, [request])[0]
    others = [GenerationRequest(p, SAMPLED, seed=100 + i) for i, p in enumerate(prompts[1:])]
    in_batch = generate(model, [*others[:2], request, *others[2:]])[2]
    assert generate(model, [request])[0] == alone
    assert in_batch.tokens == alone.tokens
    assert in_batch.log_probs == pytest.approx(alone.log_probs, abs=1e-5)
    reseeded = generate(model, [GenerationRequest(prompts[0], SAMPLED, seed=s) for s in (8, 9)])
    assert len({tuple(alone.tokens), *(tuple(r.tokens) for r in reseeded)}) == 3


def test_top_k_one_and_tiny_top_p_are_greedy(model, prompts):
    greedy = generate(model, [GenerationRequest(p, GREEDY) for p in prompts])
    for params in (
        SamplingParams(temperature=1.5, top_k=1, max_new_tokens=7),
        SamplingParams(temperature=1.5, top_p=1e-6, max_new_tokens=7),
    ):
        sampled = generate(model, [GenerationRequest(p, params, seed=i) for i, p in enumerate(prompts)])
        assert [r.tokens for r in sampled] == [r.tokens for r in greedy]


def test_log_probs_equal_a_teacher_forced_forward(model, prompts):
    results = generate(model, [GenerationRequest(p, SAMPLED, seed=i) for i, p in enumerate(prompts)])
    for prompt, result in zip(prompts, results):
        expected = teacher_forced_log_probs(model, prompt, result.tokens, SAMPLED.temperature)
        torch.testing.assert_close(torch.tensor(result.log_probs), expected, rtol=0, atol=1e-5)


def test_prefill_once_and_copy_equals_prefill_each(model, prompts, monkeypatch):
    """G samples of each prompt, prefilled once per prompt or once per row."""
    from dotsllm.inference.stages import ModelStages

    requests = [
        GenerationRequest(p, SamplingParams(temperature=1.0, max_new_tokens=5), seed=10 * i + g)
        for i, p in enumerate(prompts[:3])
        for g in range(3)
    ]
    shapes, forward = [], ModelStages.forward

    def recording_forward(self, tokens, *args):
        shapes.append(tuple(tokens.shape))
        return forward(self, tokens, *args)

    monkeypatch.setattr(ModelStages, "forward", recording_forward)
    shared = generate(model, requests, share_prompt_prefill=True)
    each = generate(model, requests, share_prompt_prefill=False)
    prefill = min(PROMPT_LENGTHS[:3])
    assert [s for s in shapes if s[1] > 1] == [(3, prefill), (9, prefill)]  # the prefills
    assert [r.tokens for r in shared] == [r.tokens for r in each]
    for a, b in zip(shared, each):
        assert a.log_probs == pytest.approx(b.log_probs, abs=1e-5)
    assert len({tuple(r.tokens) for r in shared[:3]}) == 3  # the copies sampled differently


def test_top_k_then_top_p_filter():
    logits = torch.log(torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.1, 0.4, 0.2, 0.3], [0.25, 0.25, 0.25, 0.25]]))
    filtered = filter_top_k_top_p(logits, torch.tensor([0, 3, 2]), torch.tensor([0.65, 0.75, 1.0]))
    # row 0: top-p over all: 0.4 + 0.3 reach 0.65; row 1: top-3 renormalized {0.4, 0.3, 0.2}/0.9,
    # 0.444 + 0.333 reach 0.75; row 2: ties, top-2 keeps the lower ids
    assert torch.isfinite(filtered).tolist() == [
        [False, True, False, True],
        [False, True, False, True],
        [True, True, False, False],
    ]
    assert torch.equal(filtered[0, [1, 3]], logits[0, [1, 3]])
