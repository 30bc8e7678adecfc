"""A dotsllm tokenizer as HF tokenizer files whose ``apply_chat_template`` gives dotsllm's chat ids,
and the token ids a HF generation with them needs.

A SentencePiece ``.model`` is converted with transformers' ``SpmConverter.build_tokenizer_from_spm_proto``
(which follows the model's own normalizer settings), plus what that leaves out: SentencePiece's
``split_digits``; a HF ``tokenizer.json`` is taken as it is. Either way the six dots chat tokens and
the end-of-document token (:class:`dotsllm.tokenizer.Tokenizer`'s rule) are marked special, so that
text between the chat tokens is encoded on its own, as :mod:`dotsllm.chat_template` does, and decoding
with ``skip_special_tokens`` drops them. ``tokenizer_config.json`` gets the chat template
(:func:`dotsllm.chat_template.jinja_template`), ``<|endofresponse|>`` as the end-of-sequence token, the
end of document as the pad token (see :func:`generation_ids`) and the chat tokens as additional special
tokens. The written files are checked: a sample conversation must give the same ids through
transformers as through dotsllm, and transformers must know the special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    from tokenizers import Regex, pre_tokenizers

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
    mark_special(tokenizer, CHAT_TOKENS)
    return tokenizer


def mark_special(tokenizer, names) -> None:
    """Make the pieces ``names`` of a ``tokenizers.Tokenizer`` special added tokens (ids kept; absent ones skipped)."""
    from tokenizers import AddedToken

    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    names = [name for name in names if tokenizer.token_to_id(name) is not None and name not in special]
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in names])


def write_hf_tokenizer(tokenizer_path: str | Path, out_dir: str | Path, default_system: str | None = chat.DEFAULT_SYSTEM) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (chat template, special tokens) into ``out_dir``."""
    from tokenizers import Tokenizer as HFTokenizer

    source = Tokenizer(tokenizer_path)
    template = chat.ChatTemplate(source, default_system)  # errors naming missing chat tokens
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if str(tokenizer_path).endswith(".json"):
        hf = HFTokenizer.from_file(str(tokenizer_path))
    else:
        hf = sentencepiece_to_hf(tokenizer_path)
    eod = hf.id_to_token(source.eod)
    mark_special(hf, [*CHAT_TOKENS, eod])
    hf.save(str(out / "tokenizer.json"))
    add_chat_template(out, default_system, pad_token=eod)
    check_chat_ids(out, template)
    check_special_tokens(out, generation_ids(out, source.eod))
    return out


def has_chat_tokens(tokenizer_json: str | Path) -> bool:
    from tokenizers import Tokenizer as HFTokenizer

    tokenizer = HFTokenizer.from_file(str(tokenizer_json))
    return all(tokenizer.token_to_id(name) is not None for name in CHAT_TOKENS)


