"""The completion without its stop token, and a chat session's turns (dots1-tiny, fp32, one process)."""

import pytest
import torch

from dotsllm.inference import GenerationRequest, GenerationResult, SamplingParams, completion_ids, generate
from dotsllm.inference.chat import ChatSession
from dotsllm.chat_template import END_RESPONSE, ChatTemplate, Message
from dotsllm.tokenizer import CHAT_TOKENS


def test_completion_drops_the_stop_token_only_when_generation_stopped_on_it():
    assert completion_ids([5, 6, 7], stopped=True) == [5, 6]
    assert completion_ids((5, 6, 7), stopped=False) == [5, 6, 7]
    assert completion_ids([], stopped=False) == []
    with pytest.raises(ValueError, match="no tokens"):
        completion_ids([], stopped=True)
    assert GenerationResult([5, 6, 7], [0.0] * 3, "stop").completion == [5, 6]
    assert GenerationResult([5, 6, 7], [0.0] * 3, "length").completion == [5, 6, 7]


class WordTokenizer:
    """One token per word (ids from 4000), other ids decode as ``t{id}``;
    the chat tokens 1-6, ``<|endofresponse|>`` optionally another id."""

    def __init__(self, stop_id=None):
        self.words: dict[str, int] = {}
        self.stop_id = stop_id

    def encode(self, text):
        return [self.words.setdefault(w, 4000 + len(self.words)) for w in text.split()]

    def decode(self, ids):
        names = {i: w for w, i in self.words.items()}
        return " ".join(names.get(i, f"t{i}") for i in ids)

    def special_ids(self, names):
        ids = {name: CHAT_TOKENS.index(name) + 1 for name in names}
        return {**ids, END_RESPONSE: self.stop_id} if self.stop_id is not None else ids


@pytest.fixture(scope="module")
def model(megatron_world):
    from dotsllm.model import Dots1ModelConfig
    from dotsllm.model.builder import build_model

    torch.manual_seed(11)
    return build_model(Dots1ModelConfig.from_preset("dots1-tiny"), backend="local").eval()


def continuation(model, template, messages, params, seed=0):
    prompt = template.generation_prompt(messages)
    return generate(model, [GenerationRequest(prompt, params, seed=seed)])[0].tokens


def test_session_keeps_the_conversation_and_seeds_each_turn(model):
    template = ChatTemplate(WordTokenizer())
    params = SamplingParams(temperature=0.8, top_k=50, max_new_tokens=4)
    session = ChatSession(model, template, params, seed=5)
    assert session.params.stop_token_ids == (template.stop_id,)
    first = session.answer("hi there")
    second = session.answer("again")
    asked = [Message("user", "hi there"), Message("assistant", first), Message("user", "again")]
    assert session.messages == [*asked, Message("assistant", second)]
    stopping = SamplingParams(temperature=0.8, top_k=50, max_new_tokens=4, stop_token_ids=[template.stop_id])
    tokens = continuation(model, template, asked[:1], stopping, seed=6)
    assert first == template.tokenizer.decode(tokens)
    assert second == template.tokenizer.decode(continuation(model, template, asked, stopping, seed=8))


def test_reply_ends_before_the_stop_token(model):
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    free = continuation(model, ChatTemplate(WordTokenizer()), [Message("user", "hi")], greedy)
    stop = free[2]  # <|endofresponse|> is the third greedy token: the prompt does not hold it
    template = ChatTemplate(WordTokenizer(stop_id=stop))
    reply = ChatSession(model, template, greedy).answer("hi")
    assert reply == template.tokenizer.decode(free[: free.index(stop)])
