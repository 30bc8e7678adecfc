"""Strict typed config loading: every kind of field hint converts a right value and names a wrong one;
the shipped configs still load, and the run configs refuse values of the wrong type."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import pytest

from dotsllm.config_loading import from_dict
from dotsllm.model import Dots1ModelConfig

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "dots1-tiny.yaml"
SOURCE = "run.yaml"


@dataclass
class Moved:
    MOVED_KEYS: ClassVar[dict[str, str]] = {"lr": "the learning rate lives in the schedule: set lr_schedule.peak_lr"}

    beta: float = 0.9


@dataclass
class Everything:
    flag: bool = False
    count: int = 0
    rate: float = 0.0
    label: str = ""
    mode: Literal["fast", "slow"] = "fast"
    limit: int | None = None
    old_style: Optional[float] = None  # typing.Optional, the spelling before `X | None`
    either: int | str = 0
    sizes: list[int] = field(default_factory=list)
    shape: tuple[int, ...] = ()
    pair: tuple[str, float] = ("a", 0.0)
    table: dict[str, int] = field(default_factory=dict)
    mapping: dict = field(default_factory=dict)
    items: list = field(default_factory=list)
    anything: Any = None
    inner: Inner | None = None  # a forward reference: Inner is defined below
    sources: list[Inner] = field(default_factory=list)
    phases: tuple[Inner, ...] = ()
    moved: Moved = field(default_factory=Moved)


@dataclass
class Inner:
    name: str
    weight: float = 1.0


def assert_same(got, want):
    """Equal, and of the same type all the way down (2 is not 2.0, [1] is not (1,))."""
    assert got == want and type(got) is type(want), (got, want)
    if isinstance(want, (list, tuple)):
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    elif isinstance(want, dict):
        for k in want:
            assert_same(got[k], want[k])
    elif dataclasses.is_dataclass(want):
        for f in dataclasses.fields(want):
            assert_same(getattr(got, f.name), getattr(want, f.name))


RIGHT = [
    ("flag", True, True),
    ("flag", False, False),
    ("count", 3, 3),
    ("count", 2.0, 2),
    ("count", "1e9", 1_000_000_000),  # YAML reads 1e9 (no dot) as a string
    ("count", "12", 12),
    ("rate", 3, 3.0),
    ("rate", 0.5, 0.5),
    ("rate", "1e12", 1e12),
    ("rate", "3e-4", 3e-4),
    ("label", "x", "x"),
    ("mode", "slow", "slow"),
    ("limit", None, None),
    ("limit", 5, 5),
    ("limit", "1e3", 1000),
    ("old_style", None, None),
    ("old_style", "2e-3", 2e-3),
    ("either", 7, 7),
    ("either", "7", 7),  # the first member that converts
    ("either", "abc", "abc"),
    ("sizes", [1, "2", 3.0], [1, 2, 3]),
    ("shape", [1, 2], (1, 2)),
    ("shape", [], ()),
    ("pair", ["x", 1], ("x", 1.0)),
    ("table", {"a": 1, "b": "2e3"}, {"a": 1, "b": 2000}),
    ("mapping", {"a": [1, "x"]}, {"a": [1, "x"]}),
    ("items", [1, "x", None], [1, "x", None]),
    ("anything", "x", "x"),
    ("anything", [1, {"a": None}], [1, {"a": None}]),
    ("inner", None, None),
    ("inner", {"name": "n", "weight": "2e-1"}, Inner("n", 0.2)),
    ("sources", [{"name": "a"}, {"name": "b", "weight": 2}], [Inner("a", 1.0), Inner("b", 2.0)]),
    ("phases", [{"name": "a", "weight": 3}], (Inner("a", 3.0),)),
    ("moved", {"beta": 1}, Moved(1.0)),
]


@pytest.mark.parametrize("name, value, want", RIGHT, ids=[f"{n}={v!r}" for n, v, _ in RIGHT])
def test_a_right_value_converts_to_the_field_type(name, value, want):
    assert_same(getattr(from_dict(Everything, {name: value}), name), want)


BOOL, INT, FLOAT, STR = "a bool (true or false)", "an int", "a float", "a string"
# (field, value, dotted key of the bad value, the bad value, what was expected)
WRONG = [
    ("flag", "flase", "flag", "flase", BOOL),
    ("flag", "nope", "flag", "nope", BOOL),
    ("flag", "yes-please", "flag", "yes-please", BOOL),
    ("flag", 1, "flag", 1, BOOL),
    ("flag", 0.0, "flag", 0.0, BOOL),
    ("flag", None, "flag", None, BOOL),
    ("count", 1.5, "count", 1.5, INT),
    ("count", "6.5", "count", "6.5", INT),
    ("count", True, "count", True, INT),
    ("count", "many", "count", "many", INT),
    ("count", [1], "count", [1], INT),
    ("rate", True, "rate", True, FLOAT),
    ("rate", "fast", "rate", "fast", FLOAT),
    ("rate", None, "rate", None, FLOAT),
    ("label", 5, "label", 5, STR + ', got 5 (int); quote it: "5"'),
    ("label", 1.5, "label", 1.5, STR + ', got 1.5 (float); quote it: "1.5"'),
    ("label", True, "label", True, STR + ', got True (bool); quote it: "true"'),
    ("label", ["a"], "label", ["a"], STR),
    ("mode", "medium", "mode", "medium", "one of 'fast', 'slow'"),
    ("mode", 1, "mode", 1, "one of 'fast', 'slow'"),
    ("limit", 1.5, "limit", 1.5, INT),
    ("limit", "x", "limit", "x", INT),
    ("old_style", "x", "old_style", "x", FLOAT),
    ("either", 1.5, "either", 1.5, "int or str"),
    ("either", [1], "either", [1], "int or str"),
    ("sizes", "1,2", "sizes", "1,2", "a list"),
    ("sizes", [1, "x"], "sizes[1]", "x", INT),
    ("shape", 3, "shape", 3, "a list"),
    ("shape", [1, 0.5], "shape[1]", 0.5, INT),
    ("pair", ["x"], "pair", ["x"], "a list of 2 items"),
    ("pair", ["x", "y"], "pair[1]", "y", FLOAT),
    ("pair", [1, 2], "pair[0]", 1, STR),
    ("table", [1], "table", [1], "a mapping"),
    ("table", {"a": "x"}, "table.a", "x", INT),
    ("mapping", "x", "mapping", "x", "a mapping"),
    ("items", {"a": 1}, "items", {"a": 1}, "a list"),
    ("inner", "n", "inner", "n", "a mapping"),
    ("inner", {"name": 1}, "inner.name", 1, STR),
    ("sources", {"name": "a"}, "sources", {"name": "a"}, "a list"),
    ("sources", [{"name": "a"}, {"name": "b", "weight": "heavy"}], "sources[1].weight", "heavy", FLOAT),
    ("sources", ["a"], "sources[0]", "a", "a mapping"),
    ("phases", [{"name": "a", "weight": True}], "phases[0].weight", True, FLOAT),
    ("moved", {"beta": "high"}, "moved.beta", "high", FLOAT),
]


@pytest.mark.parametrize("name, value, key, bad, expected", WRONG, ids=[f"{n}={v!r}" for n, v, *_ in WRONG])
def test_a_wrong_value_names_its_key_value_and_expected_type(name, value, key, bad, expected):
    with pytest.raises(ValueError) as err:
        from_dict(Everything, {name: value}, where=SOURCE)
    message = str(err.value)
    assert message.startswith(f"{SOURCE}: {key}: expected {expected}"), message
    assert f"got {bad!r} ({type(bad).__name__})" in message and "\n" not in message


@pytest.mark.parametrize(
    "values, message",
    [
        ({"bogus": 1}, "run.yaml: unknown key(s) ['bogus']; known: ["),
        ({"inner": {"nme": "x"}}, "run.yaml: inner: unknown key(s) ['nme']; known: ['name', 'weight']"),
        ({"sources": [{"name": "a"}, {"name": "b", "wieght": 2}]}, "run.yaml: sources[1]: unknown key(s) ['wieght']"),
        ({"inner": {}}, "run.yaml: inner: missing key(s) ['name']"),
        ({"moved": {"lr": 3e-4}}, "run.yaml: moved.lr: the learning rate lives in the schedule: set lr_schedule.peak_lr"),
        ({"moved": {"lr": 3e-4, "bogus": 1}}, "run.yaml: moved.lr: the learning rate lives in the schedule"),
        ({"moved": {"bogus": 1}}, "run.yaml: moved: unknown key(s) ['bogus']; known: ['beta']"),
        ("flag: true", "run.yaml: expected a mapping, got 'flag: true' (str)"),
    ],
)
def test_unknown_missing_and_moved_keys_are_named(values, message):
    with pytest.raises(ValueError) as err:
        from_dict(Everything, values, where=SOURCE)
    assert str(err.value).startswith(message), str(err.value)


CONFIG_CLASSES = {"pretrain": "PretrainConfig", "sft": "SFTConfig", "grpo": "GRPOConfig"}


def config_class(recipe: str) -> type:
    """The config class of ``recipe`` (pretrain, sft, grpo), from ``dotsllm.recipes.<recipe>``."""
    return getattr(importlib.import_module(f"dotsllm.recipes.{recipe}"), CONFIG_CLASSES[recipe])


@pytest.mark.parametrize(
    "override, message",
    [
        ("checkpoint.load=flase", "checkpoint.load: expected a bool (true or false), got 'flase' (str)"),
        (
            "optimizer.use_distributed_optimizer=nope",
            "optimizer.use_distributed_optimizer: expected a bool (true or false), got 'nope' (str)",
        ),
        ("training.seq_length=1.5", "training.seq_length: expected an int, got 1.5 (float)"),
    ],
)
def test_run_config_values_of_the_wrong_type_are_refused(override, message):
    with pytest.raises(ValueError) as err:
        config_class("pretrain").load(TINY, [override])
    assert str(err.value) == f"{TINY}: {message}"


def test_model_overrides_of_the_wrong_type_are_refused_when_the_model_config_is_built():
    config = config_class("pretrain").load(TINY, ["model_overrides.num_layers=6.5"])
    with pytest.raises(ValueError, match=r"^model_overrides: num_layers: expected an int, got 6\.5 \(float\)$"):
        Dots1ModelConfig.from_preset("dots1-tiny", **config.model_overrides)


SHIPPED = sorted((REPO / "configs").glob("*/*.yaml"))
OVERRIDES = {
    "grpo/dots1-142b.yaml": ["tokenizer=tok.model"],
    "data/web.yaml": ["input.paths=[in]", "output_dir=out", "slurm.partition=cpu"],
}


@pytest.mark.parametrize("path", SHIPPED, ids=[f"{p.parent.name}/{p.name}" for p in SHIPPED])
def test_shipped_configs_load(path):
    kind = path.parent.name
    overrides = OVERRIDES.get(f"{kind}/{path.name}", [])
    if kind == "data":
        from data_pipeline.config import load_config

        assert load_config(str(path), overrides).output_dir
    else:
        assert config_class(kind).load(path, overrides).run_dir
