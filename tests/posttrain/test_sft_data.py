"""SFT data: the record forms and their field mapping (JSONL and offline ``datasets``), every malformed
kind counted with its line, mixtures and multi-session samples, the first-fit-decreasing packer, and
packed rows with their masks."""

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from dotsllm.chat_template import ChatTemplate, EncodedConversation, Message
from dotsllm.posttrain.sft.data import SampleBuilder, SFTDataConfig, SFTSource, upsample
from dotsllm.posttrain.sft.formats import FieldMap, read_records, to_conversation
from dotsllm.posttrain.sft.packing import block_causal_mask, build_row, collate, cu_seqlens, first_fit_decreasing

BAD = Path(__file__).parents[1] / "data" / "sft_bad.jsonl"
QA = [Message("user", "first word: old map"), Message("assistant", "old")]


def test_each_form_gives_the_conversation():
    records = {
        "openai": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "first word: old map"},
                                {"role": "assistant", "content": "old"}]},
        "sharegpt": {"system": "s", "conversations": [{"from": "human", "value": "first word: old map"},
                                                      {"from": "gpt", "value": "old"}]},
        "alpaca": {"system": "s", "instruction": "first word:", "input": "old map", "output": "old"},
    }  # fmt: skip
    found = {name: to_conversation(r, "f.jsonl", 7).messages for name, r in records.items()}
    assert found["openai"] == found["sharegpt"] == (Message("system", "s"), *QA)
    assert found["alpaca"] == (Message("system", "s"), Message("user", "first word:\n\nold map"), QA[1])
    renamed = FieldMap(messages="dialog", role="speaker", content="text")
    record = {"dialog": [{"speaker": "user", "text": QA[0].content}, {"speaker": "assistant", "text": "old"}]}
    assert to_conversation(record, "f.jsonl", 1, renamed).messages == tuple(QA)


def test_datasets_load_offline_from_local_folders(tmp_path):
    import datasets

    rows = [{"messages": [{"role": m.role, "content": m.content} for m in QA]}] * 3
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for path in (tmp_path / "saved", tmp_path / "plain"):
        records = list(read_records(str(path)))
        assert [line for line, _ in records] == [1, 2, 3]
        assert all(to_conversation(r, str(path), n).messages == tuple(QA) for n, r in records)


def test_every_malformed_kind_is_counted_with_its_line(word_tokenizer):
    config = SFTDataConfig(sources=[SFTSource(str(BAD))], overlong="drop")
    builder = SampleBuilder(ChatTemplate(word_tokenizer), config, seq_length=64)
    kept = builder.conversations(config.sources[0])
    assert [c.line for c in kept] == [1, 7, 9]
    assert [(r.line, r.kind) for r in builder.rejected] == [
        (2, "bad_json"), (3, "missing_role"), (4, "empty_assistant"), (5, "unknown_role"), (6, "too_long"),
        (8, "missing_role"),
    ]  # fmt: skip
    assert builder.counts == Counter(records=9, rejected_bad_json=1, rejected_missing_role=2,
                                     rejected_empty_assistant=1, rejected_unknown_role=1, rejected_too_long=1)  # fmt: skip
    assert "turn 1 has role 'tool'" in builder.rejected[3].reason

    truncating = SampleBuilder(ChatTemplate(word_tokenizer), SFTDataConfig(overlong="truncate"), seq_length=64)
    conversations = truncating.conversations(config.sources[0])
    assert [c.line for c in conversations] == [1, 6, 7, 9]
    long_answer = to_conversation({"messages": [{"role": "user", "content": "q"},
                                                {"role": "assistant", "content": "a " * 100}]}, "f", 10)  # fmt: skip
    samples = truncating.samples([*conversations, long_answer], random.Random(0))
    assert sorted(s.line for s in samples) == [1, 7, 9, 10]  # line 6 lost every answer token to truncation
    assert [s.slots for s in samples if s.line == 10] == [64] and truncating.counts["truncated"] == 1
    assert truncating.rejected[-1].reason == "too_long: no loss token left after truncation"


def test_weights_upsample_and_sessions_concatenate(word_tokenizer):
    conversations = [to_conversation({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant",
                     "content": f"a{i}"}]}, "f", i) for i in range(10)]  # fmt: skip
    assert len(upsample(conversations, 2.5, random.Random(0))) == 25
    assert len(upsample(conversations, 0.3, random.Random(0))) == 3
    assert Counter(c.line for c in upsample(conversations, 2.0, random.Random(0))) == {i: 2 for i in range(10)}

    config = SFTDataConfig(sessions_per_sample=3, loss_mode="assistant")
    builder = SampleBuilder(ChatTemplate(word_tokenizer), config, seq_length=64)
    samples = builder.samples(conversations, random.Random(0))
    assert [s.slots + 1 for s in samples] == [7 + 3 * 6] * 3 + [7 + 6]  # one system block, then the turns
    first = samples[0].encoded
    assert first.ids.count(1) == 1 and first.ids.count(5) == 3 and sum(first.targets) == 6  # 3 answers + ends
    small = SampleBuilder(ChatTemplate(word_tokenizer), config, seq_length=20).samples(conversations, random.Random(0))
    assert [s.slots + 1 for s in small] == [19] * 5  # two sessions fit 21 tokens, three do not


def naive_first_fit_decreasing(lengths, capacity):
    bins, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        b = next((b for b, f in enumerate(free) if f >= lengths[i]), None)
        if b is None:
            bins.append([]), free.append(capacity)
            b = len(bins) - 1
        bins[b].append(i)
        free[b] -= lengths[i]
    return bins


def test_first_fit_decreasing_equals_the_textbook_packer():
    rng = random.Random(0)
    for n, capacity in ((1, 8), (37, 64), (500, 256)):
        lengths = [rng.randint(1, capacity) for _ in range(n)]
        bins = first_fit_decreasing(lengths, capacity)
        assert bins == naive_first_fit_decreasing(lengths, capacity)
        assert sorted(i for b in bins for i in b) == list(range(n))
        assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    assert first_fit_decreasing([5, 4, 3, 3, 2, 2, 1], 8) == [[0, 2], [1, 3, 6], [4, 5]]
    with pytest.raises(ValueError, match="every length must be in 1..8"):
        first_fit_decreasing([9], 8)


def test_packed_rows_restart_positions_and_mask_each_conversation():
    a = EncodedConversation([1, 10, 11, 12], [False, False, True, True])
    b = EncodedConversation([1, 20, 21], [False, True, True])
    row = build_row([a, b], seq_length=8)
    assert row["tokens"].tolist() == [1, 10, 11, 1, 20, 0, 0, 0]
    assert row["labels"].tolist() == [10, 11, 12, 20, 21, 0, 0, 0]
    assert row["loss_mask"].tolist() == [0, 1, 1, 1, 1, 0, 0, 0]
    assert row["position_ids"].tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    assert row["segment_ids"].tolist() == [0, 0, 0, 1, 1, -1, -1, -1]
    batch = collate([row, build_row([b], seq_length=8)])
    allowed = ~block_causal_mask(batch["segment_ids"])[0, 0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    for start, end in ((0, 3), (3, 5), (5, 8)):
        expected[start:end, start:end] = torch.ones(end - start, end - start).tril().bool()
    assert torch.equal(allowed, expected)
    assert cu_seqlens(batch["segment_ids"]).tolist() == [0, 3, 5, 8, 10, 16]
    with pytest.raises(ValueError, match="do not fit a row of 4"):
        build_row([a, b], seq_length=4)
