"""dots.llm1.inst's chat template and its loss masks: pure functions of messages and token ids.

One turn each (no newlines, no BOS)::

    <|system|>{s}<|endofsystem|><|userprompt|>{u}<|endofuserprompt|><|response|>{a}<|endofresponse|>

A conversation without a system message gets :data:`DEFAULT_SYSTEM`; the generation prompt is
``<|response|>``, and ``<|endofresponse|>`` ends every assistant turn (the stop token). The template
is encoded piece by piece: each marker is its special token (resolved by name from the tokenizer),
each text its own ``tokenizer.encode`` — the form HF tokenizers give when the markers are added tokens,
and the one that makes the loss mask exact: a token belongs to exactly one part of the template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

SYSTEM, END_SYSTEM = "<|system|>", "<|endofsystem|>"
USER, END_USER = "<|userprompt|>", "<|endofuserprompt|>"
RESPONSE, END_RESPONSE = "<|response|>", "<|endofresponse|>"
MARKERS = {"system": (SYSTEM, END_SYSTEM), "user": (USER, END_USER), "assistant": (RESPONSE, END_RESPONSE)}
DEFAULT_SYSTEM = "You are a helpful assistant."
ROLES = tuple(MARKERS)

LossMode = Literal["assistant", "last", "all"]
LOSS_MODES: tuple[str, ...] = ("assistant", "last", "all")


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant
    content: str


class ChatTokenizer(Protocol):
    """What the template needs of a tokenizer (:class:`dotsllm.tokenizer.Tokenizer` has it)."""

    def encode(self, text: str) -> list[int]: ...

    def special_ids(self, names: Sequence[str]) -> dict[str, int]: ...


def messages_from_dicts(turns: Sequence[object]) -> list[Message]:
    """``{"role", "content"}`` dicts as messages: known roles, string contents, a system message only
    first, at least one user turn; anything else raises ``ValueError`` naming the message."""
    messages = []
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise ValueError(f"message {number}: expected {{'role': str, 'content': str}}, got {turn!r}")
        role = turn.get("role")
        if role not in ROLES or (role == "system" and number > 0):
            raise ValueError(f"message {number}: unknown or misplaced role {role!r}")
        messages.append(Message(role, turn["content"]))
    if not any(m.role == "user" for m in messages):
        raise ValueError("no user message")
    return messages


def with_system(messages: Sequence[Message], default_system: str | None = DEFAULT_SYSTEM) -> list[Message]:
    """``messages`` with ``default_system`` in front when they have no system message (None: none added)."""
    messages = list(messages)
    if default_system is not None and (not messages or messages[0].role != "system"):
        messages.insert(0, Message("system", default_system))
    return messages


def render(
    messages: Sequence[Message], add_generation_prompt: bool = False, default_system: str | None = DEFAULT_SYSTEM
) -> str:
    """The template as text (what :func:`jinja_template` renders too)."""
    parts = [f"{MARKERS[m.role][0]}{m.content}{MARKERS[m.role][1]}" for m in with_system(messages, default_system)]
    return "".join(parts) + (RESPONSE if add_generation_prompt else "")


def jinja_template(default_system: str | None = DEFAULT_SYSTEM) -> str:
    """A HF ``chat_template`` rendering exactly :func:`render` (``add_generation_prompt`` included)."""
    default = (
        "{%- if messages and messages[0]['role'] == 'system' %}{% set loop_messages = messages %}{% else %}"
        f"{{{{ '{SYSTEM}' + {default_system!r} + '{END_SYSTEM}' }}}}{{% set loop_messages = messages %}}{{% endif %}}"
        if default_system is not None
        else "{%- set loop_messages = messages %}"
    )
    turns = "".join(
        f"{{% {'if' if i == 0 else 'elif'} message['role'] == '{role}' %}}{{{{ '{start}' + message['content'] + '{end}' }}}}"
        for i, (role, (start, end)) in enumerate(MARKERS.items())
    )
    return (
        default
        + "{%- for message in loop_messages %}"
        + turns
        + "{% else %}{{ raise_exception('unknown role: ' + message['role']) }}{% endif %}{%- endfor %}"
        + f"{{%- if add_generation_prompt %}}{{{{ '{RESPONSE}' }}}}{{% endif %}}"
    )


@dataclass(frozen=True)
class EncodedConversation:
    """Token ids of a rendered conversation and, per token, whether it is a loss target."""

    ids: list[int]
    targets: list[bool]

    def __len__(self) -> int:
        return len(self.ids)


class ChatTemplate:
    """The template bound to a tokenizer: special ids resolved by name (a tokenizer lacking any is an
    error naming them), conversations encoded with their loss targets."""

    def __init__(self, tokenizer: ChatTokenizer, default_system: str | None = DEFAULT_SYSTEM):
        self.tokenizer = tokenizer
        self.default_system = default_system
        names = [name for pair in MARKERS.values() for name in pair]
        ids = tokenizer.special_ids(names)
        self.markers = {role: (ids[start], ids[end]) for role, (start, end) in MARKERS.items()}
        self.stop_id = ids[END_RESPONSE]

    def encode(self, messages: Sequence[Message], loss_mode: LossMode = "assistant") -> EncodedConversation:
        """Ids of the rendered ``messages`` and their loss targets (see :func:`loss_targets`)."""
        ids: list[int] = []
        roles: list[str] = []  # per token: the role of the turn it belongs to
        parts: list[str] = []  # per token: "start", "text" or "end" of its turn
        turns: list[int] = []  # per token: the turn's index
        for turn, message in enumerate(with_system(messages, self.default_system)):
            start, end = self.markers[message.role]
            text = self.tokenizer.encode(message.content) if message.content else []
            ids += [start, *text, end]
            roles += [message.role] * (len(text) + 2)
            parts += ["start", *["text"] * len(text), "end"]
            turns += [turn] * (len(text) + 2)
        return EncodedConversation(ids, loss_targets(roles, parts, turns, loss_mode))

    def generation_prompt(self, messages: Sequence[Message]) -> list[int]:
        """Ids of ``messages`` followed by the generation prompt ``<|response|>``."""
        return self.encode(messages).ids + [self.markers["assistant"][0]]


def loss_targets(roles: Sequence[str], parts: Sequence[str], turns: Sequence[int], loss_mode: LossMode) -> list[bool]:
    """Which tokens carry loss, from each token's role, template part and turn index.

    ``assistant``: the text and the closing ``<|endofresponse|>`` of every assistant turn; ``last``:
    those of the last assistant turn only; ``all``: every token. System and user tokens and the other
    markers never carry loss outside ``all``; the first token never does (nothing predicts it).
    """
    if loss_mode not in LOSS_MODES:
        raise ValueError(f"loss mode must be one of {LOSS_MODES}, got {loss_mode!r}")
    answer = [role == "assistant" and part != "start" for role, part in zip(roles, parts)]
    if loss_mode == "all":
        targets = [True] * len(roles)
    elif loss_mode == "assistant":
        targets = answer
    else:
        last = max((t for t, role in zip(turns, roles) if role == "assistant"), default=None)
        targets = [a and t == last for a, t in zip(answer, turns)]
    return [False, *targets[1:]] if targets else []
