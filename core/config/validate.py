"""Typed validation: a raw mapping -> a dataclass, every value checked against its annotation, unknown keys
named with the closest valid key."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from anymae.core.config.errors import ConfigError

__all__ = ["from_dict"]


def from_dict(cls: type, raw: Any, where: str) -> Any:
    """Validate ``raw`` (a mapping) into dataclass ``cls``; ``where`` is the dotted key for messages."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {where or 'file'} must be a mapping, got {type(raw).__name__}: {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            match = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {match[0]!r}?" if match else ""
            raise ConfigError(
                f"unknown config key {dotted!r}{hint} Valid keys in {where or 'the top level'}: {', '.join(fields)}"
            )
        kwargs[key] = _check(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config {where or 'file'}: {exc}") from None


def _check(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _check(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config {key}: {value!r} matches none of {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"config {key}: expected null, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"config {key}: {value!r} is not one of {', '.join(map(repr, args))}")
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, key)  # a section validated before
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is tuple or tp is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_check(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
            if not args:
                return tuple(value)
            if len(value) != len(args):
                raise ConfigError(f"config {key}: expected {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_check(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, args, strict=True)))
    elif origin is list or tp is list:
        if isinstance(value, (list, tuple)):
            return [_check(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        raise TypeError(f"config field {key} has an unsupported annotation {tp!r}")
    raise ConfigError(f"config {key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")  # Literal[...] and unions have none
