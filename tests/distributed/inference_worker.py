"""Worker processes for the generation layout tests, started by torchrun: ``inference_worker.py <command> [args]``.

Commands:
  layouts WORKDIR LAYOUT...  for each layout (e.g. ``tp2-etp2``, ``ep2``, ``pp2-vpp2``): load
                             WORKDIR/ckpt into it with ``load_checkpoint_model``, generate the requests
                             of WORKDIR/requests.json split over the data-parallel ranks, then the first
                             request alone (so a data-parallel rank has none), and the perplexity of
                             WINDOWS; each rank writes what it got, and whether the model's settings
                             came back, to LAYOUT.rankN.json
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from worker import parse_layout

from dotsllm.convert.checkpoint_io import load_checkpoint_model
from dotsllm.evaluation import perplexity
from dotsllm.inference import GenerationRequest, SamplingParams, generate_data_parallel
from dotsllm.inference.stages import SEQUENCE_PARALLEL_ATTRS
from dotsllm.parallel.setup import init_distributed


def windows() -> list[np.ndarray]:
    """Token windows for perplexity: more than one step of micro-batches, lengths odd and even."""
    rng = np.random.default_rng(0)
    return [rng.integers(1, 8192, n) for n in (33, 33, 20, 33, 9, 33, 14)]


def write_requests(path: Path, requests: list[GenerationRequest]) -> None:
    path.write_text(json.dumps([dataclasses.asdict(r) for r in requests]))


def read_requests(path: Path) -> list[GenerationRequest]:
    return [
        GenerationRequest(r["prompt"], SamplingParams(**r["params"]), r["seed"]) for r in json.loads(path.read_text())
    ]


def layouts(workdir: str, *names: str) -> None:
    workdir = Path(workdir)
    requests = read_requests(workdir / "requests.json")
    for name in names:
        _use_layout(name)
        chunks, _ = load_checkpoint_model(workdir / "ckpt")
        for chunk in chunks:
            chunk.train()  # as GRPO leaves it between updates
        before = _settings(chunks)
        found = {
            "all": _results(generate_data_parallel(chunks, requests)),
            "first_alone": _results(generate_data_parallel(chunks, requests[:1])),
            "perplexity": perplexity(chunks, windows(), batch_size=2).as_dict(),
            "sequence_parallel": chunks[0].config.sequence_parallel,
            "settings_restored": _settings(chunks) == before,
        }
        (workdir / f"{name}.rank{torch.distributed.get_rank()}.json").write_text(json.dumps(found, indent=1))


def _use_layout(name: str) -> None:
    """(Re)build megatron's process groups for the layout ``name`` on this torch.distributed world."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    init_distributed(parse_layout(name)[0])


def _settings(chunks) -> list:
    """Every module's training flag and sequence-parallel attributes, and the configs' flag."""
    modules = [module for chunk in chunks for module in chunk.modules()]
    return [chunk.config.sequence_parallel for chunk in chunks] + [
        (m.training, *(getattr(m, attr, None) for attr in SEQUENCE_PARALLEL_ATTRS)) for m in modules
    ]


def _results(results) -> list[dict]:
    return [dataclasses.asdict(r) for r in results]


COMMANDS = {"layouts": layouts}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
