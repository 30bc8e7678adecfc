"""The one tokenizer reader of dotsllm (data pipeline, trainer, evaluation, chat): a SentencePiece
``.model`` or a HF ``tokenizer.json``, its end-of-document id, and the dots chat special tokens.

End of document: the token named ``eod_token`` when given; otherwise a SentencePiece model's eos
piece, or the first of :data:`EOD_CANDIDATES` a ``tokenizer.json`` has. Tokenizers trained here
(:func:`train_sentencepiece`) reserve the dots.llm1 chat tokens as whole pieces.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

# dots.llm1.inst's chat format (llama.cpp LLM_CHAT_TEMPLATE_DOTS1, ms-swift `dots1`)
CHAT_TOKENS = (
    "<|system|>", "<|endofsystem|>", "<|userprompt|>", "<|endofuserprompt|>", "<|response|>", "<|endofresponse|>",
)  # fmt: skip
EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>")


class Tokenizer:
    """Encoding, decoding, vocabulary size, the end-of-document id and special tokens by name."""

    def __init__(self, path: str | Path, eod_token: str | None = None):
        self.path = str(path)
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"tokenizer {self.path} does not exist")
        if self.path.endswith(".json"):
            from tokenizers import Tokenizer as HFTokenizer

            self._hf, self._sp = HFTokenizer.from_file(self.path), None
            self.vocab_size = self._hf.get_vocab_size()
        else:
            import sentencepiece

            self._hf, self._sp = None, sentencepiece.SentencePieceProcessor(model_file=self.path)
            self.vocab_size = self._sp.get_piece_size()
        self.eod = self._find_eod(eod_token)

    def _find_eod(self, eod_token: str | None) -> int:
        if eod_token is not None:
            token_id = self.token_id(eod_token)
            if token_id is None:
                raise ValueError(f"tokenizer {self.path} has no end-of-document token {eod_token!r}")
            return token_id
        if self._sp is not None:
            if self._sp.eos_id() < 0:
                raise ValueError(f"SentencePiece model {self.path} has no eos piece to end documents with")
            return self._sp.eos_id()
        for name in EOD_CANDIDATES:
            if (token_id := self.token_id(name)) is not None:
                return token_id
        raise ValueError(f"tokenizer {self.path} has none of {list(EOD_CANDIDATES)}; name its end-of-document token")

    def token_id(self, piece: str) -> int | None:
        """The id of a whole piece (a special token), or None when the vocabulary lacks it."""
        if self._hf is not None:
            return self._hf.token_to_id(piece)
        token_id = self._sp.piece_to_id(piece)
        return None if token_id == self._sp.unk_id() and piece != self._sp.id_to_piece(token_id) else token_id

    def special_ids(self, names: Sequence[str]) -> dict[str, int]:
        """The ids of ``names``; a clear error naming every one the vocabulary lacks."""
        ids = {name: self.token_id(name) for name in names}
        missing = [name for name, token_id in ids.items() if token_id is None]
        if missing:
            raise ValueError(f"tokenizer {self.path} lacks the special token(s) {missing}")
        return ids

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._sp is not None:
            return self._sp.encode(texts)
        return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids) if self._sp is not None else self._hf.decode(ids, skip_special_tokens=False)


def train_sentencepiece(texts: Iterable[str], model_prefix: str, vocab_size: int = 8192, threads: int = 2) -> str:
    """Train a byte-fallback BPE model on ``texts`` without normalization (decode(encode(t)) == t), with
    the dots chat tokens as whole pieces; returns the model's path."""
    import sentencepiece

    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=(line for text in texts for line in text.split("\n") if line.strip()),
        model_prefix=model_prefix,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=["\n", *CHAT_TOKENS],
        character_coverage=0.9995,
        hard_vocab_limit=False,  # a small sample may support fewer pieces than asked
        num_threads=threads,
        minloglevel=2,
    )
    return f"{model_prefix}.model"


def check_vocabulary(tokenizer_vocab: int, model_vocab: int, tokenizer: str) -> None:
    """A tokenizer's ids must be rows of the model's embedding (which may be padded past them)."""
    if tokenizer_vocab > model_vocab:
        raise ValueError(
            f"{tokenizer} has {tokenizer_vocab} tokens, more than the model's vocab_size {model_vocab}: "
            "the model was built for another tokenizer"
        )
