"""The main job's report: one row per stage, what it achieved and how long it took.

Built from what the stages leave behind (:class:`JobOutputs`): the data pipeline's ``manifest.json``,
the runs' ``metrics.jsonl``, the ``dotsllm eval --output`` JSONs (:func:`dotsllm.evaluation.evaluate`'s
results), the exported HF folder, and the wall times in a ``stage<TAB>seconds`` file (as
``scripts/main_job.sh`` writes it). Rows are ``{"stage", "achieved", "seconds", "numbers"}`` dicts,
the stages in job order, then ``total``; a stage missing from the times file has ``seconds`` None.

``achieved`` is the sentence of the table. Where an eval JSON gives standard errors (``accuracy_se``)
an accuracy reads ``c/n (accuracy ± SE)``, and where it has sampled evaluation (``"sampled"``) the
sentence adds the sampled accuracy and each pass@k, value ± SE.

``numbers`` holds the sentence's numbers as fields, for a program to read (None where a run logged
none, e.g. no validation):

- data pipeline: ``input_lines``, ``kept``, ``rejected``, ``malformed``, ``tokens``
- pretraining: ``steps``, ``tokens_seen``, ``train_loss_first``, ``train_loss_last``, ``valid_loss``
  (the last), ``valid_loss_step``
- SFT: ``steps``, ``valid_loss_first``, ``valid_loss_last``, ``valid_loss_first_step``,
  ``valid_loss_last_step``, and ``tasks``: ``{TASK: {"before": EVAL, "after": EVAL}}``
- GRPO: ``tasks`` as SFT's (the GRPO task before and after GRPO), ``heldout_prompts``, ``heldout_accuracy_first``/``_last`` with their standard errors
  ``heldout_accuracy_first_se``/``_last_se`` (``sqrt(p(1 − p) / prompts)``) and steps
  ``heldout_first_step``/``heldout_last_step``; ``reward_mean_first_quarter``/``_last_quarter`` and
  ``sampled_accuracy_first_quarter``/``_last_quarter`` (None when the run logged no accuracy)
- export to HF: ``safetensors_files``, ``mib``
- evaluation: ``tasks``: ``{TASK: {"hf": EVAL, "checkpoint": EVAL, "identical_predictions": int,
  "identical_sampled_predictions": int}}`` (the last only when both sides were sampled)
- total: ``{}``

where EVAL is one task of one eval JSON::

    {"score": "exact" | "math", "prompts": P, "correct": c, "accuracy": c / P, "accuracy_se": SE,
     "sampled": {"samples": N, "temperature": T, "top_p", "seed", "correct", "accuracy", "accuracy_se",
                 "pass_at_k": {"K": {"value", "se"}, ...}}}

``accuracy_se`` is ``sqrt(p(1 − p) / P)``, computed from the counts when an older JSON lacks it;
``sampled`` is there only when the eval was sampled (``dotsllm eval --samples``).
"""

from __future__ import annotations

