"""Optional stage before tokenization: trains the SentencePiece BPE tokenizer on the filtered documents."""

import glob
import itertools
import os

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data_pipeline.steps.reader import iter_texts
from dotsllm.tokenizer import train_sentencepiece


class TrainTokenizer(PipelineStep):
    """Trains `<model_path>` (a `.model` file) on the `text` of every JSONL(.gz) document under `folder`."""

    name = "🔤 Train tokenizer"
    type = "🔢 - TOKENIZER"

    def __init__(self, folder: str, model_path: str, vocab_size: int = 8192):
        super().__init__()
        if not model_path.endswith(".model"):
            raise ValueError(f"tokenizer path {model_path!r} must end with .model")
        self.folder = folder
        self.model_path = model_path
        self.vocab_size = vocab_size

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        texts = iter_texts([self.folder]) if glob.glob(f"{self.folder}/*.jsonl*") else iter(())
        first = next(texts, None)
        if first is None:  # nothing kept: no tokenizer, and the final stage writes no shard
            self.stat_update("no_documents")
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.model_path)), exist_ok=True)
        with self.track_time():
            prefix = self.model_path.removesuffix(".model")
            train_sentencepiece(itertools.chain([first], texts), prefix, self.vocab_size)
