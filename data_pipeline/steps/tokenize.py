"""Stage 8: tokenization into Megatron `.bin/.idx` shards, an end-of-document token after each document."""

import itertools

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.tokens.megatron_tokenizer import MegatronTokenizedFile
from datatrove.utils.batching import batched

from dotsllm.tokenizer import Tokenizer


class MegatronShardWriter(PipelineStep):
    """Writes `<output_folder>/<rank>.bin/.idx` with datatrove's Megatron file writer; passes documents on.

    datatrove's `MegatronDocumentTokenizer` takes HF tokenizers only; this step also takes
    SentencePiece models, which dots.llm1-style tokenizer training produces.
    """

    name = "🔢 Megatron shards"
    type = "🔢 - TOKENIZER"

    def __init__(self, output_folder: str, tokenizer: str, eod_token: str | None = None, batch_size: int = 256):
        super().__init__()
        self.output_folder = output_folder
        self.tokenizer = tokenizer  # loaded in `run`: a trained tokenizer appears only after earlier stages
        self.eod_token = eod_token
        self.batch_size = batch_size

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        tokenizer = shard = None  # neither for a task that keeps no document
        for batch in batched(data, self.batch_size):
            with self.track_time(unit="batch"):
                if shard is None:
                    tokenizer = Tokenizer(self.tokenizer, self.eod_token)
                    token_size = 2 if tokenizer.vocab_size <= 65535 else 4
                    shard = MegatronTokenizedFile(self.output_folder, f"{rank:05d}", token_size=token_size)
                encoded = tokenizer.encode_batch([doc.text for doc in batch])
                self.stat_update("tokens", value=append_documents(shard, encoded, tokenizer.eod))
            yield from batch
        if shard is not None:
            shard.close()


def append_documents(shard: MegatronTokenizedFile, encoded: list[list[int]], eod: int) -> int:
    """Appends documents to `shard`, each followed by `eod`; returns the tokens written.

    What `MegatronTokenizedFile.write` does for one document, for a batch in one numpy conversion and one
    file write: per document, those cost ~3% of the tokenizer's own time (bench/bench_data_pipeline.py)."""
    lengths = [len(ids) + 1 for ids in encoded]
    for ids in encoded:
        ids.append(eod)
    tokens = sum(lengths)
    shard.bin_file.write(np.fromiter(itertools.chain.from_iterable(encoded), shard.token_dtype, tokens).tobytes())
    shard.sequence_lengths += lengths
    first = len(shard.document_indices)  # document_indices[k] = number of sequences after document k
    shard.document_indices += range(first, first + len(encoded))
    return tokens
