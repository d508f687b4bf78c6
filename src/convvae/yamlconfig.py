"""Strict YAML into typed dataclasses: the machinery behind ``convvae.config``, knowing no
section of params.yaml.

A missing file, invalid YAML, a duplicate key, an unknown key or a value of the wrong type is a
``ConfigError`` that names the file, the line or the key (``train.lr``) and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from convvae.errors import ConfigError


def read_yaml(path: Path) -> Any:
    """A params file's YAML ({} when empty); a missing or malformed file is a ConfigError."""
    if not path.is_file():
        raise ConfigError(
            f"{path}: file not found; run from the repository root or pass --params PATH"
        )
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read it ({err}); save it as UTF-8 text") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "syntax error"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}; fix it there") from None
    return raw if raw is not None else {}


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which PyYAML would silently overwrite, and
    list or mapping keys, on which it fails with a TypeError."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, list | dict | set):  # `? [a, b]: 1`: not a name, nor hashable
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a name, not a {type(key).__name__}",
                    key_node.start_mark,
                )  # fmt: skip
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names), key=str)  # YAML keys may be bools or ints
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]}; known keys in {where}: {', '.join(names)}"
        )
    values = {name: _coerce(hints[name], raw[name], prefix + name) for name in names if name in raw}
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if all(typing.get_origin(a) is Literal for a in inner):  # Literal["auto"] | Likelihood
            inner = [Literal[tuple(v for a in inner for v in typing.get_args(a))]]
        for candidate in inner[:-1]:  # int | list[int]: the first type that fits
            with contextlib.suppress(ConfigError):
                return _coerce(candidate, value, key)
        return _coerce(inner[-1], value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of keys to values, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if hint is float:
        # YAML 1.1 reads 1e-3 (no dot) as a string; accept it as the number the user meant.
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")


def size_pair(value: Any, key: str, smallest: int = 1) -> tuple[int, int] | None:
    """An image size as written in params.yaml or a model file's preprocessing record (None,
    an int for a square, [side] or [height, width]) as (height, width); else a ConfigError.
    Each side must be at least ``smallest`` pixels."""
    if value is None:
        return None
    pair = tuple(value) if isinstance(value, list | tuple) else (value, value)
    pair = pair * 2 if len(pair) == 1 else pair
    valid = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pair)
    if len(pair) != 2 or not valid or min(pair) < smallest:
        raise ConfigError(
            f"{key} is {value!r}; use null, an integer >= {smallest}, [side] or [height, width]"
        )
    return int(pair[0]), int(pair[1])
