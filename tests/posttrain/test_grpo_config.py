"""GRPO's configs, prompts (rendering, malformed records, the draw order) and training rows."""

import json
from pathlib import Path

import pytest
import torch

from dotsllm.chat_template import ChatTemplate, messages_from_dicts
from dotsllm.posttrain.grpo.batch import rank_share, select_rows, training_rows
from dotsllm.recipes.grpo import GRPOConfig
from dotsllm.posttrain.grpo.prompts import Prompt, PromptSet, PromptSettings
from dotsllm.posttrain.grpo.rollout import Sample

CONFIGS = Path(__file__).parents[2] / "configs" / "grpo"
SPECIAL = ["<|system|>", "<|endofsystem|>", "<|userprompt|>", "<|endofuserprompt|>", "<|response|>", "<|endofresponse|>"]


class CharTokenizer:
    """One id per character; the chat tokens above 1000."""

    def special_ids(self, names):
        return {name: 1000 + SPECIAL.index(name) for name in names}

    def encode(self, text):
        return [ord(c) for c in text]


def test_configs_load_and_bad_values_are_named():
    tiny = GRPOConfig.load(CONFIGS / "dots1-tiny.yaml")
    assert tiny.max_prompt_tokens == 40 and tiny.moe.router_replay and tiny.moe.expert_bias_update_rate == 0
    big = GRPOConfig.load(CONFIGS / "dots1-142b.yaml", ["tokenizer=tok.model"])
    assert (big.parallel.tp, big.parallel.pp, big.parallel.ep) == (8, 2, 16)
    assert big.rollout.group_size * big.rollout.prompts_per_step == 512 and big.objective.clip_high == 0.28
    for override, message in [
        ("objective.aggregation=mean", "objective.aggregation: expected one of"),
        ("objective.dual_clip=0.5", "dual_clip must be > 1"),
        ("training.seq_length=8", r"training.seq_length \(8\) must exceed rollout.max_new_tokens \(8\)"),
        ("rewards.accuracy=nope", "rewards.accuracy is 'nope'"),
        ("rollout.backend=vllm", "rollout.backend 'vllm' is not one of"),
        ("advantages.scale=std", "advantages.scale: expected one of 'group', 'batch', 'none', got 'std'"),
        ("rollout.temperature=0", "temperature must be > 0"),
        ("training.prefix_grouping=true", r"prefix_grouping needs moe.aux_loss_coeff: 0 .* \(got None and 0.0"),
    ]:
        with pytest.raises(ValueError, match=message):
            GRPOConfig.load(CONFIGS / "dots1-tiny.yaml", [override])
    grouped = GRPOConfig.load(CONFIGS / "dots1-tiny.yaml", ["training.prefix_grouping=true", "moe.aux_loss_coeff=0"])
    assert grouped.training.prefix_grouping
    with pytest.raises(ValueError, match="tokenizer: name the tokenizer"):
        GRPOConfig.load(CONFIGS / "dots1-142b.yaml")


def render_generation_prompt(turns, tok, system="You are a helpful assistant."):
    return ChatTemplate(tok, system).generation_prompt(messages_from_dicts(turns))


def test_generation_prompt_renders_the_dots_template():
    tok = CharTokenizer()
    ids = render_generation_prompt([{"role": "user", "content": "hi"}], tok)
    assert ids == [1000, *map(ord, "You are a helpful assistant."), 1001, 1002, *map(ord, "hi"), 1003, 1004]
    turns = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
             {"role": "user", "content": "c"}]  # fmt: skip
    assert render_generation_prompt(turns, tok) == [1000, 83, 1001, 1002, 97, 1003, 1004, 98, 1005, 1002, 99, 1003, 1004]
    assert render_generation_prompt([{"role": "user", "content": "a"}], tok, system=None) == [1002, 97, 1003, 1004]
    for bad in ([{"role": "robot", "content": "a"}], [{"role": "user"}], [{"role": "assistant", "content": "a"}]):
        with pytest.raises(ValueError):
            render_generation_prompt(bad, tok)


def test_prompt_records_and_their_draw_order(tmp_path):
    lines = [json.dumps({"prompt": f"q{i}", "answer": str(i)}) for i in range(5)]
    lines += ["oops", json.dumps({"prompt": "x" * 50}), json.dumps({"prompt": [{"role": "user", "content": "m"}], "k": 1})]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    prompts = PromptSet(PromptSettings(path=str(tmp_path / "p.jsonl"), system=None), CharTokenizer(), 20, seed=3)
    assert len(prompts) == 6 and prompts.error_counts == {"not JSON": 1, "too long": 1}
    assert prompts.prompts[5].fields == {"k": 1} and prompts.prompts[0].fields == {"answer": "0"}
    first, second = [[prompts.draw(i).source for i in range(e * 6, e * 6 + 6)] for e in (0, 1)]
    assert sorted(first) == sorted(second) == sorted(p.source for p in prompts.prompts) and first != second
    again = PromptSet(PromptSettings(path=str(tmp_path / "p.jsonl"), system=None), CharTokenizer(), 20, seed=3)
    # a resumed run (a new PromptSet) draws the same prompts from where it stopped
    assert [again.draw(i).source for i in range(4, 9)] == first[4:] + second[:3]