import json
import math
import statistics
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
    grpo_eval: tuple[Path, Path]  # eval JSONs of the GRPO task: before GRPO (the SFT model), after
    hf: Path  # the exported HF folder
    export_eval: tuple[Path, Path]  # eval JSONs of one task: the exported checkpoint (dotsllm), its HF folder

    def __post_init__(self) -> None:
        for name in ("times", "data", "pretrain", "sft", "grpo", "hf"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        for name in ("sft_eval", "grpo_eval", "export_eval"):
            object.__setattr__(self, name, tuple(Path(p) for p in getattr(self, name)))


def report_rows(outputs: JobOutputs) -> list[dict[str, Any]]:
    """The report's rows (see the module doc). A missing file: ``FileNotFoundError`` or
    :class:`~dotsllm.training.plots.MetricsFileError`; malformed content: :class:`ReportError`,
    ``MetricsFileError``, or ``KeyError``/``IndexError`` for a JSON lacking a field."""
    grpo_text, grpo_numbers = grpo_row(read_metrics(outputs.grpo / METRICS_FILE), *map(read_json, outputs.grpo_eval))
    achieved = {
        "data pipeline": data_row(read_json(outputs.data / "manifest.json")),
        "pretraining": pretrain_row(read_metrics(outputs.pretrain / METRICS_FILE)),
        "SFT": sft_row(read_metrics(outputs.sft / METRICS_FILE), *map(read_json, outputs.sft_eval)),
        "GRPO": (f"{grpo_text}; reward curve {outputs.grpo}/plots/grpo.png", grpo_numbers),
        "export to HF": export_row(outputs.hf),
        "evaluation": evaluation_row(*map(read_json, outputs.export_eval)),
    }
    times = read_times(outputs.times)
    found = [
        {"stage": stage, "achieved": achieved[stage][0], "seconds": times.get(stage), "numbers": achieved[stage][1]}
        for stage in STAGES
    ]
    return [*found, {"stage": "total", "achieved": "", "seconds": sum(times.values()), "numbers": {}}]


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


Row = tuple[str, dict[str, Any]]  # a stage's sentence and its numbers


def data_row(manifest: dict) -> Row:
    t = manifest["totals"]
    text = (
        f"{t['input_lines']:,} input lines → {t['kept']:,} kept, {t['rejected']:,} rejected, {t['errors']:,} "
        f"malformed; {t['tokens']:,} tokens"
    )
    numbers = {"input_lines": t["input_lines"], "kept": t["kept"], "rejected": t["rejected"], "malformed": t["errors"],
               "tokens": t["tokens"]}  # fmt: skip
    return text, numbers


def pretrain_row(metrics: RunMetrics) -> Row:
    first, last = metrics.train[0], metrics.train[-1]
    loss = f"{first['loss']:.2f} → {last['loss']:.2f}"
    text = f"{last['step']} steps, {last['tokens_seen']:,} tokens; train loss {loss}"
    valid = metrics.valid[-1] if metrics.valid else {}
    if valid:
        text += f", valid loss {valid['valid_loss']:.2f} (step {valid['step']})"
    numbers = {
        "steps": last["step"], "tokens_seen": last["tokens_seen"], "train_loss_first": first["loss"],
        "train_loss_last": last["loss"], "valid_loss": valid.get("valid_loss"), "valid_loss_step": valid.get("step"),
    }  # fmt: skip
    return text, numbers


def task_changes(before: dict, after: dict) -> tuple[str, dict[str, Any]]:
    """Each task's held-out accuracy before → after (eval results; sampled accuracy and pass@k where the
    evals were sampled), as text and as ``{TASK: {"before": EVAL, "after": EVAL}}``."""
    parts, tasks = [], {}
    for name, result in after["tasks"].items():
        old = before["tasks"][name]
        part = f"{name} {_count(old)} → {_count(result)}"
        if "sampled" in old or "sampled" in result:
            part += f", {_sampled_change(old.get('sampled'), result.get('sampled'))}"
        parts.append(part)
        tasks[name] = {"before": eval_numbers(old), "after": eval_numbers(result)}
    return f"held-out {score_names(after)}: {', '.join(parts)}", tasks


def sft_row(metrics: RunMetrics, before: dict, after: dict) -> Row:
    """Held-out accuracy of each task before → after SFT, the SFT steps, the valid loss."""
    changes, tasks = task_changes(before, after)
    text = f"{changes}; {after['step']} steps"
    first, last = (metrics.valid[0], metrics.valid[-1]) if metrics.valid else ({}, {})
    if metrics.valid:
        losses = f"{first['valid_loss']:.3f} → {last['valid_loss']:.3f}"
        text += f", valid loss {losses} (steps {first['step']} → {last['step']})"
    numbers = {
        "steps": after["step"], "valid_loss_first": first.get("valid_loss"), "valid_loss_last": last.get("valid_loss"),
        "valid_loss_first_step": first.get("step"), "valid_loss_last_step": last.get("step"), "tasks": tasks,
    }  # fmt: skip
    return text, numbers


def grpo_row(metrics: RunMetrics, before: dict, after: dict) -> Row:
    """Held-out accuracy of the GRPO task before → after (eval results: greedy, sampled, pass@k); the run's
    own held-out greedy accuracy first → last; the reward mean and the sampled accuracy (the accuracy
    reward) of the first and last quarter of the steps."""
    first, last = metrics.heldout[0], metrics.heldout[-1]
    quarter = max(1, len(metrics.train) // 4)
    ends = metrics.train[:quarter], metrics.train[-quarter:]
    changes, tasks = task_changes(before, after)
    text = (
        f"{changes}; during training: held-out greedy accuracy {first['heldout_accuracy']:.3f} → "
        f"{last['heldout_accuracy']:.3f} ({last['heldout_samples']} prompts, steps {first['step']} → {last['step']}), "
        f"reward mean {' → '.join(_mean(part, 'reward_mean') for part in ends)}"
    )
    sampled = "accuracy" in metrics.train[0]
    if sampled:
        text += f", sampled accuracy {' → '.join(_mean(part, 'accuracy') for part in ends)}"
    numbers = {
        "heldout_prompts": last["heldout_samples"],
        "heldout_accuracy_first": first["heldout_accuracy"],
        "heldout_accuracy_first_se": _binomial_se(first["heldout_accuracy"], first["heldout_samples"]),
        "heldout_accuracy_last": last["heldout_accuracy"],
        "heldout_accuracy_last_se": _binomial_se(last["heldout_accuracy"], last["heldout_samples"]),
        "heldout_first_step": first["step"], "heldout_last_step": last["step"],
        "reward_mean_first_quarter": _average(ends[0], "reward_mean"),
        "reward_mean_last_quarter": _average(ends[1], "reward_mean"),
        "sampled_accuracy_first_quarter": _average(ends[0], "accuracy") if sampled else None,
        "sampled_accuracy_last_quarter": _average(ends[1], "accuracy") if sampled else None,
        "tasks": tasks,
    }  # fmt: skip
    return text, numbers


def _average(records: list[dict], key: str) -> float:
    return sum(r[key] for r in records) / len(records)


def _mean(records: list[dict], key: str) -> str:
    steps = f"step {records[0]['step']}" if len(records) == 1 else f"steps {records[0]['step']}–{records[-1]['step']}"
    return f"{_average(records, key):.3f} ({steps})"


def _binomial_se(p: float, count: int) -> float | None:
    return math.sqrt(max(p * (1 - p), 0.0) / count) if count > 0 else None


def export_row(hf_dir: Path) -> Row:
    shards = sorted(Path(hf_dir).glob("*.safetensors"))
    if not shards:
        raise ReportError(f"{hf_dir} holds no safetensors")
    size = sum(f.stat().st_size for f in shards) / 2**20
    text = f"{hf_dir}: {len(shards)} safetensors file(s), {size:.1f} MiB, tokenizer with the chat template"
    return text, {"safetensors_files": len(shards), "mib": size}


def evaluation_row(checkpoint: dict, hf: dict) -> Row:
    """Per task: the HF folder's and the checkpoint's accuracy, and how many predictions are identical;
    where both were sampled, their sampled accuracy and pass@k, and how many samples are identical."""
    parts, tasks = [], {}
    for name, ours in checkpoint["tasks"].items():
        theirs = hf["tasks"][name]
        same = sum(a["prediction"] == b["prediction"] for a, b in zip(ours["predictions"], theirs["predictions"]))
        part = (
            f"{name} {score_names(hf)}: transformers on the HF folder {_count(theirs)}, dotsllm "
            f"on the checkpoint {_count(ours)}; {same}/{ours['samples']} predictions identical"
        )
        tasks[name] = {"hf": eval_numbers(theirs), "checkpoint": eval_numbers(ours), "identical_predictions": same}
        if "sampled" in ours or "sampled" in theirs:
            part += "; sampled: HF folder " + (_sampled_text(theirs["sampled"]) if "sampled" in theirs else "–")
            part += ", checkpoint " + (_sampled_text(ours["sampled"]) if "sampled" in ours else "–")
        if "sampled" in ours and "sampled" in theirs:
            pairs = [
                (a, b)
                for x, y in zip(ours["predictions"], theirs["predictions"])
                for a, b in zip(x["sampled_predictions"], y["sampled_predictions"])
            ]
            alike = sum(a == b for a, b in pairs)
            part += f"; {alike}/{len(pairs)} samples identical"
            tasks[name]["identical_sampled_predictions"] = alike
        parts.append(part)
    return "; ".join(parts), {"tasks": tasks}


def eval_numbers(result: dict) -> dict[str, Any]:
    """One task of an eval JSON as the report's numbers (EVAL in the module doc)."""
    prompts, correct = result["samples"], result["correct"]
    accuracy = correct / prompts
    numbers = {
        "score": result.get("score", "exact"), "prompts": prompts, "correct": correct, "accuracy": accuracy,
        "accuracy_se": result.get("accuracy_se", _binomial_se(accuracy, prompts)),
    }  # fmt: skip
    if "sampled" in result:
        numbers["sampled"] = dict(result["sampled"])
    return numbers


def _count(result: dict) -> str:
    """``c/n``, and ``(accuracy ± SE)`` where the eval JSON has the standard error."""
    text = f"{result['correct']}/{result['samples']}"
    if "accuracy_se" in result:
        text += f" ({result['correct'] / result['samples']:.3f} ± {result['accuracy_se']:.3f})"
    return text


def _settings(sampled: dict) -> str:
    top_p = f", top-p {sampled['top_p']:g}" if sampled.get("top_p", 1.0) < 1 else ""
    return f"{sampled['samples']} samples/prompt, T={sampled['temperature']:g}{top_p}"


def _estimate(numbers: dict | None, value: str = "accuracy", se: str = "accuracy_se") -> str:
    return "–" if numbers is None else f"{numbers[value]:.3f} ± {numbers[se]:.3f}"


def _sampled_text(sampled: dict) -> str:
    """``accuracy A ± SE, pass@K V ± SE, ... (N samples/prompt, T=t)``."""
    estimates = [f"accuracy {_estimate(sampled)}"]
    estimates += [f"pass@{k} {_estimate(v, 'value', 'se')}" for k, v in sampled["pass_at_k"].items()]
    return f"{', '.join(estimates)} ({_settings(sampled)})"


def _sampled_change(old: dict | None, new: dict | None) -> str:
    """``sampled accuracy A → B, pass@K V → W (settings)``; "–" for a side not sampled."""
    ks = list(dict.fromkeys([*(old or {}).get("pass_at_k", {}), *(new or {}).get("pass_at_k", {})]))
    changes = [f"sampled accuracy {_estimate(old)} → {_estimate(new)}"]
    for k in ks:
        a, b = ((s or {}).get("pass_at_k", {}).get(k) for s in (old, new))
        changes.append(f"pass@{k} {_estimate(a, 'value', 'se')} → {_estimate(b, 'value', 'se')}")
    settings = [_settings(s) for s in (old, new) if s is not None]
    if len(settings) == 2 and settings[0] != settings[1]:
        how = f"before {settings[0]}, after {settings[1]}"
    else:
        how = settings[-1]
    return f"{', '.join(changes)} ({how})"


def score_names(result: dict) -> str:
    """The names of the scores of an eval result's tasks (``exact match``, ``math accuracy``)."""
    scores = {task.get("score", "exact") for task in result["tasks"].values()}
    return " / ".join(SCORE_NAMES[s] for s in sorted(scores))


# ---- several runs of the job (seeds, thread counts) -------------------------------------------------

HEADLINES = {  # the numbers a reader compares across runs: (stage, dotted path in its numbers)
    "pretraining: train loss, last": ("pretraining", "train_loss_last"),
    "SFT: copy tasks held-out exact match, after": ("SFT", "tasks.heldout_eval.after.accuracy"),
    "GRPO: held-out greedy accuracy, before": ("GRPO", "tasks.heldout.before.accuracy"),
    "GRPO: held-out greedy accuracy, after": ("GRPO", "tasks.heldout.after.accuracy"),
    "GRPO: held-out sampled accuracy (pass@1), before": ("GRPO", "tasks.heldout.before.sampled.accuracy"),
    "GRPO: held-out sampled accuracy (pass@1), after": ("GRPO", "tasks.heldout.after.sampled.accuracy"),
    "GRPO: held-out pass@8, before": ("GRPO", "tasks.heldout.before.sampled.pass_at_k.8.value"),
    "GRPO: held-out pass@8, after": ("GRPO", "tasks.heldout.after.sampled.pass_at_k.8.value"),
    "evaluation: predictions identical, HF folder vs checkpoint": ("evaluation", "tasks.heldout.identical_predictions"),
    "wall time, seconds": ("total", "seconds"),
}


def combine_reports(reports: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Several reports of the job (``{name: rows}``, e.g. one per seed and thread count): each headline
    number (:data:`HEADLINES`) per run, with its mean, sample standard deviation, min and max; and the
    GRPO gain of each run (after / before and after − before of the held-out greedy accuracy)."""
    combined: dict[str, Any] = {"runs": list(reports), "numbers": {}}
    for label, (stage, path) in HEADLINES.items():
        values = {name: _lookup(rows, stage, path) for name, rows in reports.items()}
        found = [v for v in values.values() if v is not None]
        combined["numbers"][label] = {"per_run": values, **_spread(found)}
    before, after = (combined["numbers"][f"GRPO: held-out greedy accuracy, {when}"]["per_run"] for when in ("before", "after"))
    combined["grpo_gain"] = {
        name: {"ratio": after[name] / before[name] if before[name] else math.inf, "difference": after[name] - before[name]}
        for name in reports
        if before[name] is not None and after[name] is not None
    }
    return combined


def _lookup(rows: list[dict[str, Any]], stage: str, path: str) -> float | None:
    row = next((r for r in rows if r["stage"] == stage), None)
    if row is None:
        return None
    node: Any = {"seconds": row["seconds"], **row["numbers"]}
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, (int, float)) else None


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    std = statistics.stdev(values) if len(values) > 1 else 0.0  # sample standard deviation
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values)}
