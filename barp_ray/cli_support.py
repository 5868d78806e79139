"""The `barp` CLI's machinery: the subcommand registry and flags generated from the config objects.

A subcommand declares which config fields it exposes; each flag's type, choices, help text and shown
default come from the pydantic field (its `description` and default), so a flag is written in one place:

    @command("train", "train the policy", TrainConfig, flags={"data": "data", "epochs": "epochs", ...})
    def _train(cfg: TrainConfig, args) -> int: ...

Flags default to None in argparse, so `--config x.yaml` composes: the YAML, then the flags that were given.
Packages (serving, tuning, offpolicy, ...) register their subcommands with `command` from here.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from barp_ray.config import JobConfig

FLAG_PREFIX = "cfg:"  # argparse dest of a generated flag: "cfg:<dotted field path>"


@dataclass
class Command:
    """One `barp` subcommand."""

    name: str
    help: str
    run: Callable[..., int]
    config: type[JobConfig] | None = None
    flags: dict[str, str] = field(default_factory=dict)  # flag name -> dotted field path
    add_args: Callable[[argparse.ArgumentParser], None] | None = None  # extra, non-config flags
    loader: Callable[[type[JobConfig], argparse.Namespace], JobConfig] | None = None  # default: load_config


COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    help_text: str,
    config: type[JobConfig] | None = None,
    flags: Mapping[str, str] | Iterable[str] = (),
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
    loader: Callable[[type[JobConfig], argparse.Namespace], JobConfig] | None = None,
):
    """Register `run` as subcommand `name`.

    With `config`, `run(cfg, args)` gets the loaded config (`--config` YAML + `flags`); `flags` maps a flag
    name (``"out"`` -> ``--out``) to a field path (``"out_dir"``, ``"train.epochs"``), or lists field names
    used as flag names. Without `config`, `run(args)`. `add_args` adds flags that are not config fields;
    `loader(cls, args)` replaces `load_config` (e.g. to check a field first with a friendlier message).
    """
    mapping = dict(flags) if isinstance(flags, Mapping) else {f: f for f in flags}

    def register(run: Callable[..., int]) -> Callable[..., int]:
        COMMANDS[name] = Command(name, help_text, run, config, mapping, add_args, loader)
        return run

    return register


# ---- fields -> flags -------------------------------------------------------------------------------------
def field_info(cls: type[BaseModel], path: str) -> FieldInfo:
    """The FieldInfo of a dotted field path (``train.epochs``) of a pydantic model class."""
    info = None
    model: Any = cls
    for part in path.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            raise KeyError(f"{cls.__name__} has no field {path!r}")
        info = model.model_fields[part]
        model = _strip_optional(info.annotation)
    assert info is not None
    return info


def _strip_optional(annotation: Any) -> Any:
    """X from X | None (and from Annotated[X, ...])."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _strip_optional(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _strip_optional(args[0])
    return annotation


def field_default(info: FieldInfo) -> Any:
    """The field's default value (calling its default factory), or PydanticUndefined if required."""
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def _show(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple) and not value:
        return "none"
    return str(value)


def add_field_flag(parser: argparse.ArgumentParser, flag: str, cls: type[BaseModel], path: str) -> None:
    """One `--flag` for field `path` of `cls`: type / choices from the annotation, help from the description
    and the default."""
    info = field_info(cls, path)
    kind = _strip_optional(info.annotation)
    default = field_default(info)
    help_text = (info.description or "").strip() or path.replace("_", " ")
    if default is PydanticUndefined:
        help_text += " (required)"
    else:
        help_text += f" (default: {_show(default)})"
    help_text = help_text.replace("%", "%%")
    kwargs: dict[str, Any] = {"dest": FLAG_PREFIX + path, "default": None, "help": help_text}
    origin = typing.get_origin(kind)
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is Literal:
        choices = list(typing.get_args(kind))
        kwargs.update(choices=choices, type=type(choices[0]))
    elif origin in (list, tuple):
        item = _strip_optional((typing.get_args(kind) or (str,))[0])
        kwargs.update(nargs="+", action="extend", type=_scalar_type(item), metavar=_metavar(item, flag))
    else:
        kwargs["type"] = _scalar_type(kind)
        kwargs["metavar"] = _metavar(kind, flag)
    parser.add_argument(f"--{flag.replace('_', '-')}", **kwargs)


def _scalar_type(kind: Any) -> Callable[[str], Any]:
    if kind in (int, float):
        return kind
    return str  # str, Path, URIs: pydantic converts (and resolves paths) at load


def _metavar(kind: Any, flag: str) -> str:
    if kind in (int, float):
        return kind.__name__.upper()
    return flag.upper().replace("-", "_")


def simple_fields(
    cls: type[BaseModel], exclude: Iterable[str] = (), rename: Mapping[str, str] | None = None, prefix: str = ""
) -> dict[str, str]:
    """flag -> field path for every field of `cls` a flag can set (scalars, paths, literals, lists of
    scalars), minus `exclude`; `rename` maps a field name to another flag name (``exclude_tasks`` ->
    ``exclude_task``)."""
    rename = dict(rename or {})
    out: dict[str, str] = {}
    for name, info in cls.model_fields.items():
        if name in exclude:
            continue
        kind = _strip_optional(info.annotation)
        origin = typing.get_origin(kind)
        if origin in (list, tuple):
            kind = _strip_optional((typing.get_args(kind) or (str,))[0])
            origin = typing.get_origin(kind)
        if not (kind in (bool, int, float, str, Path) or origin is Literal):
            continue
        out[rename.get(name, name)] = prefix + name
    return out


def add_config_flags(parser: argparse.ArgumentParser, cls: type[BaseModel], flags: Mapping[str, str]) -> None:
    """Every flag of `flags` (flag name -> field path) for config class `cls`."""
    for flag, path in flags.items():
        add_field_flag(parser, flag, cls, path)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The generated flags that were given, as a nested mapping of field values (``train.epochs`` nests)."""
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith(FLAG_PREFIX) or value is None:
            continue
        node = out
        *parents, leaf = dest[len(FLAG_PREFIX) :].split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def load_config(cls: type[JobConfig], args: argparse.Namespace, echo: bool = True, **overrides) -> JobConfig:
    """The job's config: `--config` YAML, then the generated flags that were given, then `overrides`
    (None values skipped), validated (paths made absolute) and printed."""
    from barp_ray.config import deep_merge

    given = deep_merge(flag_overrides(args), overrides)
    path = getattr(args, "config", None)
    cfg = cls.from_yaml(path, **given) if path else cls.model_validate(deep_merge({}, given))
    if echo:
        print(cfg.describe(), flush=True)
    return cfg


def print_outputs(paths: Mapping[str, Any]) -> None:
    """The 'Outputs:' block every command ends with."""
    print("\nOutputs:")
    for name, path in paths.items():
        print(f"  {name:14s} {path}")


def address_flag(parser: argparse.ArgumentParser) -> None:
    """`--address`: the Ray cluster to join (see `barp_ray.ray_connect.connect`)."""
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a new local one)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows a non-generated flag's default when it has one and its help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            text += " (default: %(default)s)"
        return text


__all__ = [
    "COMMANDS",
    "Command",
    "HelpFormatter",
    "add_config_flags",
    "add_field_flag",
    "address_flag",
    "command",
    "field_info",
    "flag_overrides",
    "load_config",
    "print_outputs",
    "simple_fields",
]
