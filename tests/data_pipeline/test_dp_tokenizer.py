"""Tokenizer files: HF `tokenizers` JSON as well as SentencePiece, into Megatron shards."""

import numpy as np
import pytest
from datatrove.data import Document
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from data_pipeline.steps.tokenize import MegatronShardWriter
from dotsllm.tokenizer import Tokenizer

TEXTS = ["The old captain repaired the boat.\nThen he left.", "在公园里，我们讨论了天气。", "x  y\t z"]


@pytest.fixture
def hf_tokenizer(tmp_path):
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 20, trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def test_hf_tokenizer_round_trips_and_names_its_end_of_document(hf_tokenizer):
    tokenizer = Tokenizer(hf_tokenizer)
    assert tokenizer.eod == 0 and tokenizer.vocab_size == 300
    assert [tokenizer.decode(ids) for ids in tokenizer.encode_batch(TEXTS)] == TEXTS
    with pytest.raises(ValueError, match="no end-of-document token '<eos>'"):
        Tokenizer(hf_tokenizer, eod_token="<eos>")


def test_shard_writer_appends_one_end_of_document_per_document(hf_tokenizer, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    docs = [Document(text=t, id=str(i)) for i, t in enumerate(TEXTS)]
    writer = MegatronShardWriter(str(tmp_path / "tokens"), hf_tokenizer, batch_size=2)
    assert [d.id for d in writer.run(iter(docs), rank=3, world_size=4)] == ["0", "1", "2"]
    dataset = IndexedDataset(str(tmp_path / "tokens" / "00003"))
    tokenizer = Tokenizer(hf_tokenizer)
    assert len(dataset) == 3 and dataset.document_indices.tolist() == [0, 1, 2, 3]  # written over two batches
    for text, ids in zip(TEXTS, dataset):
        assert ids[-1] == tokenizer.eod and tokenizer.decode(ids[:-1].tolist()) == text
    assert dataset.index.dtype == np.uint16
    assert writer.stats["tokens"].total == int(dataset.sequence_lengths.sum())


def test_no_shard_for_a_task_without_documents(hf_tokenizer, tmp_path):
    assert list(MegatronShardWriter(str(tmp_path / "tokens"), hf_tokenizer).run(iter([]), rank=0)) == []
    assert not (tmp_path / "tokens").exists()
