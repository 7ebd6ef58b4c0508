"""Dataclass configs read from YAML with `--key value` command-line overrides.

A recipe declares a `@dataclass` whose fields carry `metadata={"help": ...}`. `load_config`
fills it from an optional YAML file, then from overrides; every mistake (unknown key, wrong
type, bad YAML) is a `ConfigError` naming the file, the line and the field.
Nested dataclass fields are addressed with dots: `--lora.r 8` or `lora: {r: 8}` in YAML.
`given_fields(config)` says which fields the file and the command line set (so that a preset
applied later, `--quick`, can leave explicit settings alone: `set_quick_fields`).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration mistake, with where it was made."""


def _where(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line is not None else source


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


class _BareFlag(str):
    """A command-line ``--key`` given without a value: true for a bool field, an error for any
    other (``--max_steps`` with its number forgotten must not become the string 'true')."""


def coerce(value: Any, tp: Any, where: str, field: str) -> Any:
    """Convert `value` (from YAML or a command-line string) to the field type `tp`."""
    tp, optional = _unwrap_optional(tp)
    if isinstance(value, _BareFlag) and tp is not bool:
        raise ConfigError(f"{where}: field '{field}': needs a value (--{field} VALUE)")
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional or tp is Any:
            return None
        raise ConfigError(f"{where}: field '{field}': may not be empty")
    origin = typing.get_origin(tp)
    try:
        if tp is Any:
            return value
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if origin in (list, tuple):
            (item_tp, *_) = typing.get_args(tp) or (Any,)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v != ""]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return [coerce(v, item_tp, where, field) for v in value]
        if origin is typing.Literal:
            if value not in typing.get_args(tp):
                raise ConfigError(f"{where}: field '{field}': {value!r} is not one of {list(typing.get_args(tp))}")
            return value
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"{where}: field '{field}': expected {name}, got {type(value).__name__} {value!r}") from None
    return value


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _yaml_with_lines(path: Path) -> tuple[dict, dict[str, int]]:
    """Parse a YAML mapping and remember the line of every (dotted) key."""
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"{_where(str(path), line)}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the config must be a mapping of field: value")
    lines: dict[str, int] = {}

    def walk(n, prefix):
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = f"{prefix}{k.value}"
                lines[key] = k.start_mark.line + 1
                walk(v, key + ".")

    walk(node, "")
    return data, lines


def _apply(obj, data: dict, source: str, lines: dict[str, int], prefix: str = "") -> dict[str, Any]:
    """Set ``data`` on ``obj`` (in place); returns ``{dotted field: value set}``."""
    types_ = _field_types(type(obj))
    given: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        where = _where(source, lines.get(dotted))
        if key not in types_:
            raise ConfigError(f"{where}: unknown field '{dotted}' for {type(obj).__name__}{_suggest(key, types_)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: field '{dotted}': expected a mapping")
            given.update(_apply(current, value, source, lines, dotted + "."))
        else:
            setattr(obj, key, coerce(value, types_[key], where, dotted))
            given[dotted] = getattr(obj, key)
    return given


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`['--lr', '1e-4', '--lora.r=8']` -> `{'lr': '1e-4', 'lora.r': '8'}`."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: expected --key value, got {arg!r}")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 1
        else:
            value = _BareFlag("true")  # a bare flag switches a bool on
        out[key.replace("-", "_")] = value
        i += 1
    return out


def _nest(flat: dict[str, str]) -> dict:
    nested: dict = {}
    for key, value in flat.items():
        parts = key.split(".")
        d = nested
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value
    return nested


def _mentions(message: str, key: str) -> bool:
    """Whether a validation message is about field ``key`` (dotted, or its last part as a word)."""
    names = {key, key.rsplit(".", 1)[-1]}
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?![\w])", message) for n in names)


def _blame(message: str, path: Path | None, lines: dict[str, int], overridden: list[str]) -> str:
    """Where the values a validation error is about came from: the command line when the
    message names a field set there (overrides are applied last, so they are the values
    checked), else the line of the config file that set it, else the file (or 'config')."""
    # a message that names its field ("field 'reward': ...") is about that field alone: words
    # in the rest of it (a path ending in /model) must not blame another field's line
    named = re.match(r"\s*field '([\w.]+)'", message)
    if named:
        key = named.group(1)
        if any(k == key or k.rsplit(".", 1)[-1] == key for k in overridden):
            return "command line"
        for k, line in lines.items():
            if k == key or k.rsplit(".", 1)[-1] == key:
                return _where(str(path), line)
        return str(path) if path is not None else "config"
    if any(_mentions(message, k) for k in overridden):
        return "command line"
    for key, line in lines.items():
        if _mentions(message, key):
            return _where(str(path), line)
    return str(path) if path is not None else "config"


FILE, COMMAND_LINE = "file", "command line"
_GIVEN_ATTR = "_rlhfkit_given_fields"


