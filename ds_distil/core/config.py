"""Typed configuration: dataclasses loaded from YAML files plus `section.key=value` overrides.

Unknown keys and values of the wrong type are refused with a message naming the dotted key.
`to_dict` / `save` give back the resolved configuration, which every command writes next to
its outputs.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from ds_distil.core.errors import UserError
from ds_distil.core.io import atomic_write

T = TypeVar("T")


class ConfigError(UserError):
    pass


class _NotFinite(ConfigError):
    """NaN or an infinity where a number is meant: refused whatever else a union type would accept."""


class _Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, whose floats need a dot: `5e-5` and `1e-4` would stay strings (and be
    refused for `train.lr`). YAML 1.2, JSON and Python read them as numbers; so do we.

    A key given twice in one mapping (two `train:` sections) is refused naming both lines: PyYAML would keep the last
    silently (YAML 1.2 says keys are unique). Keys merged in with `<<: *anchor` may be overridden, as YAML means."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader refuses it itself
                    continue
                if earlier is not key_node:
                    a, b = earlier.start_mark.line + 1, key_node.start_mark.line + 1
                    where = f"twice, at lines {a} and {b}" if a != b else f"twice on line {a}"
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key '{key}' is given {where} (the second would silently replace the first): keep one",
                        key_node.start_mark)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if get_origin(tp) is dict:
        return f"mapping of {_type_name(get_args(tp)[1])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, finite: bool = True) -> Any:
    """Check `value` against the annotation `tp`; return it (converted where lossless). `finite`: a float must be a
    finite number (NaN and infinities are refused unless the field allows them: setting(..., nonfinite=True))."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        section_error = None  # a mapping given where a section is one option: that section's own complaint says more
        for arg in get_args(tp):
            try:
                return _convert(value, arg, key, finite)
            except _NotFinite:
                raise
            except ConfigError as e:
                if isinstance(value, dict) and dataclasses.is_dataclass(arg):
                    section_error = section_error or e
        raise section_error or ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"config key '{key}': expected one of {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin is dict:  # a mapping of names to values (or to sections, for dataclass values)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return {str(k): _convert(v, get_args(tp)[1], f"{key}.{k}", finite) for k, v in value.items()}
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single value where a list is expected
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
        return [_convert(v, get_args(tp)[0], f"{key}[{i}]", finite) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a section (mapping), got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if finite and not math.isfinite(value):
                raise _NotFinite(f"config key '{key}': expected a finite number, got {value} (YAML's .nan and .inf are refused "
                                 "where a number is meant)")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a path or name that YAML read as a number
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"unsupported config field type {tp!r} for {key}")
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _unknown_key(cls: type, key: str, prefix: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known keys: {', '.join(names)})"
    return ConfigError(f"unknown config key '{prefix}{key}'{hint}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(cls, key, prefix)
        f = fields[key]
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
            # a section given in part keeps this field's own defaults for the rest (they may differ from the class's)
            value = {**to_dict(f.default_factory()), **value}
        kwargs[key] = _convert(value, hints[key], prefix + key, finite=not f.metadata.get("nonfinite", False))
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing config key '{prefix}{missing[0]}' (no default; set it in the YAML or as {prefix}{missing[0]}=...)")
    try:
        return cls(**kwargs)
    except ValueError as e:  # __post_init__ validation
        raise ConfigError(f"config section '{prefix.rstrip('.') or cls.__name__}': {e}") from None


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_value(text: str, key: str = "") -> Any:
    """A `key=value` override's value, read as YAML (so `3`, `1e-4`, `true`, `null`, `[a, b]` get their types).

    An unquoted value that YAML would read as ANOTHER string (`keep #2` -> `keep`: a comment; a newline folded into a
    space; `&a x` -> `x`: an anchor) is refused naming the key, rather than silently becoming a path the user did not
    type: quote it (`key='keep #2'`) to mean it literally."""
    if text == "":
        return ""
    try:
        value = yaml_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and value != text.strip() and not text.lstrip().startswith(("'", '"')):
        raise ConfigError(f"the value of {key or 'an override'} reads as YAML {value!r}, not {text!r} (a '#' comment, an anchor or a "
                          f"line break); quote it to mean it literally, e.g. {key or 'key'}='{text}'")
    return value


def literal_value(text: str, tp: Any, key: str) -> Any:
    """A command-line FLAG's value: the text the user typed, converted by the field's declared type only (never read as
    YAML: `--out "keep #2"` is the directory `keep #2`)."""
    if get_origin(tp) in (Union, types.UnionType):
        for arg in get_args(tp):
            if arg is not type(None):
                try:
                    return literal_value(text, arg, key)
                except ConfigError:
                    continue
        raise ConfigError(f"--{key.replace('_', '-')}: expected {_type_name(tp)}, got {text!r}")
    try:
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"--{key.replace('_', '-')}: expected {_type_name(tp)}, got {text!r}") from None
    return text  # str, Literal (checked by from_dict), Any


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `section.key=value` override to a nested dict, in place."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not of the form section.key=value")
    dotted, _, raw = override.partition("=")
    parts = dotted.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{override}': '{part}' is a value, not a section")
    node[parts[-1]] = parse_value(raw, dotted.strip())


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass an existing YAML file (see configs/)")
    try:
        data = yaml_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {p}{line} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections, not {type(data).__name__}")
    if _recursive(data, ()):
        raise ConfigError(f"config file {p}: a YAML alias (*name) refers to the node that holds it, a structure without end; "
                          "replace the alias by the values it should repeat")
    return data