def test_prompt_records_from_a_datasets_folder(tmp_path):
    import datasets

    records = {"prompt": ["q1", "", "q3"], "answer": ["1", "2", "3"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(records)}).save_to_disk(str(tmp_path / "ds"))
    prompts = PromptSet(PromptSettings(path=str(tmp_path / "ds"), system=None), CharTokenizer(), 20, seed=0)
    assert [(p.text, p.fields, p.source) for p in prompts.prompts] == [
        ("q1", {"answer": "1"}, f"{tmp_path / 'ds'}[0]"), ("q3", {"answer": "3"}, f"{tmp_path / 'ds'}[2]")
    ]
    assert prompts.error_counts == {"bad prompt": 1}


def test_training_rows_and_data_parallel_shares():
    def sample(prompt, response, routing=None):
        return Sample(0, Prompt(tuple(prompt), "", {}, ""), response, [-0.5] * len(response), False, routing)

    rows = training_rows([sample([5, 6, 7], [8, 9]), sample([4], [3, 2, 1])], seq_length=6, max_new_tokens=3)
    assert rows["tokens"].tolist() == [[5, 6, 7, 8, 9, 0], [4, 3, 2, 1, 0, 0]]
    # the positions predicting each response token (past a response: 0, masked)
    assert rows["logit_index"].tolist() == [[[2, 3, 0]], [[0, 1, 2]]]
    assert rows["response_tokens"].tolist() == [[[8, 9, 0]], [[3, 2, 1]]]
    assert rows["response_mask"].tolist() == [[[True, True, False]], [[True, True, True]]]
    assert rows["position_ids"].tolist() == [list(range(6))] * 2 and rows["sample_index"].tolist() == [[0], [1]]
    routed = training_rows([sample([5, 6], [7, 8], torch.full((3, 2, 2), 7, dtype=torch.int16))], 5, 3)["routing"]
    assert routed[0, :, 0].tolist() == [[7, 7], [7, 7], [7, 7], [0, 1], [0, 1]]  # unrecorded positions: experts 0..k-1
    assert [rank_share(5, r, 2, 2) for r in (0, 1)] == [[0, 1, 2, 3], [4, None, None, None]]
    padded = select_rows(rows, [1, None])
    assert padded["tokens"][1].tolist() == [0] * 6 and not padded["response_mask"][1].any()
    assert padded["sample_index"].tolist() == [[1], [-1]]
    with pytest.raises(ValueError, match="5 tokens do not fit a row of 4"):
        training_rows([sample([1, 2, 3], [4, 5])], seq_length=4, max_new_tokens=3)


def test_prefix_grouped_rows_layout_and_flops_ratios():
    from dotsllm.model.prefix_grouped_attention import PrefixGroupLayout
    from dotsllm.posttrain.grpo.batch import per_slot, shared_prompt_groups
    from dotsllm.posttrain.grpo.prefix_grouping import attention_flops_ratio, model_flops_ratio, pointwise_flops_ratio

    def sample(draw, prompt, response):
        routing = torch.tensor([[[10 * draw + p]] for p in range(len(prompt) + len(response) - 1)], dtype=torch.int16)
        return Sample(draw, Prompt(tuple(prompt), "", {}, ""), response, [-0.5] * len(response), False, routing)

    samples = [sample(0, [5, 6], [7, 8, 9]), sample(0, [5, 6], [4]), sample(3, [1], [2, 3]), sample(0, [5, 6], [6])]
    groups = shared_prompt_groups(samples)
    assert groups == [[0, 1], [2], [3]]  # runs of one drawn prompt
    rows = training_rows(samples, seq_length=8, max_new_tokens=3, groups=groups)
    assert rows["tokens"][0].tolist() == [5, 6, 7, 8, 9, 4, 0, 0]
    assert rows["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 2, 6, 7]  # each response restarts at len(P)
    assert rows["segment_ids"][0].tolist() == [0, 0, 1, 1, 1, 2, -1, -1]
    # token 0 of every response is predicted from the prompt's last position
    assert rows["logit_index"][0].tolist() == [[1, 2, 3], [1, 0, 0]]
    assert rows["response_tokens"][0].tolist() == [[7, 8, 9], [4, 0, 0]]
    assert rows["sample_index"].tolist() == [[0, 1], [2, -1], [3, -1]]
    assert not rows["response_mask"][1, 1].any()  # a group of one: an empty slot
    # the prompt's routing once (the first sample's), then each response's own (not its last token's)
    assert rows["routing"][0, :, 0, 0].tolist() == [0, 1, 2, 3, 0, 0, 0, 0]
    assert per_slot(torch.tensor([1.0, 2.0, 3.0, 4.0]), rows["sample_index"]).tolist() == [[1, 2], [3, 0], [4, 0]]
    first, single, _ = PrefixGroupLayout.from_segment_ids(rows["segment_ids"]).rows  # what attention reads
    assert (first.prompt_length, first.used_length, first.response_positions.tolist()) == (2, 6, [[2, 3, 4], [5, 5, 5]])
    assert first.response_present.tolist() == [[True] * 3, [True, False, False]]
    assert (single.prompt_length, single.used_length, single.response_positions.tolist()) == (1, 3, [[1, 2]])
    with pytest.raises(ValueError, match="do not share one prompt"):
        training_rows(samples, 8, 3, groups=[[0, 2]])
    assert attention_flops_ratio(16, 1, 8) == pytest.approx((256 + 8 * 33) / (8 * 289))
    assert pointwise_flops_ratio(16, 1, 8) == pytest.approx(24 / 136)
    assert attention_flops_ratio(5, 3, 1) == pointwise_flops_ratio(5, 3, 1) == model_flops_ratio(10, 2, 4, 5, 3, 1) == 1
    assert model_flops_ratio(10**9, 1, 1, 16, 1, 8) == pytest.approx(24 / 136, rel=1e-6)  # matmuls dominate
