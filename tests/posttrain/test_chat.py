"""The dots chat template: the exact rendering, the loss targets of each mode token by token, and a
HF export whose ``apply_chat_template`` gives dotsllm's ids."""

import pytest

from dotsllm import chat_template as chat
from dotsllm.chat_template import ChatTemplate, Message
from dotsllm.tokenizer import Tokenizer, train_sentencepiece

THREE_TURNS = [
    Message("system", "Be brief."),
    Message("user", "hi there"),
    Message("assistant", "hello"),
    Message("user", "again"),
    Message("assistant", "ok bye"),
    Message("user", "last one"),
    Message("assistant", "done"),
]


def test_three_turns_render_exactly():
    assert chat.render(THREE_TURNS) == (
        "<|system|>Be brief.<|endofsystem|>"
        "<|userprompt|>hi there<|endofuserprompt|><|response|>hello<|endofresponse|>"
        "<|userprompt|>again<|endofuserprompt|><|response|>ok bye<|endofresponse|>"
        "<|userprompt|>last one<|endofuserprompt|><|response|>done<|endofresponse|>"
    )
    assert chat.render(THREE_TURNS[1:3], add_generation_prompt=True) == (
        "<|system|>You are a helpful assistant.<|endofsystem|>"
        "<|userprompt|>hi there<|endofuserprompt|><|response|>hello<|endofresponse|><|response|>"
    )
    assert chat.render(THREE_TURNS[1:2], default_system=None) == "<|userprompt|>hi there<|endofuserprompt|>"


def test_jinja_template_renders_the_same_text():
    import jinja2

    env = jinja2.Environment()
    env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(ValueError(message))
    for default_system in (chat.DEFAULT_SYSTEM, "It's \"quoted\" {{ }}", None):
        template = env.from_string(chat.jinja_template(default_system))
        for messages in (THREE_TURNS, THREE_TURNS[1:5]):
            for generation in (False, True):
                plain = [{"role": m.role, "content": m.content} for m in messages]
                rendered = template.render(messages=plain, add_generation_prompt=generation)
                assert rendered == chat.render(messages, generation, default_system)
    with pytest.raises(ValueError, match="unknown role: tool"):
        env.from_string(chat.jinja_template()).render(messages=[{"role": "tool", "content": "x"}])


# 0 <|system|> 1 Be 2 brief. 3 <|endofsystem|> 4 <|userprompt|> 5 hi 6 there 7 <|endofuserprompt|>
# 8 <|response|> 9 hello 10 <|endofresponse|> 11 <|userprompt|> 12 again 13 <|endofuserprompt|>
# 14 <|response|> 15 ok 16 bye 17 <|endofresponse|> 18 <|userprompt|> 19 last 20 one
# 21 <|endofuserprompt|> 22 <|response|> 23 done 24 <|endofresponse|>
EXPECTED_TARGETS = {
    "assistant": {9, 10, 15, 16, 17, 23, 24},
    "last": {23, 24},
    "all": set(range(1, 25)),
}


@pytest.mark.parametrize("mode", sorted(EXPECTED_TARGETS))
def test_loss_targets_are_exactly_the_expected_positions(mode, word_tokenizer):
    encoded = ChatTemplate(word_tokenizer).encode(THREE_TURNS, mode)
    assert len(encoded) == 25
    assert encoded.ids[:4] == [1, 100, 101, 2] and encoded.ids[22:] == [5, encoded.ids[23], 6]
    assert {i for i, t in enumerate(encoded.targets) if t} == EXPECTED_TARGETS[mode]


def test_default_system_and_generation_prompt_tokens(word_tokenizer):
    template = ChatTemplate(word_tokenizer)
    encoded = template.encode(THREE_TURNS[1:3])  # no system message: the default one
    # <|system|> You are a helpful assistant. <|endofsystem|> <|userprompt|> hi there <|endofuserprompt|> ...
    assert encoded.ids[0] == 1 and encoded.ids[6] == 2 and len(encoded) == 14
    assert {i for i, t in enumerate(encoded.targets) if t} == {12, 13}
    assert template.generation_prompt(THREE_TURNS[1:2]) == [*template.encode(THREE_TURNS[1:2]).ids, 5]
    assert template.stop_id == 6
    with pytest.raises(ValueError, match="loss mode must be one of"):
        template.encode(THREE_TURNS, "answers")


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    text = ["The old captain repaired the boat in 1984, then he left for the harbour.", "be brief and again"] * 50
    return train_sentencepiece(text, str(tmp_path_factory.mktemp("sp") / "sp"), vocab_size=300, threads=1)


def test_exported_hf_tokenizer_applies_the_same_ids(sentencepiece_model, tmp_path):
    from transformers import AutoTokenizer

    from dotsllm.convert.hf_tokenizer import write_hf_tokenizer

    out = write_hf_tokenizer(sentencepiece_model, tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(str(out))
    template = ChatTemplate(Tokenizer(sentencepiece_model))
    plain = [{"role": m.role, "content": m.content} for m in THREE_TURNS]
    ids = hf.apply_chat_template(plain, tokenize=True, return_dict=True)["input_ids"]
    assert list(ids) == template.encode(THREE_TURNS).ids
    prompt = hf.apply_chat_template(plain[1:2], tokenize=True, add_generation_prompt=True, return_dict=True)
    assert list(prompt["input_ids"]) == template.generation_prompt(THREE_TURNS[1:2])
    assert hf.eos_token == "<|endofresponse|>" and hf.convert_tokens_to_ids(hf.eos_token) == template.stop_id
    # plain text still encodes as SentencePiece does
    text = "The captain left in 1984,  then the boat."
    assert hf(text, add_special_tokens=False)["input_ids"] == Tokenizer(sentencepiece_model).encode(text)


def test_a_tokenizer_without_the_chat_tokens_is_named(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    path = tmp_path / "tokenizer.json"
    HFTokenizer(models.WordLevel({"<|endoftext|>": 0, "<|system|>": 1, "w": 2}, unk_token="<|endoftext|>")).save(str(path))
    with pytest.raises(ValueError, match=r"lacks the special token\(s\) \['<\|endofsystem\|>', '<\|userprompt\|>'"):
        ChatTemplate(Tokenizer(path))