def complete_copied_tokenizer(hf_dir: str | Path) -> int | None:
    """HF tokenizer files copied into ``hf_dir`` as they are: where ``tokenizer.json``'s vocabulary has
    the chat tokens, :func:`add_chat_template` (the end of document as pad where none is named).
    Returns the end-of-document id (:class:`dotsllm.tokenizer.Tokenizer`'s rule; None: no ``tokenizer.json``
    or no such token)."""
    from tokenizers import Tokenizer as HFTokenizer

    path = Path(hf_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        eod = Tokenizer(path).eod
    except ValueError:
        eod = None
    if has_chat_tokens(path):
        add_chat_template(hf_dir, pad_token=None if eod is None else HFTokenizer.from_file(str(path)).id_to_token(eod))
    return eod


def add_chat_template(
    hf_dir: str | Path, default_system: str | None = chat.DEFAULT_SYSTEM, pad_token: str | None = None
) -> Path:
    """Set ``chat_template``, ``<|endofresponse|>`` as the end-of-sequence token and the chat tokens as
    additional special tokens in ``hf_dir/tokenizer_config.json`` (created if absent); ``pad_token``
    where it names none."""
    path = Path(hf_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {"tokenizer_class": "PreTrainedTokenizerFast"}
    # additional_special_tokens: the name transformers 4 reads, and 5 too (as a list of extra_special_tokens)
    key = "extra_special_tokens" if isinstance(config.get("extra_special_tokens"), list) else None
    key = key or "additional_special_tokens"
    extra = [_content(t) for t in config.get(key) or []]
    config.update(chat_template=chat.jinja_template(default_system), eos_token=chat.END_RESPONSE)
    config[key] = [*extra, *(name for name in CHAT_TOKENS if name not in extra)]
    if pad_token is not None and not config.get("pad_token"):
        config["pad_token"] = pad_token
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return path


def generation_ids(hf_dir: str | Path, eod: int | None) -> dict[str, Any]:
    """The token ids of ``config.json`` and ``generation_config.json`` for the HF tokenizer in ``hf_dir``
    ({} without a ``tokenizer.json`` or any stop token).

    ``eos_token_id``: the ids a generation stops at: the tokenizer's end-of-sequence token (a chat
    reply's ``<|endofresponse|>``), then the end of document ``eod``. ``pad_token_id``: the tokenizer's
    pad token, else ``eod``. ``bos_token_id``: none (dots1 prompts start with no BOS; dots.llm1.inst's
    ``config.json`` has none).

    Why the end of document pads: any id is hidden where it pads a prompt on the left (lm-eval pads
    prompts so for generation): the attention mask keeps it out of every real token's attention,
    transformers derives the positions from that mask, and nothing else in dots1 mixes positions
    (norms and the top-k expert routing, which has no capacity limit, are per token). What the id
    decides is the text of a row that stopped before the rest of its batch: transformers fills it
    with the pad id, and lm-eval decodes it with ``skip_special_tokens``; the end of document is a
    special token (it is marked so), so nothing of it shows. It is also a row of the embedding (a new
    ``<|pad|>`` past the vocabulary is not), and never a token of a chat reply, unlike
    ``<|endofresponse|>``: masking pads out of a loss cannot mask the end of a turn too.
    """
    from tokenizers import Tokenizer as HFTokenizer

    folder = Path(hf_dir)
    if not (folder / "tokenizer.json").is_file():
        return {}
    hf = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}

    def token_id(key: str) -> int | None:
        name = _content(config.get(key))
        return None if name is None else hf.token_to_id(name)

    stops = list(dict.fromkeys(i for i in (token_id("eos_token"), eod) if i is not None))
    if not stops:
        return {}
    pad = token_id("pad_token")
    return {"bos_token_id": None, "eos_token_id": stops, "pad_token_id": eod if pad is None else pad}


def _content(token: Any) -> str | None:
    """A token's text in ``tokenizer_config.json`` (a string, or an ``AddedToken`` dict)."""
    return token.get("content") if isinstance(token, dict) else token


def check_chat_ids(hf_dir: str | Path, template: chat.ChatTemplate) -> None:
    """Raise unless transformers' ``apply_chat_template`` on ``hf_dir`` gives ``template``'s ids."""
    hf = _auto_tokenizer(hf_dir)
    messages = [{"role": m.role, "content": m.content} for m in SAMPLE]
    got = list(hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    want = template.encode(SAMPLE).ids
    if got != want:
        raise ValueError(f"{hf_dir}: apply_chat_template gives {got}, dotsllm's chat template {want}")


def check_special_tokens(hf_dir: str | Path, ids: dict[str, Any]) -> None:
    """Raise unless transformers' tokenizer of ``hf_dir`` has ``ids``' eos and pad, knows the chat tokens as
    special, and decoding with ``skip_special_tokens`` drops the stop and pad ids."""
    hf = _auto_tokenizer(hf_dir)
    stops, pad = ids["eos_token_id"], ids["pad_token_id"]
    got = {"eos": hf.eos_token_id, "pad": hf.pad_token_id, "bos": hf.bos_token_id}
    unknown = [name for name in CHAT_TOKENS if hf.convert_tokens_to_ids(name) not in hf.all_special_ids]
    if got != {"eos": stops[0], "pad": pad, "bos": None} or unknown:
        raise ValueError(
            f"{hf_dir}: transformers reads special ids {got}, chat tokens not special {unknown}; want {ids}"
        )
    if hf.decode([*stops, pad], skip_special_tokens=True) != "":
        raise ValueError(f"{hf_dir}: decoding the stop and pad ids {[*stops, pad]} leaves text")


def _auto_tokenizer(hf_dir: str | Path):
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ImportError("writing a HF tokenizer needs transformers: pip install transformers") from e
    return AutoTokenizer.from_pretrained(str(hf_dir))
