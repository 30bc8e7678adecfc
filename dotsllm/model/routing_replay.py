"""MoE routing replay: the experts chosen in one forward (a rollout) reused in another (training).

megatron-core 0.16.1's ``RouterReplay`` (``transformer/moe/router_replay.py``, one per router when the
model is built with ``moe_enable_routing_replay``) records a router's top-k expert indices of its last
forward, or replays given indices in place of its own top-k (the combine weights are still this
forward's scores at those experts). Its static helpers act on every router ever built in the process
(a reference model, a test's other models); here each model's own routers are addressed instead.

Routing of a rank's MoE layers is a tensor ``[positions, layers, k]`` (int16) per sequence, layers in
increasing ``layer_number`` over all of this rank's chunks (pipeline stages hold their own layers).
Generation fills it a forward at a time (a prefill, then one slot per step through the KV cache):
see :class:`RoutingRecorder`. A training forward takes ``[b, s, layers, k]`` per micro-batch
(:func:`set_replay_targets`), sliced to this rank's part of the sequence under sequence parallelism.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

ROUTING_DTYPE = torch.int16


def moe_routers(chunks: Sequence[torch.nn.Module]) -> list[torch.nn.Module]:
    """The ``TopKRouter``s of ``chunks`` (DDP-wrapped or not), by increasing layer number."""
    from megatron.core.transformer.moe.router import TopKRouter

    routers = [m for chunk in chunks for m in chunk.modules() if isinstance(m, TopKRouter)]
    return sorted(routers, key=lambda router: router.layer_number)


def _replays(routers: Sequence[torch.nn.Module]) -> list:
    missing = [r.layer_number for r in routers if r.router_replay is None]
    if missing:
        raise ValueError(
            f"MoE layers {missing} have no RouterReplay: build the model with moe_enable_routing_replay=True"
        )
    return [router.router_replay for router in routers]


@contextmanager
def routing_action(routers: Sequence[torch.nn.Module], action: str) -> Iterator[None]:
    """Routers record (``"record"``) or replay their targets (``"replay_forward"``) inside the block;
    afterwards they route by themselves again and hold no indices."""
    from megatron.core.transformer.moe.router_replay import RouterReplayAction

    replays = _replays(routers)
    for replay in replays:
        replay.set_router_replay_action(RouterReplayAction(action))
    try:
        yield
    finally:
        for replay in replays:
            replay.clear_router_replay_action()
            replay.clear_indices()


class RoutingRecorder:
    """Collects the routing of a static generation batch ``[rows, slots]`` forward by forward."""

    def __init__(self, routers: Sequence[torch.nn.Module], rows: int, slots: int, device: torch.device):
        self.routers = list(routers)
        self.replays = _replays(self.routers)
        topk = self.routers[0].topk if self.routers else 1
        self.routing = torch.zeros(rows, slots, len(self.routers), topk, dtype=ROUTING_DTYPE, device=device)

    def prefill(self, length: int, copy_rows: torch.Tensor | None) -> None:
        """After a prefill of ``length`` slots (of the prefilled rows; ``copy_rows``: the prefill row
        of each batch row when prompts share their prefill)."""
        for layer, replay in enumerate(self.replays):
            recorded = replay.get_recorded_indices()  # [length * prefill rows, k], sequence-major
            recorded = recorded.view(length, -1, recorded.shape[-1])
            if copy_rows is not None:
                recorded = recorded[:, copy_rows]
            self.routing[:, :length, layer] = recorded.transpose(0, 1).to(ROUTING_DTYPE)

    def step(self, slot: int) -> None:
        """After a forward of every row's token at ``slot``."""
        for layer, replay in enumerate(self.replays):
            self.routing[:, slot, layer] = replay.get_recorded_indices().to(ROUTING_DTYPE)

    def row(self, row: int, positions: int) -> torch.Tensor:
        """The routing of the first ``positions`` slots of ``row``, ``[positions, layers, k]`` on the CPU."""
        return self.routing[row, :positions].cpu()


def set_replay_targets(chunk: torch.nn.Module, routers: Sequence[torch.nn.Module], routing: torch.Tensor) -> None:
    """Before ``chunk``'s forward of a micro-batch: its routers replay ``routing`` ``[b, s, layers, k]``.

    ``routers`` are all of this rank's routers (``routing``'s layer axis); ``chunk``'s own take their
    columns. Under sequence parallelism a router sees this TP rank's slice of the sequence.
    """
    from megatron.core import parallel_state

    own = {id(m) for m in chunk.modules()}
    for layer, router in enumerate(routers):
        if id(router) not in own:
            continue
        targets = routing[:, :, layer].transpose(0, 1)  # [s, b, k]: the router's token order
        if router.config.sequence_parallel:
            size = parallel_state.get_tensor_model_parallel_world_size()
            rank = parallel_state.get_tensor_model_parallel_rank()
            targets = targets.chunk(size, dim=0)[rank]
        router.router_replay.set_target_indices(targets.reshape(-1, targets.shape[-1]).long())


def clear_replay_targets(routers: Sequence[torch.nn.Module]) -> None:
    """Drop the targets set so far (``RouterReplay`` keeps every one for recomputation otherwise)."""
    for replay in _replays(routers):
        replay.clear_indices()
