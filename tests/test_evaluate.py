"""``dotsllm.evaluation.evaluate``'s checks of its inputs, made before any model is loaded."""

import json

import pytest

from dotsllm import cli
from dotsllm.evaluation import EvaluationError, evaluate
from dotsllm.evaluation.runner import is_hf_folder


@pytest.fixture
def task(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"prompt": "a", "answer": "b"}) + "\n\n")
    return path


@pytest.fixture
def hf_folder(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    return tmp_path / "hf"


def test_tasks_without_their_inputs_are_refused(tmp_path, task, hf_folder):
    with pytest.raises(EvaluationError, match="perplexity task needs --data"):
        evaluate(tmp_path, ["perplexity"])
    with pytest.raises(EvaluationError, match="generation tasks need --tokenizer"):
        evaluate(tmp_path, [str(task)])
    with pytest.raises(EvaluationError, match="perplexity needs a dotsllm checkpoint, not a HF folder"):
        evaluate(hf_folder, ["perplexity"], data=["x"])
    with pytest.raises(SystemExit, match="dotsllm eval: generation tasks need --tokenizer"):
        cli.main(["eval", str(hf_folder), "--tasks", str(task)])


def test_a_bad_task_line_is_named_before_the_model_loads(tmp_path, task, hf_folder):
    task.write_text(task.read_text() + '{"prompt": "a"}\n')
    with pytest.raises(ValueError, match=r"qa.jsonl:3: expected \{\"prompt\": str, \"answer\": str\}"):
        evaluate(hf_folder, [str(task)], tokenizer="unused")
    task.write_text('{"prompt": \n')
    with pytest.raises(ValueError, match=r"qa.jsonl:1: not JSON: Expecting value"):
        evaluate(hf_folder, [str(task)], tokenizer="unused")


def test_a_hf_folder_is_one_without_dotsllm_metadata(tmp_path, hf_folder):
    from dotsllm.training.checkpoint import META_FILE

    assert is_hf_folder(hf_folder) and not is_hf_folder(tmp_path)
    (hf_folder / META_FILE).write_text("{}")
    assert not is_hf_folder(hf_folder)
