"""Token shards: decoding each document's tokens gives back `docs/`; megatron-core reads them."""

import glob
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from dp_planted import read_jsonl

from dotsllm.tokenizer import Tokenizer


def test_shards_round_trip_to_the_kept_documents(planted_run):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tokenizer = Tokenizer(str(planted_run / "tokenizer.model"))
    assert tokenizer.vocab_size <= 8192
    prefixes = sorted(p.removesuffix(".idx") for p in glob.glob(f"{planted_run}/tokens/*.idx"))
    assert [p.rsplit("/", 1)[1] for p in prefixes] == ["00000", "00001", "00002"]
    total = 0
    for prefix in prefixes:
        docs = read_jsonl(f"{planted_run}/docs/{prefix.rsplit('/', 1)[1]}.jsonl")
        dataset = IndexedDataset(prefix)
        assert len(dataset) == len(docs) > 0
        for i, doc in enumerate(docs):
            ids = dataset[i].tolist()
            assert ids[-1] == tokenizer.eod and tokenizer.eod not in ids[:-1]
            assert tokenizer.decode(ids[:-1]) == doc["text"]
        total += int(dataset.sequence_lengths.sum())
    assert total == read_manifest_tokens(planted_run)


def read_manifest_tokens(out):
    import json

    return json.loads((out / "manifest.json").read_text())["totals"]["tokens"]


@dataclass(frozen=True)
class _TokenizerInfo:  # what GPTDataset asks of a tokenizer
    vocab_size: int
    eod: int
    pad: int = -1

    @property
    def unique_identifiers(self):
        return OrderedDict(vocab_size=self.vocab_size, eod=self.eod)


def test_gpt_dataset_builds_samples_from_the_shards(planted_run, tmp_path):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tokenizer = Tokenizer(str(planted_run / "tokenizer.model"))
    prefix = f"{planted_run}/tokens/00000"  # one shard: a blend of several needs torch.distributed
    config = GPTDatasetConfig(
        random_seed=1, sequence_length=64, blend=([prefix], None), split="1,0,0", path_to_cache=str(tmp_path),
        tokenizer=_TokenizerInfo(tokenizer.vocab_size, tokenizer.eod), reset_position_ids=False,
        reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [20, 0, 0], lambda: True, config).build()
    assert len(train) >= 20
    documents = [d.astype(np.uint16).tobytes() for d in IndexedDataset(prefix)]
    for i in range(len(train)):
        tokens, labels = train[i]["tokens"].numpy(), train[i]["labels"].numpy()
        assert tokens.shape == labels.shape == (64,)
        assert np.array_equal(tokens[1:], labels[:-1])
        # a sample concatenates documents: each piece between end-of-document tokens lies inside one document
        span = np.append(tokens, labels[-1])
        pieces = np.split(span, np.flatnonzero(span == tokenizer.eod) + 1)
        for piece in filter(len, pieces):
            assert any(piece.astype(np.uint16).tobytes() in d for d in documents)
