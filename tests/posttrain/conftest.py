import pytest

from dotsllm.tokenizer import CHAT_TOKENS


class WordTokenizer:
    """One token per word (ids from 100), the chat tokens 1-6: positions can be counted by hand."""

    def __init__(self):
        self.words: dict[str, int] = {}

    def encode(self, text):
        return [self.words.setdefault(w, 100 + len(self.words)) for w in text.split()]

    def special_ids(self, names):
        return {name: CHAT_TOKENS.index(name) + 1 for name in names}


@pytest.fixture
def word_tokenizer():
    return WordTokenizer()
