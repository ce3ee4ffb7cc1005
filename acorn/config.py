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
"""

from __future__ import annotations

import dataclasses
import json
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
    except yaml.YAMLError as e:
        raise AcornError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise AcornError(f"{path}: a config file is a mapping of sections, not a {type(data).__name__}")
    return data


def build(cls, data: dict | None, where: str = "") -> Any:
    """Construct dataclass `cls` from a (possibly nested) mapping, converting strings by field type."""
    data = dict(data or {})
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
            # keep this config's own defaults (SFT's differ from pretraining's).
            value = merge(_section_defaults(defaults[name]), value)
        kwargs[name] = _convert(value, hints[name], f"{where}{name}")
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
        return {"preset": default.preset} if getattr(default, "preset", None) else {}
    return dataclasses.asdict(default)


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str):  # a bare preset name for a section that has presets
            value = {"preset": value}
        if not isinstance(value, dict):
            raise AcornError(f"{where} is a section; give it keys, e.g. --{where}.KEY VALUE")
        return build(tp, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
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


def load(cls, config_file: str | Path | None = None, overrides: list[str] | dict | None = None):
    """Defaults <- YAML file <- overrides, as one dataclass instance."""
    data = read_yaml(config_file) if config_file else {}
    if overrides:
        data = merge(data, overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    return build(cls, data)


def to_yaml(cfg) -> str:
    import yaml

    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
