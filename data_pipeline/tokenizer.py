"""Tokenizer files for the shards: SentencePiece `.model` or HF `tokenizers` `.json`, and SentencePiece training."""

from collections.abc import Iterable
from dataclasses import dataclass

import sentencepiece as spm


@dataclass
class Tokenizer:
    """Batch encoding, decoding and the end-of-document id, whatever the file kind."""

    path: str
    eod_token: str | None = None  # HF tokenizers only; SentencePiece uses its eos piece

    def __post_init__(self):
        if self.path.endswith(".json"):
            from tokenizers import Tokenizer as HFTokenizer

            self._hf = HFTokenizer.from_file(self.path)
            self._sp = None
            token = self.eod_token or "<|endoftext|>"
            self.eod = self._hf.token_to_id(token)
            if self.eod is None:
                raise ValueError(f"tokenizer {self.path} has no end-of-document token {token!r} (tokenize.eod_token)")
            self.vocab_size = self._hf.get_vocab_size()
        else:
            self._sp = spm.SentencePieceProcessor(model_file=self.path)
            self.eod = self._sp.eos_id()
            if self.eod < 0:
                raise ValueError(f"SentencePiece model {self.path} has no eos piece to use as end-of-document")
            self.vocab_size = self._sp.get_piece_size()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._sp is not None:
            return self._sp.encode(texts)
        return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids) if self._sp is not None else self._hf.decode(ids)


def train_sentencepiece(texts: Iterable[str], model_prefix: str, vocab_size: int = 8192, threads: int = 2) -> str:
    """Trains a byte-fallback BPE model on `texts` without normalization (decode(encode(t)) == t); returns its path."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=(line for text in texts for line in text.split("\n") if line.strip()),
        model_prefix=model_prefix,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=["\n"],
        character_coverage=0.9995,
        hard_vocab_limit=False,  # a small sample may support fewer pieces than asked
        num_threads=threads,
        minloglevel=2,
    )
    return f"{model_prefix}.model"
