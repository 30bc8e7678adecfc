"""Generation and perplexity in parallel layouts give the single process's results (fp32, gloo).

This process saves dots1-tiny as a checkpoint and generates greedy and sampled requests from it; two
processes load that checkpoint into each layout (``load_checkpoint_model``) and generate the same
requests, split over their data-parallel ranks, and evaluate perplexity (``inference_worker.py``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from dist_launch import run_workers
from inference_worker import windows, write_requests

WORKER = Path(__file__).with_name("inference_worker.py")
LAYOUTS = ["tp2-etp2", "tp2-ep2", "ep2", "pp2", "pp2-vpp2"]


def requests(stop: int | None = None):
    """Prompts of different lengths, greedy and sampled, two samples of one prompt, a stop token for
    the last; budgets differ so that data-parallel ranks finish at different steps."""
    from dotsllm.inference import GenerationRequest, SamplingParams

    generator = torch.Generator().manual_seed(5)
    prompts = [torch.randint(1, 8192, (n,), generator=generator).tolist() for n in (4, 9, 6, 3, 7)]
    sampled = SamplingParams(temperature=1.0, max_new_tokens=6)
    stops = () if stop is None else (stop,)
    return [
        GenerationRequest(prompts[0], SamplingParams(temperature=0, max_new_tokens=8)),
        GenerationRequest(prompts[1], sampled, seed=1),
        GenerationRequest(prompts[1], sampled, seed=2),
        GenerationRequest(prompts[2], SamplingParams(temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=3), seed=3),
        GenerationRequest(prompts[3], SamplingParams(temperature=0, max_new_tokens=5)),
        GenerationRequest(prompts[4], SamplingParams(temperature=1.0, max_new_tokens=10, stop_token_ids=stops), seed=4),
    ]


@pytest.fixture(scope="module")
def results(megatron_world, tmp_path_factory):
    from dotsllm.convert.checkpoint_io import load_checkpoint_model
    from dotsllm.evaluation import perplexity
    from dotsllm.inference import generate
    from dotsllm.model import Dots1ModelConfig
    from dotsllm.model.builder import build_model
    from dotsllm.training.checkpoint import write_checkpoint
    from dotsllm.training.checkpoint_state import CheckpointMeta

    workdir = tmp_path_factory.mktemp("generation")
    cfg = Dots1ModelConfig.from_preset("dots1-tiny")
    model = build_model(cfg, backend="local")
    meta = CheckpointMeta(kind="imported", step=0, tokens_seen=0, model=dataclasses.asdict(cfg), trainer="import")
    write_checkpoint(workdir / "ckpt", {"model": model.sharded_state_dict()}, meta.as_dict())
    chunks, _ = load_checkpoint_model(workdir / "ckpt")
    stop = generate(chunks, requests())[-1].tokens[2]  # the last request then stops at its third token
    reference = [dataclasses.asdict(r) for r in generate(chunks, requests(stop))]
    reference_perplexity = perplexity(chunks, windows(), batch_size=2).as_dict()
    write_requests(workdir / "requests.json", requests(stop))
    run_workers(2, "layouts", workdir, *LAYOUTS, worker=WORKER, timeout_s=240)
    ranks = {name: [json.loads((workdir / f"{name}.rank{r}.json").read_text()) for r in range(2)] for name in LAYOUTS}
    return reference, reference_perplexity, ranks


def assert_same_generations(found: list[dict], expected: list[dict]) -> None:
    assert [r["tokens"] for r in found] == [r["tokens"] for r in expected]
    assert [r["finish_reason"] for r in found] == [r["finish_reason"] for r in expected]
    for got, want in zip(found, expected):
        assert got["log_probs"] == pytest.approx(want["log_probs"], abs=1e-5)


def test_reference_generations_are_not_trivial(results):
    reference, reference_perplexity, _ = results
    assert reference_perplexity["tokens"] == sum(len(w) - 1 for w in windows())
    assert [len(r["tokens"]) for r in reference[:5]] == [8, 6, 6, 3, 5]
    assert reference[-1]["finish_reason"] == "stop" and len(reference[-1]["tokens"]) <= 3
    assert reference[1]["tokens"] != reference[2]["tokens"]  # two samples of one prompt


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_gives_the_single_process_generations_and_perplexity(results, layout):
    reference, reference_perplexity, ranks = results
    for rank in ranks[layout]:  # every rank gets every result
        assert rank["perplexity"]["tokens"] == reference_perplexity["tokens"]
        assert rank["perplexity"]["mean_loss"] == pytest.approx(reference_perplexity["mean_loss"], rel=1e-6)
        assert_same_generations(rank["all"], reference)
        assert_same_generations(rank["first_alone"], reference[:1])
        assert rank["settings_restored"]  # training mode, and sequence parallelism where TP > 1
        assert rank["sequence_parallel"] == layout.startswith("tp2")
