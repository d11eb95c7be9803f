"""Typed configuration: one dataclass per process, loaded from a TOML/JSON file, overridden by flags.

Every server declares a ``@dataclass`` config whose fields have defaults. ``load_config(Cls, path,
overrides)`` builds it from an optional file and a list of ``key=value`` overrides (dotted keys reach
nested dataclasses, e.g. ``budget.rank=0.4``). Unknown keys and values of the wrong type are errors
that name the key, so a typo in a config file never silently falls back to a default.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a table, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        item_tp = args[0] if args else Any
        out = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a table, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        try:
            number = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' must be {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"config key '{key}' must be int, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; known keys: {', '.join(sorted(names))}")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def _to_nested(overrides: list[str]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        try:  # numbers, booleans and lists in JSON form; anything else stays a string
            node[parts[-1]] = json.loads(raw)
        except json.JSONDecodeError:
            node[parts[-1]] = raw
    return nested


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from defaults, then the file at ``path`` (TOML or JSON), then ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path} is malformed: {exc}") from None
    data = _merge(data, _to_nested(overrides or []))
    config = _build(cls, data)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def as_dict(config: Any) -> dict[str, Any]:
    """The config as plain data, for logs and reports."""
    return dataclasses.asdict(config)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add the standard ``--config FILE`` and ``--set key=value`` flags to a CLI."""
    parser.add_argument("--config", help="TOML or JSON config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (dotted for nested keys); repeatable")
