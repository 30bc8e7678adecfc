"""dotsllm's one tokenizer reader: the end-of-document rule shared by data pipeline and trainer, and
the dots chat tokens reserved as whole pieces by trained tokenizers."""

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from dotsllm.tokenizer import CHAT_TOKENS, Tokenizer, train_sentencepiece
from dotsllm.training.data import DataConfig, TokenizerInfo

TEXT = ["The old captain repaired the boat, then he left for the harbour.", "在公园里，我们讨论了天气。"] * 50


def word_level(tmp_path, specials):
    vocab = {**{s: i for i, s in enumerate(specials)}, **{f"w{i}": len(specials) + i for i in range(50)}, "[UNK]": 99}
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def test_trained_tokenizer_keeps_the_chat_tokens_whole(tmp_path):
    path = train_sentencepiece(TEXT, str(tmp_path / "sp"), vocab_size=400, threads=1)
    tokenizer = Tokenizer(path)
    ids = tokenizer.special_ids(CHAT_TOKENS)
    assert len(set(ids.values())) == 6 and tokenizer.eod not in ids.values()
    text = "<|userprompt|>Where is the boat?<|endofuserprompt|><|response|>In the harbour.<|endofresponse|>"
    encoded = tokenizer.encode(text)
    assert [i for i in encoded if i in ids.values()] == [ids[t] for t in CHAT_TOKENS[2:]]
    assert tokenizer.decode(encoded) == text
    assert tokenizer.token_id("<|nope|>") is None


def test_data_pipeline_and_trainer_take_the_same_end_of_document(tmp_path):
    """A tokenizer.json with `</s>` but no `<|endoftext|>`: the shard writer and the trainer agree."""
    from datatrove.data import Document
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from data_pipeline.steps.tokenize import MegatronShardWriter

    path = word_level(tmp_path, ["<pad>", "</s>"])
    assert Tokenizer(path).eod == 1
    writer = MegatronShardWriter(str(tmp_path / "tokens"), path)
    list(writer.run(iter([Document(text="w1 w2", id="0")])))
    shard = IndexedDataset(str(tmp_path / "tokens" / "00000"))  # kept alive: documents are views of its mmap
    assert shard[0].tolist() == [3, 4, 1]
    assert TokenizerInfo.from_config(DataConfig(tokenizer=path)).eod == 1
    assert TokenizerInfo.from_config(DataConfig(tokenizer=path, eod_token="<pad>")).eod == 0
    with pytest.raises(ValueError, match="data.eod_id is 5, but tokenizer .* has 1"):
        TokenizerInfo.from_config(DataConfig(tokenizer=path, eod_id=5))


def test_missing_tokens_are_named(tmp_path):
    path = word_level(tmp_path, ["<pad>"])
    with pytest.raises(ValueError, match=r"has none of \['<\|endoftext\|>', '</s>', '<eos>', '<\|eos\|>'\]"):
        Tokenizer(path)
    tokenizer = Tokenizer(path, eod_token="<pad>")
    with pytest.raises(ValueError, match=r"lacks the special token\(s\) \['<\|system\|>', '<\|endofsystem\|>'"):
        tokenizer.special_ids(CHAT_TOKENS)
