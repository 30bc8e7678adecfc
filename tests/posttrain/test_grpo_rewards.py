"""Reward functions in worker processes: failures are counted and score 0; the built-in functions."""

import pytest

from dotsllm.posttrain.grpo import reward_functions as rf
from dotsllm.posttrain.grpo.rewards import RewardRunner, RewardSettings, RewardSpec


@pytest.fixture(scope="module")
def runner():
    settings = RewardSettings(
        functions=[RewardSpec("faulty_rewards:by_text"), RewardSpec("math_accuracy", weight=0.5)],
        accuracy="math_accuracy", timeout_s=2.0, chunk_size=4,
    )  # fmt: skip
    runner = RewardRunner(settings)
    yield runner
    runner.close()


def columns(completions, answers=None):
    n = len(completions)
    return {
        "prompts": ["p"] * n, "completions": completions, "completion_ids": [[1, 2]] * n,
        "truncated": [False] * n, "answer": answers or ["3"] * n,
    }  # fmt: skip


def test_raising_hanging_nan_and_dying_rewards_score_zero_and_are_counted(runner):
    texts = ["ok", "raise", "\\boxed{3}", "hang", "nan", "die", "none", "word", "ok"]
    outcome = runner.score(columns(texts, ["3"] * 8 + ["\\frac{"]))
    assert outcome.values["by_text"] == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert outcome.failures["by_text"] == {"errors": 2, "timeouts": 1, "nonfinite": 2}  # raise, die; hang; nan, word
    assert outcome.no_reward == {"by_text": 1, "math_accuracy": 1}  # "none"; the unparseable gold answer
    assert outcome.values["math_accuracy"] == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert outcome.total == [1.0, 0.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert "RuntimeError: this reward raises" in outcome.messages["by_text"]
    # the pool is whole again: a clean batch scores normally
    assert runner.score(columns(["ok"] * 5)).values["by_text"] == [1.0] * 5


def test_a_wrong_length_answer_is_an_error_and_names_are_checked():
    runner = RewardRunner(RewardSettings(functions=[RewardSpec("faulty_rewards:wrong_length")], accuracy=None))
    try:
        outcome = runner.score(columns(["a", "b"]))
    finally:
        runner.close()
    assert outcome.values["wrong_length"] == [0.0, 0.0]
    assert outcome.failures["wrong_length"] == {"errors": 2, "timeouts": 0, "nonfinite": 0}
    assert "returned 2 values for 1 samples" in outcome.messages["wrong_length"]
    with pytest.raises(ValueError, match="'no_such_module:f' cannot be imported"):
        RewardRunner(RewardSettings(functions=[RewardSpec("no_such_module:f")], accuracy=None))
    with pytest.raises(ValueError, match="not a built-in"):
        RewardRunner(RewardSettings(functions=[RewardSpec("accuracy")], accuracy=None))
    with pytest.raises(ValueError, match="names must differ"):
        RewardSettings(functions=[RewardSpec("format"), RewardSpec("format", weight=2)])


def test_math_accuracy_takes_the_boxed_answer_first():
    completions = ["2 + 2 = 5. \\boxed{4}", "the answer is 4", "\\boxed{5}", "\\boxed{\\frac{1}{2}}", "no number", "x"]
    answers = ["4", "4", "4", "0.5", "4", "\\boxed{"]
    assert rf.math_accuracy(completions, answers) == [1.0, 1.0, 0.0, 1.0, 0.0, None]


def test_format_exact_match_and_overlong_punishment():
    texts = ["3 + 4 = 7. \\boxed{7}", "\\boxed{7} and more", "no box", "\\boxed{7}"]
    assert rf.format_reward(texts, [False, False, False, True]) == [1.0, 0.0, 0.0, 0.0]  # the last hit the budget
    assert rf.exact_match([" 7 ", "7.0"], ["7", "7"]) == [1.0, 0.0]
    lengths = [10, 12, 14, 16, 20]
    assert rf.overlong_punishment([[0] * n for n in lengths], max_tokens=16, buffer_tokens=4) == [0.0, 0.0, -0.5, -1.0, -1.0]