def _recursive(node: Any, holders: tuple[int, ...]) -> bool:
    """Whether `node` contains itself (a YAML anchor aliased inside its own node): every reader of it would recurse."""
    if not isinstance(node, (dict, list)):
        return False
    if id(node) in holders:
        return True
    children = node.values() if isinstance(node, dict) else node
    return any(_recursive(child, (*holders, id(node))) for child in children)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, section by section (a key of `extra` wins; sections are merged, not replaced)."""
    return _merge(base, extra)


def load_dict(paths: list[str | Path] = (), overrides: list[str] = ()) -> dict[str, Any]:
    """Merge YAML files (a file may name `base: other.yaml`, relative to itself) and overrides."""
    data: dict[str, Any] = {}
    for path in paths:
        data = _merge(data, _with_bases(Path(path), seen=()))
    for override in overrides:
        apply_override(data, override)
    return data


def _with_bases(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"config file {path} includes itself through 'base'")
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    bases = base if isinstance(base, list) else [base]
    merged: dict[str, Any] = {}
    for b in bases:
        merged = _merge(merged, _with_bases(path.parent / str(b), seen + (path.resolve(),)))
    return _merge(merged, data)


def load(cls: type[T], paths: list[str | Path] = (), overrides: list[str] = ()) -> T:
    return from_dict(cls, load_dict(paths, overrides))


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    return str(value)


def flatten(data: dict, prefix: str = "") -> dict:
    """{"masking": {"seed": 0}} -> {"masking.seed": 0}: nested sections as dotted keys, as overrides name them."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def flat_fields(cls: type, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every leaf field of a config class by its dotted key (sections walked into)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, dataclasses.Field] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(flat_fields(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = f
    return out


def keys_help(cls: type, instance: Any = None, width: int = 42, prefix: str = "", resume_note: bool = False) -> str:
    """Every settable key of `cls` as `section.key=DEFAULT  help (type)`, for a command's --help: generated
    from the dataclasses, so the keys, their defaults and their meaning are written once. `instance`
    supplies defaults that differ from the classes' (finetuning's `train` section); `resume_note` marks the keys that
    may change on --resume."""
    lines: list[str] = []

    def walk(c: type, obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(c)
        for f in dataclasses.fields(c):
            if obj is not None:
                value = getattr(obj, f.name)
            elif f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = dataclasses.MISSING
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], None if value is dataclasses.MISSING else value, f"{prefix}{f.name}.")
                continue
            key = f"{prefix}{f.name}=" + ("..." if value is dataclasses.MISSING else _yaml_scalar(value))
            note = ", may change on --resume" if resume_note and f.metadata.get("resume") else ""
            text = f.metadata.get("help", "") + f" ({_type_name(hints[f.name])}" + (", required" if value is dataclasses.MISSING else "") + note + ")"
            lines.append(f"  {key:<{width}}{text}" if len(key) < width - 1 else f"  {key}\n  {'':<{width}}{text}")

    walk(cls, instance, prefix)
    return "\n".join(lines)


def save(obj: Any, path: str | Path) -> None:
    """Write a resolved config as YAML, atomically."""
    path = Path(path)
    atomic_write(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


def setting(help: str, *, resume: bool = False, nonfinite: bool = False, **kw: Any) -> Any:
    """A config field with its help text (the CLI's help and `--help`'s key list) and, for `ds-distil distill`,
    whether it may change on `--resume` (resume=True: it changes neither the samples nor the arithmetic; the
    resume fingerprint leaves it out). `nonfinite`: a float field that means NaN or an infinity when given one (no field
    does yet; every other float is refused unless finite). dataclasses.field's default / default_factory pass through."""
    return dataclasses.field(metadata={"help": help, "resume": resume, "nonfinite": nonfinite}, **kw)
