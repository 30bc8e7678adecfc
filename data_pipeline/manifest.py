"""`manifest.json`: per-stage, per-step counts (in, out, dropped by reason), bytes, tokens, time; the config."""

import glob
import json

import orjson
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers import JsonlWriter
from omegaconf import DictConfig, OmegaConf

_COUNTS = {"total", "forwarded", "dropped"}


def stage_stats(output_dir: str, stage: str) -> list[dict]:
    """Per step of `stage`: name, time and stat totals summed over its tasks' `stats/<rank>.json`.

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
        entry["dropped"] = {k.removeprefix("dropped_"): v for k, v in values.items() if k.startswith("dropped_")}
        values = {k: v for k, v in values.items() if k not in _COUNTS and not k.startswith("dropped_")}
    entry.update(values)
    entry["time_s"] = round(stat["time_s"], 3)
    return entry


def write_manifest(config: DictConfig, stages: list[str], wall_time_s: float) -> dict:
    manifest = {"stages": {}, "wall_time_s": round(wall_time_s, 3)}
    totals = {"input_lines": 0, "errors": 0, "rejected": 0, "kept": 0, "tokens": 0, "input_bytes": 0, "kept_chars": 0}
    for stage in stages:
        steps = [_step_entry(stat) for stat in stage_stats(config.output_dir, stage)]
        manifest["stages"][stage] = steps
        for entry in steps:
            totals["rejected"] += sum(entry.get("dropped", {}).values())
            totals["tokens"] += entry.get("tokens", 0)
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
