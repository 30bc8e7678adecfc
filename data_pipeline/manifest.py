"""`manifest.json`: per-stage, per-step counts (in, out, dropped by reason, characters removed by reason),
bytes, tokens, time; a per-stage summary; the config."""

import glob
import json

import orjson
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers.base import BaseReader
from datatrove.pipeline.writers import JsonlWriter
from omegaconf import DictConfig, OmegaConf

_COUNTS = {"total", "forwarded", "dropped"}
_DROPPED, _REMOVED_CHARS = "dropped_", "removed_chars_"


def stage_stats(output_dir: str, stage: str) -> list[dict]:
    """Per step of `stage` (a stage run: `logs/<stage>/`): name, time and stat totals summed over its
    tasks' `stats/<rank>.json`.

    Read from the per-task files because the executor's `stats.json` covers only the tasks that ran
    in its last invocation, not those completed before an interruption.
    """
    steps = []
    for path in sorted(glob.glob(f"{output_dir}/logs/{stage}/stats/*.json")):
        with open(path) as f:
            for i, step in enumerate(json.load(f)):
                if i == len(steps):
                    steps.append({"name": step["name"], "time_s": 0.0, "values": {}})
                steps[i]["time_s"] += _total(step["time_stats"])
                for name, value in step["stats"].items():
                    steps[i]["values"][name] = steps[i]["values"].get(name, 0) + _total(value)
    return steps


def _total(value: dict | int) -> float:
    return value["total"] if isinstance(value, dict) else value  # datatrove saves never-updated stats as 0


def _step_entry(stat: dict) -> dict:
    values = stat["values"]
    entry = {"step": stat["name"]}
    if stat["name"].startswith(BaseFilter.type):
        entry["in"] = values.get("total", 0)
        entry["out"] = values.get("forwarded", 0)
        entry["dropped"] = {k.removeprefix(_DROPPED): v for k, v in values.items() if k.startswith(_DROPPED)}
        values = {k: v for k, v in values.items() if k not in _COUNTS and not k.startswith(_DROPPED)}
    if removed := {k.removeprefix(_REMOVED_CHARS): v for k, v in values.items() if k.startswith(_REMOVED_CHARS)}:
        entry["removed_chars"] = removed
        values = {k: v for k, v in values.items() if not k.startswith(_REMOVED_CHARS)}
    entry.update(values)
    entry["time_s"] = round(stat["time_s"], 3)
    return entry


def _summary(steps: list[dict]) -> dict:
    """A stage's documents in and out (None for the dedup stages, which read and write records),
    dropped and characters removed by reason, and its steps' time summed over tasks."""
    reader = next((e for e in steps if e["step"].startswith(BaseReader.type)), None)
    writer = next((e for e in reversed(steps) if e["step"].startswith(JsonlWriter.type)), None)
    dropped, removed = {}, {}
    for entry in steps:
        for into, counts in ((dropped, entry.get("dropped", {})), (removed, entry.get("removed_chars", {}))):
            for reason, n in counts.items():
                into[reason] = into.get(reason, 0) + n
    return {"in": reader.get("input_lines", reader.get("documents", 0)) if reader else None,
            "out": writer.get("total", 0) if writer else None, "dropped": dropped, "removed_chars": removed,
            "time_s": round(sum(e["time_s"] for e in steps), 3)}


def write_manifest(config: DictConfig, runs: list[str], wall_time_s: float) -> dict:
    """`runs`: the stage runs in order, `<stage>` or `<stage>/<part>` (their `logs/` folders)."""
    manifest = {"stages": {}, "summary": {}, "wall_time_s": round(wall_time_s, 3)}
    totals = {"input_lines": 0, "errors": 0, "rejected": 0, "kept": 0, "tokens": 0, "input_bytes": 0, "kept_chars": 0,
              "removed_chars": 0}
    for run in runs:
        manifest["stages"].setdefault(run.split("/")[0], []).extend(
            _step_entry(stat) for stat in stage_stats(config.output_dir, run))
    for stage, steps in manifest["stages"].items():
        manifest["summary"][stage] = summary = _summary(steps)
        totals["rejected"] += sum(summary["dropped"].values())
        totals["removed_chars"] += sum(summary["removed_chars"].values())
        totals["tokens"] += sum(entry.get("tokens", 0) for entry in steps)
        if stage == "ingest" and steps:
            for key in ("input_lines", "errors", "input_bytes"):
                totals[key] = steps[0].get(key, 0)
        if stage == "final" and steps:
            writer = next(e for e in steps if e["step"].startswith(JsonlWriter.type))
            totals["kept"], totals["kept_chars"] = writer.get("total", 0), writer.get("doc_len", 0)
    totals["balanced"] = totals["input_lines"] == totals["kept"] + totals["rejected"] + totals["errors"]
    manifest["totals"] = totals
    manifest["config"] = OmegaConf.to_container(config, resolve=True)
    with open(f"{config.output_dir}/manifest.json", "wb") as f:
        f.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return manifest
