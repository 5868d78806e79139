"""Config plumbing shared by every job: pydantic models loadable from YAML, printed at start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict

DATA_DIR_ENV = "BARP_DATA_DIR"
_DEV_DATA_DIR = Path("..") / "shared" / "data" / "routerbench"

C = TypeVar("C", bound="JobConfig")


class JobConfig(BaseModel):
    """Base of every job's config: strict fields, YAML in and out, one readable dump."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def from_yaml(cls: type[C], path: str | os.PathLike, **overrides) -> C:
        """Load from a YAML file; keyword overrides (e.g. from CLI flags) win over the file."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a YAML mapping of {cls.__name__} fields, got {type(data).__name__}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(data)

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text

    def describe(self) -> str:
        """Multi-line dump for logs: the config a run actually used."""
        return f"{type(self).__name__}:\n" + "\n".join(
            f"  {k}: {v}" for k, v in self.model_dump(mode="json").items()
        )


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
