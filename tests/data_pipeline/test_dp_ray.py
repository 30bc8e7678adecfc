"""The sample corpus through datatrove's Ray executor on a local Ray instance gives the local executor's outputs."""

import ray
from conftest import REPO

from data_pipeline.config import load_config
from data_pipeline.pipeline import run_pipeline

OUTPUTS = ("docs/*.jsonl", "tokens/*", "errors/*.jsonl", "rejected/*/*.jsonl", "tokenizer.vocab")


def _files(out, pattern):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob(pattern))}


def test_ray_executor_gives_the_local_outputs(sample_run, tmp_path):
    local, local_manifest = sample_run
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        config = load_config(str(REPO / "configs/data/sample.yaml"), [
            f"output_dir={tmp_path}", f"input.paths=[{REPO}/data_pipeline/sample/corpus]", "executor=ray",
            "ray.mem_per_cpu_gb=1", "progress=false"])
        manifest = run_pipeline(config)
    finally:
        ray.shutdown()
    assert sorted(p.name for p in (tmp_path / "logs" / "final" / "completions").iterdir()) == ["00000", "00001"]
    assert all(_files(local, pattern) for pattern in OUTPUTS)
    for pattern in OUTPUTS:
        assert _files(tmp_path, pattern) == _files(local, pattern), pattern
    assert manifest["totals"] == local_manifest["totals"]
