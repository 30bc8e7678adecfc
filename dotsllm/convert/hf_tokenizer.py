"""A dotsllm tokenizer as HF tokenizer files whose ``apply_chat_template`` gives dotsllm's chat ids.

A HF ``tokenizer.json`` is copied as it is; a SentencePiece ``.model`` is converted with transformers'
``SpmConverter.build_tokenizer_from_spm_proto`` (which follows the model's own normalizer settings),
plus what that leaves out: SentencePiece's ``split_digits``, and the six dots chat tokens as added
special tokens, so that text between them is encoded on its own, as :mod:`dotsllm.chat_template` does.
``tokenizer_config.json`` gets the chat template (:func:`dotsllm.chat_template.jinja_template`) and
``<|endofresponse|>`` as the end-of-sequence token. The written files are checked: a sample
conversation must give the same ids through transformers as through dotsllm.
"""

from __future__ import annotations

import json
from pathlib import Path

from dotsllm import chat_template as chat
from dotsllm.tokenizer import CHAT_TOKENS, Tokenizer

SAMPLE = [
    chat.Message("user", "Repeat 12 words:  the old farmer\tsaw 3 boats."),
    chat.Message("assistant", " the old farmer saw 3 boats"),
    chat.Message("user", "And again?"),
    chat.Message("assistant", "yes"),
]


def sentencepiece_to_hf(model_path: str | Path):
    """A ``tokenizers.Tokenizer`` encoding like the SentencePiece model, the chat tokens added as special."""
    from tokenizers import AddedToken, Regex, pre_tokenizers

    try:
        from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf
    except ImportError as e:
        raise ImportError("converting a SentencePiece tokenizer needs transformers: pip install transformers") from e

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(Path(model_path).read_bytes())
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    tokenizer = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    if proto.trainer_spec.split_digits:  # SentencePiece never puts two digits in one piece
        digits = pre_tokenizers.Split(Regex(r"[0-9]"), behavior="isolated")
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([tokenizer.pre_tokenizer, digits])
    present = [name for name in CHAT_TOKENS if name in vocab]
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in present])
    return tokenizer


def write_hf_tokenizer(tokenizer_path: str | Path, out_dir: str | Path, default_system: str | None = chat.DEFAULT_SYSTEM) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (with the chat template) into ``out_dir``."""
    source = Tokenizer(tokenizer_path)
    template = chat.ChatTemplate(source, default_system)  # errors naming missing chat tokens
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if str(tokenizer_path).endswith(".json"):
        (out / "tokenizer.json").write_bytes(Path(tokenizer_path).read_bytes())
    else:
        sentencepiece_to_hf(tokenizer_path).save(str(out / "tokenizer.json"))
    add_chat_template(out, default_system)
    check_chat_ids(out, template)
    return out


def has_chat_tokens(tokenizer_json: str | Path) -> bool:
    from tokenizers import Tokenizer as HFTokenizer

    tokenizer = HFTokenizer.from_file(str(tokenizer_json))
    return all(tokenizer.token_to_id(name) is not None for name in CHAT_TOKENS)


def add_chat_template(hf_dir: str | Path, default_system: str | None = chat.DEFAULT_SYSTEM) -> Path:
    """Set ``chat_template`` and the end-of-sequence token in ``hf_dir/tokenizer_config.json`` (created if absent)."""
    path = Path(hf_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {"tokenizer_class": "PreTrainedTokenizerFast"}
    config.update(chat_template=chat.jinja_template(default_system), eos_token=chat.END_RESPONSE)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return path


def check_chat_ids(hf_dir: str | Path, template: chat.ChatTemplate) -> None:
    """Raise unless transformers' ``apply_chat_template`` on ``hf_dir`` gives ``template``'s ids."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ImportError("writing a HF tokenizer needs transformers: pip install transformers") from e

    hf = AutoTokenizer.from_pretrained(str(hf_dir))
    messages = [{"role": m.role, "content": m.content} for m in SAMPLE]
    got = list(hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    want = template.encode(SAMPLE).ids
    if got != want:
        raise ValueError(f"{hf_dir}: apply_chat_template gives {got}, dotsllm's chat template {want}")
