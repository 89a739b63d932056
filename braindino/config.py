"""Typed job configuration: nested dataclasses loaded from YAML and validated on load.

Every job owns one dataclass tree. ``load_config(JobConfig, "configs/x.yaml", ["a.b=3"])`` reads the
file, applies ``--set`` style overrides, and builds the tree, converting values to the annotated
types. An unknown key, a missing required key or a value of the wrong type raises ``ConfigError``
naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
SECRET = {"secret": True}  # field metadata of a credential (declare it repr=False too): ``to_dict`` hides it
REDACTED = "<redacted>"


class ConfigError(ValueError):
    """A configuration file or override that does not match its dataclass."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build ``cls`` from a YAML file (or its defaults when ``path`` is None) plus ``key=value`` overrides."""
    source = str(path) if path is not None else f"<defaults of {cls.__name__}>"
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as err:
            raise ConfigError(f"{source}: config file not found") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"{source}: not valid YAML: {err}") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item, source)
    return build(cls, raw, source)


def apply_override(raw: dict[str, Any], item: str, source: str = "--set") -> None:
    """Set a dotted key in a raw mapping from ``a.b.c=value`` (value parsed as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{source}: override {item!r} must look like key.path=value")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: override {item!r}: {part!r} is not a section")
    node[leaf] = yaml.safe_load(value)


def build(cls: type[T], raw: Any, source: str, prefix: str = "") -> T:
    """Convert a raw mapping into dataclass ``cls``; errors name ``source`` and the dotted key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix or 'top level'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{source}: unknown key {prefix + unknown[0]!r} (known keys: {known})")
    values = {}
    for name, field in fields.items():
        key = f"{prefix}{name}"
        if name in raw:
            values[name] = _convert(hints[name], raw[name], source, key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key {key!r}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {prefix.rstrip('.') or cls.__name__}: {err}") from err


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-data form of a config tree, for MLflow params and printed configs.

    A field declared with ``metadata=SECRET`` (a credential) reads ``REDACTED`` whenever it is set, so
    no config that leaves the process carries it.
    """
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return to_dict(value)
        if isinstance(value, (list, tuple)):
            return type(value)(plain(item) for item in value)
        return value

    return {f.name: REDACTED if f.metadata.get("secret") and getattr(config, f.name) is not None
            else plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the shape MLflow params want."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _convert(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, source, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, source, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[-1] if errors else f"{source}: {key}: cannot be {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{source}: {key} must have {len(args)} items, got {value!r}")
            return tuple(_convert(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        converted = [_convert(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        value_hint = args[1] if args else Any
        return {k: _convert(value_hint, v, source, f"{key}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    if isinstance(hint, type) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {key} must be {getattr(hint, '__name__', hint)}, got {value!r}")
    return value
