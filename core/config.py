"""Typed configs: frozen dataclasses, named presets, `--key=value` overrides, JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, get_args, get_origin

from .atomic import write_atomically
from .errors import UserValueError


class ConfigError(UserValueError):
    """A bad preset, key or value; the message is one line a user can act on."""


_BOUND = r"\s*(-?(?:inf|[0-9.]+(?:e-?[0-9]+)?))\s*"
_INTERVAL = re.compile(rf"^([\[(]){_BOUND},{_BOUND}([\])])$")
_HALF_LINE = re.compile(rf"^(>=|>|<=|<){_BOUND}$")


def _range_check(text: str):
    """'>= 1', '> 0', '[0, 1]', '[0, 1)' … → a predicate on one number."""
    if m := _HALF_LINE.match(text):
        op, bound = m.group(1), float(m.group(2))
        return {">=": lambda v: v >= bound, ">": lambda v: v > bound,
                "<=": lambda v: v <= bound, "<": lambda v: v < bound}[op]
    if m := _INTERVAL.match(text):
        lo_open, lo, hi, hi_open = m.group(1) == "(", float(m.group(2)), float(m.group(3)), m.group(4) == ")"
        return lambda v: (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    raise TypeError(f"unparsable range {text!r}")


def checked(**ranges: str):
    """Class decorator, placed under `@dataclass`: each numeric field named is checked against its range
    ('>= 1', '> 0', '[0, 1)'; every element of a tuple) whenever an instance is built (from the command line,
    config.json or code), so `--dry-run` refuses exactly what training would. NaN and ±inf are refused."""
    checks = {name: (_range_check(text), text) for name, text in ranges.items()}

    def wrap(cls: type) -> type:
        missing = set(ranges) - set(cls.__annotations__)
        if missing:
            raise TypeError(f"{cls.__name__} has no field {sorted(missing)[0]}")
        own_post_init = cls.__dict__.get("__post_init__")

        def __post_init__(self):
            for name, (ok, text) in checks.items():
                value = getattr(self, name)
                for v in value if isinstance(value, (tuple, list)) else (value,):
                    if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and ok(v)):
                        shown = text.replace(">=", "≥").replace("<=", "≤")
                        raise ConfigError(f"{name}={value!r} is out of range: must be {shown}")
            if own_post_init is not None:
                own_post_init(self)

        cls.__post_init__ = __post_init__
        cls.config_ranges = dict(ranges)
        return cls

    return wrap


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Turn `value` (a string from the command line, or a JSON value) into type `tp`."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if len(args) < len(get_args(tp)):
                return None
        errors = []
        for arg in args:
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}={value!r} has the wrong type")
    if origin is tuple:
        args = get_args(tp)
        if isinstance(value, str):
            items = [v for v in value.replace(" ", "").split(",") if v != ""]
        else:
            items = list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in items)
        if len(items) != len(args):
            raise ConfigError(f"{key}={value!r} needs {len(args)} comma-separated values")
        return tuple(_coerce(v, a, key) for v, a in zip(items, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={value!r} is not a boolean (true/false)")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is not a number")
        try:
            if tp is int:
                number = float(value)
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} is not {'an integer' if tp is int else 'a number'}") from None
    if tp is str:
        return str(value)
    if _is_dataclass_type(tp):
        if isinstance(value, Mapping):
            return from_dict(tp, value, prefix=f"{key}.")
        raise ConfigError(f"{key} is a section; set its fields as {key}.<field>=value")
    return value


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a (nested) dict, validating keys and types."""
    hints = _field_types(cls)
    unknown = set(data) - set(hints)
    if unknown:
        raise ConfigError(f"unknown key {prefix}{sorted(unknown)[0]}; valid keys: {', '.join(sorted(hints))}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None
    except UserValueError as e:  # a section's own checks (`checked`, __post_init__) name the field
        raise ConfigError(f"{prefix}{e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (tuples become lists), JSON-ready."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _all_keys(cls: type, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Every leaf key of a nested config: dotted name -> path."""
    out: dict[str, tuple[str, ...]] = {}
    for name, tp in _field_types(cls).items():
        if _is_dataclass_type(tp):
            for sub, path in _all_keys(tp, f"{prefix}{name}.").items():
                out[sub] = (name,) + path
        else:
            out[prefix + name] = (name,)
    return out


def resolve_key(cls: type, key: str) -> tuple[str, ...]:
    """Map `section.field` or a bare `field` that is unique across sections to its path."""
    keys = _all_keys(cls)
    if key in keys:
        return keys[key]
    matches = [k for k in keys if k.split(".")[-1] == key]
    if len(matches) == 1:
        return keys[matches[0]]
    if len(matches) > 1:
        raise ConfigError(f"key {key!r} is ambiguous: use one of {', '.join(matches)}")
    raise ConfigError(f"unknown key {key!r}; see --help for the valid keys")


def apply_overrides(cfg: Any, overrides: Mapping[str, Any]) -> Any:
    """Return a copy of `cfg` with dotted or bare keys replaced (values coerced and validated)."""
    data = to_dict(cfg)
    for key, value in overrides.items():
        path = resolve_key(type(cfg), key)
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return from_dict(type(cfg), data)


def parse_cli_overrides(argv: list[str]) -> dict[str, str]:
    """`['--lr=1e-4', '--model.depth', '8']` -> {'lr': '1e-4', 'model.depth': '8'}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --key=value")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = body, argv[i + 1]
            i += 1
        else:
            raise ConfigError(f"{arg} needs a value: --{body}=VALUE")
        out[key.replace("-", "_")] = value
        i += 1
    return out


def describe(cls: type) -> str:
    """A help listing of every key with its type and default."""
    default = cls()
    lines = []
    for key, path in _all_keys(cls).items():
        node = default
        for part in path:
            node = getattr(node, part)
        lines.append(f"  --{key}={node!r}")
    return "\n".join(lines)


def save_json(cfg: Any, path: str | Path) -> None:
    """Write the resolved config (atomically) as indented JSON."""
    data = (json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n").encode()
    write_atomically(path, lambda f: f.write(data), len(data))


def load_json(cls: type, path: str | Path) -> Any:
    """Read a config saved by `save_json`."""
    return from_dict(cls, json.loads(Path(path).read_text()))
