"""A conversation with a model through the dots chat template: the turns so far, one answer per user message.

The template itself (rendering, loss masks) is :mod:`dotsllm.chat_template`; this is its use at
inference, what ``dotsllm chat`` runs its stdin/stdout loop on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from dotsllm.inference.generate import GenerationRequest, generate
from dotsllm.inference.sampling import SamplingParams
from dotsllm.chat_template import ChatTemplate, Message


class ChatSession:
    """The messages of one conversation; :meth:`answer` adds a user turn and the model's reply.

    ``model`` is this rank's megatron model (or its chunks) in the layout of ``parallel_state``;
    ``template.tokenizer`` must also ``decode``. Generation follows ``params`` and stops at the
    template's ``<|endofresponse|>`` (added to ``params.stop_token_ids``); the reply is the completion
    without it. The n-th message's draws are seeded by ``seed + n`` (n counts the user message just added).
    """

    def __init__(
        self,
        model: torch.nn.Module | Sequence[torch.nn.Module],
        template: ChatTemplate,
        params: SamplingParams = SamplingParams(temperature=0),
        seed: int = 0,
    ):
        self.model = model
        self.template = template
        stops = params.stop_token_ids
        if template.stop_id not in stops:
            params = replace(params, stop_token_ids=(*stops, template.stop_id))
        self.params = params
        self.seed = seed
        self.messages: list[Message] = []

    def answer(self, text: str) -> str:
        """The model's reply to the user message ``text``; both are added to :attr:`messages` (neither
        when generation fails)."""
        messages = [*self.messages, Message("user", text)]
        prompt = self.template.generation_prompt(messages)
        (result,) = generate(self.model, [GenerationRequest(prompt, self.params, seed=self.seed + len(messages))])
        reply = self.template.tokenizer.decode(result.completion)
        self.messages = [*messages, Message("assistant", reply)]
        return reply
