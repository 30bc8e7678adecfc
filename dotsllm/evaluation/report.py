"""The main job's report: one row per stage, what it achieved and how long it took.

Built from what the stages leave behind (:class:`JobOutputs`): the data pipeline's ``manifest.json``,
the runs' ``metrics.jsonl``, the ``dotsllm eval --output`` JSONs (:func:`dotsllm.evaluation.evaluate`'s
results), the exported HF folder, and the wall times in a ``stage<TAB>seconds`` file (as
``scripts/main_job.sh`` writes it). Rows are ``{"stage", "achieved", "seconds"}`` dicts, the stages in
job order, then ``total``; a stage missing from the times file has ``seconds`` None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotsllm.evaluation.generation import SCORE_NAMES
from dotsllm.training.metrics import METRICS_FILE
from dotsllm.training.plots import RunMetrics, read_metrics

STAGES = ("data pipeline", "pretraining", "SFT", "GRPO", "export to HF", "evaluation")


class ReportError(ValueError):
    """A stage output that is malformed (its message names the file, and the line where there is one)."""


@dataclass(frozen=True)
class JobOutputs:
    """Where each stage left its outputs."""

    times: Path  # stage<TAB>seconds lines
    data: Path  # the data pipeline's output folder (its manifest.json)
    pretrain: Path  # the pretraining run folder (its metrics.jsonl)
    sft: Path  # the SFT run folder
    sft_eval: tuple[Path, Path]  # eval JSONs of the SFT task: before SFT (the pretrained model), after
    grpo: Path  # the GRPO run folder (its reward curve: plots/grpo.png)
    hf: Path  # the exported HF folder
    export_eval: tuple[Path, Path]  # eval JSONs of one task: the exported checkpoint (dotsllm), its HF folder

    def __post_init__(self) -> None:
        for name in ("times", "data", "pretrain", "sft", "grpo", "hf"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        for name in ("sft_eval", "export_eval"):
            object.__setattr__(self, name, tuple(Path(p) for p in getattr(self, name)))


def report_rows(outputs: JobOutputs) -> list[dict[str, Any]]:
    """The report's rows (see the module doc). A missing file: ``FileNotFoundError`` or
    :class:`~dotsllm.training.plots.MetricsFileError`; malformed content: :class:`ReportError`,
    ``MetricsFileError``, or ``KeyError``/``IndexError`` for a JSON lacking a field."""
    achieved = {
        "data pipeline": data_row(read_json(outputs.data / "manifest.json")),
        "pretraining": pretrain_row(read_metrics(outputs.pretrain / METRICS_FILE)),
        "SFT": sft_row(read_metrics(outputs.sft / METRICS_FILE), *map(read_json, outputs.sft_eval)),
        "GRPO": f"{grpo_row(read_metrics(outputs.grpo / METRICS_FILE))}; reward curve {outputs.grpo}/plots/grpo.png",
        "export to HF": export_row(outputs.hf),
        "evaluation": evaluation_row(*map(read_json, outputs.export_eval)),
    }
    times = read_times(outputs.times)
    found = [{"stage": stage, "achieved": achieved[stage], "seconds": times.get(stage)} for stage in STAGES]
    return [*found, {"stage": "total", "achieved": "", "seconds": sum(times.values())}]


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None


def read_times(path: Path) -> dict[str, float]:
    """Seconds by stage of ``stage<TAB>seconds`` lines."""
    times = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        name, _, seconds = line.partition("\t")
        try:
            times[name] = float(seconds)
        except ValueError:
            raise ReportError(f"{path}:{number}: expected stage<TAB>seconds, got {line!r}") from None
    return times


def data_row(manifest: dict) -> str:
    t = manifest["totals"]
    return (
        f"{t['input_lines']:,} input lines → {t['kept']:,} kept, {t['rejected']:,} rejected, {t['errors']:,} "
        f"malformed; {t['tokens']:,} tokens"
    )


def pretrain_row(metrics: RunMetrics) -> str:
    first, last = metrics.train[0], metrics.train[-1]
    loss = f"{first['loss']:.2f} → {last['loss']:.2f}"
    text = f"{last['step']} steps, {last['tokens_seen']:,} tokens; train loss {loss}"
    if metrics.valid:
        text += f", valid loss {metrics.valid[-1]['valid_loss']:.2f} (step {metrics.valid[-1]['step']})"
    return text


def sft_row(metrics: RunMetrics, before: dict, after: dict) -> str:
    """Held-out accuracy of each task before → after SFT (eval results), the SFT steps, the valid loss."""
    parts = []
    for name, result in after["tasks"].items():
        old = before["tasks"][name]
        parts.append(f"{name} {old['correct']}/{old['samples']} → {result['correct']}/{result['samples']}")
    text = f"held-out {score_names(after)}: {', '.join(parts)}; {after['step']} steps"
    if metrics.valid:
        first, last = metrics.valid[0], metrics.valid[-1]
        losses = f"{first['valid_loss']:.3f} → {last['valid_loss']:.3f}"
        text += f", valid loss {losses} (steps {first['step']} → {last['step']})"
    return text


def grpo_row(metrics: RunMetrics) -> str:
    """Held-out accuracy first → last; the reward mean and the sampled accuracy (the accuracy reward) of
    the first and last quarter of the steps."""
    first, last = metrics.heldout[0], metrics.heldout[-1]
    quarter = max(1, len(metrics.train) // 4)
    ends = metrics.train[:quarter], metrics.train[-quarter:]
    text = (
        f"held-out greedy accuracy {first['heldout_accuracy']:.3f} → {last['heldout_accuracy']:.3f} "
        f"({last['heldout_samples']} prompts, steps {first['step']} → {last['step']}); "
        f"reward mean {' → '.join(_mean(part, 'reward_mean') for part in ends)}"
    )
    if "accuracy" in metrics.train[0]:
        text += f", sampled accuracy {' → '.join(_mean(part, 'accuracy') for part in ends)}"
    return text


def _mean(records: list[dict], key: str) -> str:
    steps = f"step {records[0]['step']}" if len(records) == 1 else f"steps {records[0]['step']}–{records[-1]['step']}"
    return f"{sum(r[key] for r in records) / len(records):.3f} ({steps})"


def export_row(hf_dir: Path) -> str:
    shards = sorted(Path(hf_dir).glob("*.safetensors"))
    if not shards:
        raise ReportError(f"{hf_dir} holds no safetensors")
    size = sum(f.stat().st_size for f in shards) / 2**20
    return f"{hf_dir}: {len(shards)} safetensors file(s), {size:.1f} MiB, tokenizer with the chat template"


def evaluation_row(checkpoint: dict, hf: dict) -> str:
    """Per task: the HF folder's and the checkpoint's accuracy, and how many predictions are identical."""
    parts = []
    for name, ours in checkpoint["tasks"].items():
        theirs = hf["tasks"][name]
        same = sum(a["prediction"] == b["prediction"] for a, b in zip(ours["predictions"], theirs["predictions"]))
        parts.append(
            f"{name} {score_names(hf)}: transformers on the HF folder {theirs['correct']}/{theirs['samples']}, dotsllm "
            f"on the checkpoint {ours['correct']}/{ours['samples']}; {same}/{ours['samples']} predictions identical"
        )
    return "; ".join(parts)


def score_names(result: dict) -> str:
    """The names of the scores of an eval result's tasks (``exact match``, ``math accuracy``)."""
    scores = {task.get("score", "exact") for task in result["tasks"].values()}
    return " / ".join(SCORE_NAMES[s] for s in sorted(scores))
