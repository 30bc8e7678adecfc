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
