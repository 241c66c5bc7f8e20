"""A recipe's mapping → checked config dataclasses (stdlib only): each value against its field's
type (Literal choices, Optional, lists, nested sections), unknown keys with the closest name, and
the dataclasses' own `__post_init__` checks, all as one-line ConfigErrors naming the dotted key."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing

from huginn_db.errors import ConfigError

__all__ = ["from_dict"]


def _check(value, tp, path: str):
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path} must be {'|'.join(map(str, allowed))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _check(value, next(a for a in args if a is not type(None)), path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return from_dict(tp, value, path)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls, data: dict, path: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{(path + '.' if path else '') + close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{full}'{hint}")
        kwargs[key] = _check(value, hints[key], full)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # the dataclass's own __post_init__ checks
        if isinstance(err, ConfigError):
            raise
        msg = str(err)
        first = re.split(r"[ =]", msg, maxsplit=1)[0]
        if not path:
            raise ConfigError(msg) from None
        # "backprop_depth=99 exceeds ..." from objective.bptt reads objective.bptt.backprop_depth=99 ...
        raise ConfigError(f"{path}.{msg}" if first in names else f"{path}: {msg}") from None
