"""The dots chat template's generation prompt, for GRPO's prompts (until ``dotsllm/posttrain/chat.py`` of
SFT is on main; then that module renders, and this one goes).

``<|system|>{s}<|endofsystem|><|userprompt|>{u}<|endofuserprompt|>`` (earlier assistant turns as
``<|response|>{a}<|endofresponse|>``), then the generation prompt ``<|response|>``; no newlines, no BOS
(dots.llm1.inst, as llama.cpp and ms-swift render it). Special tokens are taken by name from the
tokenizer, the text between them encoded on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

DEFAULT_SYSTEM = "You are a helpful assistant."
ROLE_MARKERS = {
    "system": ("<|system|>", "<|endofsystem|>"),
    "user": ("<|userprompt|>", "<|endofuserprompt|>"),
    "assistant": ("<|response|>", "<|endofresponse|>"),
}
GENERATION_PROMPT = "<|response|>"
END_OF_RESPONSE = "<|endofresponse|>"


class ChatTokenizer(Protocol):
    def special_ids(self, names: Sequence[str]) -> dict[str, int]: ...

    def encode(self, text: str) -> list[int]: ...


def render_generation_prompt(
    messages: Sequence[dict], tokenizer: ChatTokenizer, system: str | None = DEFAULT_SYSTEM
) -> list[int]:
    """Token ids of ``messages`` (``{"role", "content"}``; a leading system message, else ``system``
    when not None) followed by the generation prompt. A bad message raises ``ValueError``."""
    special = tokenizer.special_ids([name for pair in ROLE_MARKERS.values() for name in pair])
    turns = list(messages)
    if system is not None and not (turns and isinstance(turns[0], dict) and turns[0].get("role") == "system"):
        turns.insert(0, {"role": "system", "content": system})
    ids: list[int] = []
    for number, message in enumerate(turns):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"message {number}: expected {{'role': str, 'content': str}}, got {message!r}")
        role = message.get("role")
        if role not in ROLE_MARKERS or (role == "system" and number > 0):
            raise ValueError(f"message {number}: unknown or misplaced role {role!r}")
        start, end = ROLE_MARKERS[role]
        ids += [special[start], *tokenizer.encode(message["content"]), special[end]]
    if not any(m["role"] == "user" for m in turns):
        raise ValueError("the prompt has no user message")
    return ids + [special[GENERATION_PROMPT]]
