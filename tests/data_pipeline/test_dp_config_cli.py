"""Config loading with dotted overrides, and the train-tokenizer command."""

from pathlib import Path

import pytest
import yaml

from data_pipeline.cli import main
from data_pipeline.config import load_config
from dotsllm.tokenizer import Tokenizer


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.yaml"
    config = {"input": {"paths": ["in"]}, "output_dir": "out", "steps": {"minhash": {"bands": 64}}}
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_overrides_apply_over_file_and_defaults(config_file):
    config = load_config(config_file, ["steps.minhash.rows=8", "executor=slurm", "slurm.partition=p",
                                       "steps.quality.c4.params.min_num_sentences=2"])
    assert (config.steps.minhash.bands, config.steps.minhash.rows, config.steps.minhash.n_grams) == (64, 8, 5)
    assert config.executor == "slurm" and config.slurm.partition == "p"
    assert config.steps.quality.c4.params.min_num_sentences == 2
    assert config.steps.language.threshold == 0.65 and list(config.steps.language.languages) == ["en", "zh"]


def test_unknown_keys_and_missing_values_are_named(config_file, tmp_path):
    with pytest.raises(ValueError, match="steps.minhash.bandz"):
        load_config(config_file, ["steps.minhash.bandz=3"])
    with pytest.raises(ValueError, match="executor='spark'"):
        load_config(config_file, ["executor=spark"])
    bare = tmp_path / "bare.yaml"
    bare.write_text("input: {paths: [x]}\n")
    with pytest.raises(ValueError, match="output_dir"):
        load_config(str(bare))


def test_train_tokenizer_command_gives_a_lossless_bpe_tokenizer(tmp_path, capsys):
    corpus = str(Path(__file__).resolve().parents[2] / "data_pipeline/sample/corpus")
    assert main(["train-tokenizer", corpus, "--output", str(tmp_path / "tok"), "--vocab-size", "1000"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path}/tok.model"
    tokenizer = Tokenizer(str(tmp_path / "tok.model"))
    assert tokenizer.vocab_size == 1000
    text = "The old   captain\nrepaired 42 boats.\n\n在公园里，我们讨论了 ü and ☃"
    ids = tokenizer.encode_batch([text])[0]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eod not in ids


def test_console_shows_a_bar_per_stage_and_the_table_and_datatrove_logs_only_when_verbose(tmp_path):
    import json
    import subprocess
    import sys

    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": f"document {i}"}) + "\n"
                                               for i in range(6)))
    off = {"enabled": False}
    config = {"input": {"paths": [str(tmp_path / "in.jsonl")]}, "output_dir": str(tmp_path / "out"),
              "steps": {"url_filter": off, "language": off, "minhash": off, "tokenize": off,
                        "quality": {rule: off for rule in ("gopher_quality", "gopher_repetition", "c4", "fineweb")}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "data_pipeline.cli", "run", str(tmp_path / "c.yaml")]
    runs = ["ingest", "dedup_index/exact", "dedup_index/lines", "filter", "final"]
    quiet = subprocess.run(command, capture_output=True, text=True, check=True)
    bars = quiet.stderr.splitlines()
    assert [line.split()[0] for line in bars] == runs and all("2/2 tasks" in line for line in bars)
    table = [line.split("│")[1].strip() for line in quiet.stdout.splitlines() if line.startswith("│")]
    assert [stage for stage in table if stage] == ["ingest", "dedup_index", "filter", "final"]
    assert quiet.stdout.splitlines()[-1].startswith("6 input lines → 6 kept, 0 rejected, 0 errors")
    verbose = subprocess.run(command + [f"output_dir={tmp_path}/verbose", "--verbose"], capture_output=True,
                             text=True, check=True)
    assert verbose.stderr.count("Stats: {") > len(runs) * 2  # every step's stats of every task
    assert "Stats: {" not in quiet.stderr + quiet.stdout
