"""Config plumbing shared by every job: pydantic models loadable from YAML, printed at start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict

from barp_ray.storage import absolute

DATA_DIR_ENV = "BARP_DATA_DIR"
_DEV_DATA_DIR = Path("..") / "shared" / "data" / "routerbench"

C = TypeVar("C", bound="JobConfig")


def _absolute_path(path: Path) -> Path:
    return Path(absolute(path))


#: A local path field, made absolute when the config is loaded (so a Tune trial, a Ray Job or a Serve
#: replica in another working directory reads the same files as the command line that started it).
LocalPath = Annotated[Path, AfterValidator(_absolute_path)]
#: A local path (made absolute at load) or a URI (kept as given).
Location = Annotated[str, AfterValidator(absolute)]


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `overrides`, nested mappings merged key by key (None values are skipped)."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class JobConfig(BaseModel):
    """Base of every job's config: strict fields, YAML in and out, one readable dump."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)

    @classmethod
    def from_yaml(cls: type[C], path: str | os.PathLike, **overrides) -> C:
        """Load from a YAML file; keyword overrides (e.g. from CLI flags) win over the file, nested mappings
        merged key by key. Relative paths in the file are resolved against the current directory."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a YAML mapping of {cls.__name__} fields, got {type(data).__name__}")
        return cls.model_validate(deep_merge(data, overrides))

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text

    def describe(self) -> str:
        """Multi-line dump for logs: the config a run actually used."""
        return f"{type(self).__name__}:\n" + "\n".join(f"  {k}: {v}" for k, v in self.model_dump(mode="json").items())


def default_data_dir() -> Path:
    """RouterBench data: $BARP_DATA_DIR, else ../shared/data/routerbench (from cwd, then from the repo)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    candidates = [Path.cwd() / _DEV_DATA_DIR, Path(__file__).resolve().parents[1] / _DEV_DATA_DIR]
    for c in candidates:
        if c.exists():
            return c.resolve()
    return candidates[0]
