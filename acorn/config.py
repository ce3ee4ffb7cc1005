"""Run configuration: dataclasses with defaults, YAML files, `--section.key value` overrides.

A run is described by one nested dataclass (e.g. acorn.train.pretrain.PretrainConfig).
Its values come from three layers, later ones winning: the dataclass defaults,
a YAML file (`--config FILE`), and command-line overrides such as
`--optim.lr 1e-3 --model.n_layer 8` (litgpt's style). Overrides arrive as
strings and are converted by the field's declared type; a key that does not
exist is an error listing the keys that do, so a typo never silently does
nothing. The resolved configuration is written into the run directory.

A `model` section may name a preset (`preset: micro`) and override any of its
fields; derived values (head_dim, d_ff, ...) are then computed once, by
ModelConfig itself.

Values are checked where they enter, so a bad one is refused by name before
any work, never deep inside torch: a float must be finite, and a config class
may declare the range of its numbers in LIMITS, e.g. {"lr": "> 0", "beta1":
"[0, 1)"}; a dotted key ("train.max_steps": ">= 1") narrows a section's field
for that config only. `describe` turns the same classes, their defaults, the
comment beside each field and LIMITS into the settings list of `--help`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import re
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from acorn.errors import AcornError


def parse_overrides(args: list[str]) -> dict:
    """['--optim.lr', '1e-3', '--model.n_layer=8'] -> {'optim': {'lr': '1e-3'}, 'model': {'n_layer': '8'}}"""
    out: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise AcornError(f"unexpected argument {arg!r}; overrides look like --section.key VALUE")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise AcornError(f"--{key} needs a value, e.g. --{key} VALUE")
            value = args[i + 1]
            i += 1
        node = out
        *parents, leaf = key.replace("-", "_").split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise AcornError(f"--{key}: {p} is set both as a value and as a section")
        node[leaf] = value
        i += 1
    return out


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise AcornError(f"{path}: no such config file; check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise AcornError(f"{path}: not a text file (bytes that are not UTF-8); --config takes a YAML file") from None
    except yaml.YAMLError as e:
        raise AcornError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise AcornError(f"{path}: a config file is a mapping of sections, not a {type(data).__name__}")
    return data


def build(cls, data: dict | None, where: str = "", narrowed: dict | None = None) -> Any:
    """Construct dataclass `cls` from a (possibly nested) mapping, converting strings by field type.
    Every value given is checked (`check_value`); `narrowed`: the enclosing config's
    tighter LIMITS for this section's fields."""
    data = dict(data or {})
    limits = {**getattr(cls, "LIMITS", {}), **(narrowed or {})}
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    preset = data.pop("preset", None) if hasattr(cls, "from_preset") else None
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise AcornError(f"unknown config key {where}{unknown[0]}; {where.rstrip('.') or 'top level'} has: {', '.join(names)}")
    kwargs = {}
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        if name not in data:
            continue
        value = data[name]
        if isinstance(value, dict):
            # A section's overrides change only the keys they name: the rest
            # keep this config's own defaults (SFT's differ from pretraining's);
            # a preset named there starts from that preset instead.
            value = value if "preset" in value else merge(_section_defaults(defaults[name]), value)
        inner = {k.split(".", 1)[1]: v for k, v in limits.items() if k.startswith(name + ".")}
        kwargs[name] = _convert(value, hints[name], f"{where}{name}", inner)
        check_value(cls, name, kwargs[name], f"--{where}{name}", limits.get(name))
    if preset is not None:
        return cls.from_preset(str(preset), **kwargs)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise AcornError(f"{where.rstrip('.') or 'config'}: {e}") from None


def _section_defaults(f: dataclasses.Field) -> dict:
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = f.default
    if not dataclasses.is_dataclass(default):
        return {}
    if hasattr(default, "from_preset"):
        # Derived fields must be derived again, so start from the preset, not its results.
        if getattr(default, "preset", None):
            return {"preset": default.preset}
        # No preset (a config's own small model): its declared values, less the fields that
        # __post_init__ derived (declared None, and derived again to the same value without them).
        values = dataclasses.asdict(default)
        unset = {f.name for f in dataclasses.fields(default) if f.default is None and values[f.name] is not None}
        again = type(default)(**{k: v for k, v in values.items() if k not in unset})
        return {k: v for k, v in values.items() if k not in unset or getattr(again, k) != v}
    return dataclasses.asdict(default)


