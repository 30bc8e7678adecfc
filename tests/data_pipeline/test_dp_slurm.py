"""The same pipeline through datatrove's SLURM executor on a real local SLURM gives the local outputs."""

import os
import sys

from conftest import planted_config
from dp_planted import outputs

from data_pipeline.config import load_config
from data_pipeline.pipeline import run_pipeline


def _files(out, pattern):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob(pattern))}


def test_slurm_executor_gives_the_local_outputs(planted, planted_run, local_slurm, monkeypatch):
    root, _ = planted
    out = root / "slurm"
    monkeypatch.setenv("SLURM_CONF", local_slurm.env["SLURM_CONF"])
    config = load_config(str(planted_config(root, out)), [
        "executor=slurm", f"slurm.partition={local_slurm.partition}", "slurm.time=00:20:00",
        "slurm.mem_per_cpu_gb=1", f"slurm.venv_path={os.path.join(sys.prefix, 'bin', 'activate')}"])
    manifest = run_pipeline(config)
    assert sorted(p.name for p in (out / "logs" / "final" / "completions").iterdir()) == ["00000", "00001", "00002"]
    for pattern in ("docs/*.jsonl", "tokens/*", "errors/*.jsonl", "rejected/*/*.jsonl", "tokenizer.vocab"):
        assert _files(out, pattern) == _files(planted_run, pattern), pattern
    assert manifest["totals"] == outputs(planted_run)["manifest"]["totals"]