def given_fields(config) -> dict[str, dict[str, Any]]:
    """The fields ``load_config`` set from the file and from the command line (overrides):
    ``{"file": {dotted: value}, "command line": {dotted: value}}``; empty for a config built
    otherwise. (An attribute beside the dataclass fields: it is not a setting, so it is neither
    saved nor compared, and a copy made with ``dataclasses.replace`` has none.)"""
    given = getattr(config, _GIVEN_ATTR, None) or {}
    return {FILE: dict(given.get(FILE, {})), COMMAND_LINE: dict(given.get(COMMAND_LINE, {}))}


def load_config(cls, path: str | Path | None = None, overrides: list[str] | dict | None = None):
    """Build `cls()` then apply the YAML file at `path`, then the overrides (a dict of dotted
    fields counts as the command line); remembers which fields each set (`given_fields`)."""
    config = cls()
    lines: dict[str, int] = {}
    from_file: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        data, lines = _yaml_with_lines(path)
        from_file = _apply(config, data, str(path), lines)
    overridden: list[str] = []
    from_command_line: dict[str, Any] = {}
    if overrides:
        flat = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides)
        overridden = list(flat)
        from_command_line = _apply(config, _nest(flat), "command line", {})
    object.__setattr__(config, _GIVEN_ATTR, {FILE: from_file, COMMAND_LINE: from_command_line})
    validate = getattr(config, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as err:
            raise ConfigError(f"{_blame(str(err), path, lines, overridden)}: {err}") from None
    return config


def _get(config, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def set_quick_fields(config, quick: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Set ``--quick``'s values (``{dotted field: value}``) on ``config`` (in place), where
    explicit settings win: a field given on the command line keeps its value; a field given in the
    config file keeps its value when that file itself says ``quick: true`` (a file written for
    quick runs), and takes quick's otherwise (the file is a full-size preset that --quick shrinks,
    e.g. ``configs/pipeline_sentiment.yaml``'s 30 GRPO steps). Quick's batch sizes fit one given
    explicitly: its ``micro_batch_size`` never exceeds a given ``batch_size`` (``--reward.batch_size
    8`` under quick's micro-batches of 16 would stop the run at that stage, minutes in), nor its
    ``batch_size`` falls below a given ``micro_batch_size``. Returns ``(fields set, {field left
    as given: where it was given})``, the fitted fields among the second with ``"quick's N fitted
    to the given FIELD"``; both leave out fields that already held quick's value."""
    given = given_fields(config)
    keep = {k: COMMAND_LINE for k in given[COMMAND_LINE]}
    if given[FILE].get("quick") is True:
        keep = {**{k: FILE for k in given[FILE]}, **keep}
    changed, kept = [], {}
    for dotted, value in quick.items():
        *path, last = dotted.split(".")
        obj = _get(config, ".".join(path)) if path else config
        if getattr(obj, last) == value:
            continue
        if dotted in keep:
            kept[dotted] = keep[dotted]
        else:
            setattr(obj, last, value)
            changed.append(dotted)
    for dotted in quick:  # quick's batch sizes, whether it changed them or they held its value already
        if dotted in keep:
            continue
        prefix, _, last = dotted.rpartition(".")
        other = {"micro_batch_size": "batch_size", "batch_size": "micro_batch_size"}.get(last)
        other_dotted = f"{prefix}.{other}" if prefix else other
        if other is None or other_dotted not in keep:
            continue
        obj = _get(config, prefix) if prefix else config
        fitted = (
            min(obj.micro_batch_size, obj.batch_size)
            if last == "micro_batch_size"
            else max(obj.batch_size, obj.micro_batch_size)
        )
        if fitted != getattr(obj, last):
            kept[dotted] = f"quick's {getattr(obj, last)!r} fitted to the given {other_dotted}"
            setattr(obj, last, fitted)
            if dotted in changed:
                changed.remove(dotted)
    return changed, kept


def describe_quick(config, changed: list[str], kept: dict[str, str]) -> str:
    """What ``set_quick_fields`` did, for the log: the fields set, then those left as given with
    their values and where they were given."""
    text = f"--quick set {len(changed)} fields: {', '.join(changed) or 'none'}"
    as_given = {k: where for k, where in kept.items() if not where.startswith("quick's")}
    fitted = {k: where for k, where in kept.items() if where.startswith("quick's")}
    if as_given:
        text += f"; left {len(as_given)} as given: " + ", ".join(
            f"{k} = {_get(config, k)!r} ({where})" for k, where in as_given.items()
        )
    if fitted:
        text += f"; fitted {len(fitted)} to what was given: " + ", ".join(
            f"{k} = {_get(config, k)!r} ({where})" for k, where in fitted.items()
        )
    return text


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def save_config(config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")


def describe_fields(cls, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, nested ones dotted: used by `--help`. ``cls`` is a
    config class or an instance; a nested section shows the defaults its parent gives it (the
    loop's ``reward`` section is not the reward recipe's own defaults)."""
    rows = []
    instance = cls() if isinstance(cls, type) else cls
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe_fields(value, prefix + f.name + ".")
        else:
            rows.append((prefix + f.name, repr(value), f.metadata.get("help", "")))
    return rows