def _convert(value: Any, tp: Any, where: str, narrowed: dict | None = None) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str):  # a bare preset name for a section that has presets
            value = {"preset": value}
        if not isinstance(value, dict):
            raise AcornError(f"{where} is a section; give it keys, e.g. --{where}.KEY VALUE")
        return build(tp, value, where + ".", narrowed)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where, narrowed)
            except AcornError as e:
                errors.append(str(e))
        raise AcornError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if origin is Literal:
        if value not in args:
            raise AcornError(f"{where} must be one of {', '.join(map(str, args))}, not {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise AcornError(f"{where} is true or false, not {value!r}")
    if tp in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                value = float(value.replace("_", ""))  # accepts 1e-3, 10_000, 2e6
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError  # never truncate 1.5 to 1 silently
            return tp(value)
        except (TypeError, ValueError):
            raise AcornError(f"{where} is a number ({tp.__name__}), not {value!r}") from None
    if tp is str:
        return str(value)
    if origin in (dict,) or tp is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise AcornError(f"{where} is a mapping; give JSON, e.g. '{{\"key\": 1}}'") from None
        if not isinstance(value, dict):
            raise AcornError(f"{where} is a mapping, not {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        return type(value)(_convert(v, args[0], where) for v in value) if args else value
    return value


# ------------------------------------------------------------- validation
_BOUND = re.compile(r"^(>=|>|<=|<)\s*(\S+)$")
_INTERVAL = re.compile(r"^([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])$")


def check_value(cls, name: str, value: Any, key: str, limit: str | None = None) -> None:
    """Refuse `value` for field `name` of `cls` (shown as `key`): a float that is not
    finite, or a number outside `limit` (default: the range cls.LIMITS gives the field)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise AcornError(f"{key} must be a finite number (got {value})")
    limit = limit or getattr(cls, "LIMITS", {}).get(name)
    if limit is not None and value is not None:
        _check_limit(value, limit, key, optional=_allows_none(cls, name))


def check(obj) -> None:
    """Check every field of a config instance against its class's LIMITS (for
    configs made in Python: `build` checks what comes from files and flags)."""
    for f in dataclasses.fields(obj):
        check_value(type(obj), f.name, getattr(obj, f.name), f.name)


def _check_limit(value: Any, limit: str, key: str, optional: bool = False) -> None:
    if not within(value, limit):
        shown = f"in {limit}" if limit[0] in "[(" else limit
        raise AcornError(f"{key} must be {shown}{', or none' if optional else ''} (got {value!r})")


def within(value: float, limit: str) -> bool:
    """Is value inside a limit written as '> 0', '>= 1', '< 1' or an interval '[0, 1)'?"""
    limit = limit.strip()
    m = _BOUND.match(limit)
    if m:
        op, bound = m.group(1), float(m.group(2))
        return {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]
    m = _INTERVAL.match(limit)
    if not m:
        raise ValueError(f"bad limit {limit!r}")  # a mistake in Acorn's own LIMITS
    lo, hi = float(m.group(2)), float(m.group(3))
    above = value >= lo if m.group(1) == "[" else value > lo
    below = value <= hi if m.group(4) == "]" else value < hi
    return above and below


def _allows_none(cls, name: str) -> bool:
    tp = get_type_hints(cls).get(name)
    return get_origin(tp) in (typing.Union, types.UnionType) and type(None) in get_args(tp)


def load(cls, config_file: str | Path | None = None, overrides: list[str] | dict | None = None):
    """Defaults <- YAML file <- overrides, as one dataclass instance."""
    data = read_yaml(config_file) if config_file else {}
    if overrides:
        data = merge(data, overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    return build(cls, data)


def to_yaml(cfg) -> str:
    import yaml

    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


# ------------------------------------------------------------------- help
def describe(cls, instance=None) -> str:
    """The settings of a config class, one `--section.key` per line with its type, default,
    meaning (the comment beside the field) and range: what `acorn pretrain --help` lists."""
    instance = cls() if instance is None else instance
    lines = ["settings (--section.key VALUE, or the same keys in a --config YAML file; defaults shown):"]
    lines += _describe(cls, instance, "")
    return "\n".join(lines)


def _describe(cls, instance, where: str, narrowed: dict | None = None) -> list[str]:
    lines = []
    hints = get_type_hints(cls)
    comments = field_comments(cls)
    limits = {**getattr(cls, "LIMITS", {}), **(narrowed or {})}
    if hasattr(cls, "from_preset"):
        presets = ", ".join(getattr(inspect.getmodule(cls), "PRESETS", {}))
        lines += _entry(f"--{where}preset NAME", getattr(instance, "preset", None),
                        f"start from this preset, then apply the section's other keys; one of {presets}")
    for f in dataclasses.fields(cls):
        if not f.init or f.name == "preset":
            continue
        tp, value, key = hints[f.name], getattr(instance, f.name), f"{where}{f.name}"
        meaning = comments.get(f.name, "")
        section = _section_type(tp)
        if section is not None:
            if value is None:  # a section the stage fills itself (SFT's model: the checkpoint's)
                lines += _entry(f"--{key}.*", "(not settable)", meaning)
            else:
                inner = {k.split(".", 1)[1]: v for k, v in limits.items() if k.startswith(f.name + ".")}
                lines += _describe(section, value, key + ".", inner)
            continue
        if f.name in limits:
            limit = limits[f.name]
            meaning += ("; " if meaning else "") + f"must be {'in ' if limit[0] in '[(' else ''}{limit}"
        declared = f.default if f.default is not dataclasses.MISSING else None
        derived = declared is None and value is not None and f.default_factory is dataclasses.MISSING
        lines += _entry(f"--{key} {_type_name(tp)}", _show(value) + (" (derived)" if derived else ""), meaning)
    return lines


def _entry(flag: str, default, meaning: str) -> list[str]:
    head = f"  {flag:<34} {default if isinstance(default, str) else _show(default)}"
    body = textwrap.wrap(meaning, 96, initial_indent=" " * 6, subsequent_indent=" " * 6) if meaning else []
    return [head, *body]


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "(empty)"
    if value == "":
        return '""'
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _section_type(tp):
    if dataclasses.is_dataclass(tp):
        return tp
    if get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if inner else None
    return None


def _type_name(tp) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [_type_name(a) for a in args if a is not type(None)]
        return "|".join(inner) + ("|none" if type(None) in args else "")
    if origin is Literal:
        return "{" + ",".join(map(str, args)) + "}"
    if origin in (list, tuple):
        return "A,B,..."
    if tp is dict or origin is dict:
        return "JSON"
    return {int: "INT", float: "FLOAT", bool: "BOOL", str: "STR"}.get(tp, getattr(tp, "__name__", str(tp)))


def field_comments(cls) -> dict[str, str]:
    """{field: the comment on its line} from the class's source: the meaning a
    reader sees beside the field is the one --help prints."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments = {}
    for tok in tokenize.generate_tokens(iter(source.splitlines(keepends=True)).__next__):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            for line in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                if line in comments:
                    out[node.target.id] = comments[line]
                    break
    return out
