"""``dotsllm report``: the main job's table, what each stage achieved and how long it took.

Read from what the stages leave behind (defaults: the paths of ``scripts/main_job.sh``): the data
pipeline's ``manifest.json``, the runs' ``metrics.jsonl`` and the ``dotsllm eval --output`` JSONs;
the wall times from ``stages.tsv`` (``stage<TAB>seconds`` lines, as the main job writes them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

JOB = "outputs/main_job"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--times", default=f"{JOB}/stages.tsv", help="stage<TAB>seconds lines")
    parser.add_argument("--data", default="outputs/data_sample", help="the data pipeline's output folder")
    parser.add_argument("--pretrain", default="runs/dots1-tiny", help="the pretraining run")
    parser.add_argument("--sft", default="runs/dots1-tiny-sft", help="the SFT run")
    parser.add_argument(
        "--sft-eval", nargs=2, metavar=("BEFORE", "AFTER"),
        default=[f"{JOB}/eval_pretrained.json", f"{JOB}/eval_sft.json"],
        help="dotsllm eval JSONs of the SFT task before and after SFT",
    )  # fmt: skip
    parser.add_argument("--grpo", default="runs/dots1-tiny-grpo", help="the GRPO run")
    parser.add_argument("--hf", default="outputs/hf/dots1-tiny-grpo", help="the exported HF folder")
    parser.add_argument(
        "--export-eval", nargs=2, metavar=("CHECKPOINT", "HF"),
        default=[f"{JOB}/eval_grpo.json", f"{JOB}/eval_hf.json"],
        help="dotsllm eval JSONs of one task on the exported checkpoint and on its HF folder",
    )  # fmt: skip
    parser.add_argument("--output", help="also write the rows as JSON here")


def data_row(manifest: dict) -> str:
    t = manifest["totals"]
    return (
        f"{t['input_lines']:,} input lines → {t['kept']:,} kept, {t['rejected']:,} rejected, {t['errors']:,} "
        f"malformed; {t['tokens']:,} tokens"
    )


def pretrain_row(metrics) -> str:
    first, last = metrics.train[0], metrics.train[-1]
    loss = f"{first['loss']:.2f} → {last['loss']:.2f}"
    text = f"{last['step']} steps, {last['tokens_seen']:,} tokens; train loss {loss}"
    if metrics.valid:
        text += f", valid loss {metrics.valid[-1]['valid_loss']:.2f} (step {metrics.valid[-1]['step']})"
    return text


def sft_row(metrics, before: dict, after: dict) -> str:
    parts = []
    for name, result in after["tasks"].items():
        old = before["tasks"][name]
        parts.append(f"{name} {old['correct']}/{old['samples']} → {result['correct']}/{result['samples']}")
    text = f"held-out {_metric(after)}: {', '.join(parts)}; {after['step']} steps"
    if metrics.valid:
        first, last = metrics.valid[0], metrics.valid[-1]
        losses = f"{first['valid_loss']:.3f} → {last['valid_loss']:.3f}"
        text += f", valid loss {losses} (steps {first['step']} → {last['step']})"
    return text


def grpo_row(metrics) -> str:
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
    shards = sorted(hf_dir.glob("*.safetensors"))
    if not shards:
        raise SystemExit(f"dotsllm report: {hf_dir} holds no safetensors")
    size = sum(f.stat().st_size for f in shards) / 2**20
    return f"{hf_dir}: {len(shards)} safetensors file(s), {size:.1f} MiB, tokenizer with the chat template"


def evaluation_row(checkpoint: dict, hf: dict) -> str:
    parts = []
    for name, ours in checkpoint["tasks"].items():
        theirs = hf["tasks"][name]
        same = sum(a["prediction"] == b["prediction"] for a, b in zip(ours["predictions"], theirs["predictions"]))
        parts.append(
            f"{name} {_metric(hf)}: transformers on the HF folder {theirs['correct']}/{theirs['samples']}, dotsllm on "
            f"the checkpoint {ours['correct']}/{ours['samples']}; {same}/{ours['samples']} predictions identical"
        )
    return "; ".join(parts)


def _metric(result: dict) -> str:
    scores = {task.get("score", "exact") for task in result["tasks"].values()}
    from dotsllm.evaluation.generation import SCORE_NAMES

    return " / ".join(SCORE_NAMES[s] for s in sorted(scores))


def read_times(path: Path) -> dict[str, float]:
    times = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        name, _, seconds = line.partition("\t")
        try:
            times[name] = float(seconds)
        except ValueError:
            raise SystemExit(f"dotsllm report: {path}:{number}: expected stage<TAB>seconds, got {line!r}") from None
    return times


def rows(args: argparse.Namespace) -> list[dict]:
    from dotsllm.training.plots import read_metrics

    def load(path: str) -> dict:
        return json.loads(Path(path).read_text())

    achieved = {
        "data pipeline": data_row(load(f"{args.data}/manifest.json")),
        "pretraining": pretrain_row(read_metrics(f"{args.pretrain}/metrics.jsonl")),
        "SFT": sft_row(read_metrics(f"{args.sft}/metrics.jsonl"), *map(load, args.sft_eval)),
        "GRPO": grpo_row(read_metrics(f"{args.grpo}/metrics.jsonl")) + f"; reward curve {args.grpo}/plots/grpo.png",
        "export to HF": export_row(Path(args.hf)),
        "evaluation": evaluation_row(*map(load, args.export_eval)),
    }
    times = read_times(Path(args.times))
    found = [{"stage": stage, "achieved": text, "seconds": times.get(stage)} for stage, text in achieved.items()]
    return [*found, {"stage": "total", "achieved": "", "seconds": sum(times.values())}]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dotsllm.training.plots import MetricsFileError

    try:
        found = rows(args)
    except (MetricsFileError, FileNotFoundError, KeyError, IndexError) as e:
        raise SystemExit(f"dotsllm report: {type(e).__name__}: {e}")
    table = Table(title="main job: what each stage achieved")
    for column in ("stage", "achieved", "wall time"):
        table.add_column(column)
    for row in found:
        table.add_row(row["stage"], row["achieved"], _duration(row["seconds"]), end_section=row is found[-2])
    Console(width=160).print(table)
    if args.output:
        Path(args.output).write_text(json.dumps(found, indent=2, ensure_ascii=False) + "\n")
    return 0


def _duration(seconds: float | None) -> str:
    return "" if seconds is None else f"{int(seconds) // 60}:{int(seconds) % 60:02d}"
