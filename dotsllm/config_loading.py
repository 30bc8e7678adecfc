"""YAML run configs with dotted ``key=value`` overrides, turned into nested dataclasses.

Every value is checked against its field's type hint (see :func:`from_dict`): a value of the wrong
type is an error naming its dotted key, never silently kept (``load: flase`` is not true).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a nested dict, in order."""
    result = _deep_copy(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[leaf] = yaml.safe_load(raw)
    return result


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping")
    return values


def from_dict(cls: type[T], values: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``values`` (read from ``where``), each value checked against its
    field's type hint and recursing into dataclass fields:

    - ``bool``: true or false only; ``int``: an int, or an integral float or numeric string
      (YAML reads ``1e9`` as a string); ``float``: a number or numeric string; ``str``: a string;
    - ``Literal[...]``: one of its values; ``X | None``: None or an ``X``; ``X | Y``: the first that fits;
    - ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``: a list of such items; ``dict[K, V]``: a mapping;
    - a dataclass: a mapping of its fields; ``Any`` (and any other hint): anything.

    A mismatch, an unknown key or a missing one raises ``ValueError("<where>: <dotted key>: ...")``; an
    unknown key that the dataclass lists in its ``MOVED_KEYS`` (key → hint) gives its hint instead.
    """
    try:
        return _dataclass(cls, values, "")
    except _Mismatch as err:
        raise ValueError(f"{where}: {err}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


class _Mismatch(ValueError):
    """A value that does not fit its type: its dotted key and what is wrong."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}" if key else problem)


def _expected(key: str, what: str, value: Any, hint: str = "") -> _Mismatch:
    return _Mismatch(key, f"expected {what}, got {value!r} ({type(value).__name__}){hint}")


def _dataclass(cls: type[T], values: Any, key: str) -> T:
    if not isinstance(values, dict):
        raise _expected(key, "a mapping", values)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields), key=str)
    moved = [k for k in unknown if k in getattr(cls, "MOVED_KEYS", {})]
    if moved:
        raise _Mismatch(_join(key, moved[0]), cls.MOVED_KEYS[moved[0]])
    if unknown:
        raise _Mismatch(key, f"unknown key(s) {unknown}; known: {sorted(fields)}")
    missing = [
        name for name, f in fields.items()
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]  # fmt: skip
    if missing:
        raise _Mismatch(key, f"missing key(s) {missing}")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _convert(hints[name], value, _join(key, name)) for name, value in values.items()})


def _convert(hint: Any, value: Any, key: str) -> Any:
    """``value`` as type ``hint``, or a :class:`_Mismatch`."""
    if dataclasses.is_dataclass(hint):
        return _dataclass(hint, value, key)
    if hint in _SCALARS:
        return _SCALARS[hint](value, key)
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin is Literal:
        if any(value == choice and type(value) is type(choice) for choice in args):
            return value
        raise _expected(key, f"one of {', '.join(map(repr, args))}", value)
    if origin in (typing.Union, types.UnionType):
        return _union(args, value, key)
    if origin in (list, tuple):
        return _sequence(origin, args, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise _expected(key, "a mapping", value)
        if not args:
            return value
        return {_convert(args[0], k, key): _convert(args[1], v, _join(key, str(k))) for k, v in value.items()}
    return value


def _union(args: tuple, value: Any, key: str) -> Any:
    """None for an Optional, else the first member type that ``value`` converts to."""
    if value is None and type(None) in args:
        return None
    members = [a for a in args if a is not type(None)]
    if len(members) == 1:
        return _convert(members[0], value, key)
    for member in members:
        try:
            return _convert(member, value, key)
        except _Mismatch:
            pass
    raise _expected(key, " or ".join(_type_name(a) for a in args), value)


def _sequence(origin: type, args: tuple, value: Any, key: str) -> list | tuple:
    """A YAML list as ``list[X]``, ``tuple[X, ...]`` or ``tuple[X, Y, ...]``, items converted."""
    if not isinstance(value, (list, tuple)):
        raise _expected(key, "a list", value)
    if not args:
        return origin(value)
    if origin is tuple and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise _expected(key, f"a list of {len(args)} items", value)
        item_hints = args
    else:
        item_hints = [args[0]] * len(value)
    return origin(_convert(h, v, f"{key}[{i}]") for i, (h, v) in enumerate(zip(item_hints, value)))


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise _expected(key, "a bool (true or false)", value)


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    number = _number(value)
    if number is not None and number.is_integer():
        return int(number)
    raise _expected(key, "an int", value)


def _to_float(value: Any, key: str) -> float:
    number = _number(value)
    if number is None:
        raise _expected(key, "a float", value)
    return number


def _to_str(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        text = str(value).lower() if isinstance(value, bool) else str(value)
        raise _expected(key, "a string", value, f'; quote it: "{text}"')
    raise _expected(key, "a string", value)


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a number or numeric string (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except (ValueError, OverflowError):
        return None


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _type_name(hint: Any) -> str:
    return "null" if hint is type(None) else getattr(hint, "__name__", repr(hint))


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _deep_copy(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in values.items()}
