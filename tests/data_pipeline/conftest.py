"""Pipeline runs shared by the data pipeline tests (one per configuration, session-scoped)."""

from pathlib import Path

import pytest
import yaml

from data_pipeline.config import load_config
from data_pipeline.pipeline import run_pipeline
from dp_planted import BLOCKED_DOMAIN, LINE_MAX_COUNT, MAX_DOC_BYTES, build_planted

REPO = Path(__file__).resolve().parents[2]


def planted_config(root: Path, out: Path) -> Path:
    config = {
        "input": {"paths": [str(root / "input")], "max_doc_bytes": MAX_DOC_BYTES},
        "output_dir": str(out),
        "tasks": 3,
        "workers": 1,
        "progress": False,
        "steps": {
            "url_filter": {"use_integrated_lists": False, "extra_domains": [BLOCKED_DOMAIN]},
            "line_dedup": {"max_count": LINE_MAX_COUNT},
            "minhash": {"bucket_tasks": 2},
            "tokenize": {"train_vocab_size": 8192},
        },
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_planted(root: Path, name: str, overrides: list[str] = ()) -> Path:
    out = root / name
    run_pipeline(load_config(str(planted_config(root, out)), list(overrides)))
    return out


@pytest.fixture(scope="session")
def planted(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("planted")
    return root, build_planted(root)


@pytest.fixture(scope="session")
def planted_run(planted) -> Path:
    """The planted corpus through the whole pipeline, 3 tasks, local executor."""
    root, _ = planted
    return run_planted(root, "out3")


@pytest.fixture(scope="session")
def planted_run_one_task(planted) -> Path:
    root, _ = planted
    return run_planted(root, "out1", ["tasks=1"])


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory) -> tuple[Path, dict]:
    """The README's main command: the embedded sample corpus through configs/data/sample.yaml, local executor."""
    out = tmp_path_factory.mktemp("sample")
    config = load_config(str(REPO / "configs/data/sample.yaml"),
                         [f"output_dir={out}", f"input.paths=[{REPO}/data_pipeline/sample/corpus]", "workers=1",
                          "progress=false"])
    return out, run_pipeline(config)
