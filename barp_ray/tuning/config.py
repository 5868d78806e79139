"""`SweepConfig`: one YAML-loadable object for a Ray Tune sweep over `TrainConfig` hyperparameters."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from barp_ray.config import JobConfig, LocalPath, Location
from barp_ray.training.config import TrainConfig

TAU_SCALE = "tau_scale"  # pseudo-parameter: tau = derived tau (from tau_rule) x this factor
ParamKind = Literal["uniform", "loguniform", "choice", "randint", "qloguniform"]


class ParamSpec(BaseModel):
    """One searched hyperparameter: a range (`low`, `high`) or a list of `values`."""

    model_config = ConfigDict(extra="forbid")

    type: ParamKind
    low: float | None = None
    high: float | None = None
    q: float | None = Field(default=None, gt=0, description="quantum for qloguniform")
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a `choice` parameter needs a non-empty `values` list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a `{self.type}` parameter needs low < high (got {self.low}, {self.high})")
        if self.type in ("loguniform", "qloguniform") and (self.low or 0) <= 0:
            raise ValueError(f"`{self.type}` needs low > 0")
        if self.type == "qloguniform" and self.q is None:
            raise ValueError("`qloguniform` needs `q`")
        return self

    def to_tune(self):
        """The Ray Tune domain for this spec."""
        from ray import tune

        if self.type == "choice":
            return tune.choice(list(self.values or []))
        if self.type == "uniform":
            return tune.uniform(self.low, self.high)
        if self.type == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.type == "qloguniform":
            return tune.qloguniform(self.low, self.high, self.q)
        return tune.randint(int(self.low), int(self.high))  # randint: high exclusive

    def contains(self, value: Any) -> bool:
        """Whether `value` lies in this space (the default config is only evaluated where it does)."""
        if self.type == "choice":
            return value in (self.values or [])
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.type == "randint":
            return float(value).is_integer() and self.low <= value < self.high
        return self.low <= value <= self.high and math.isfinite(value)


def default_space() -> dict[str, ParamSpec]:
    """The search space of issue 4: lr, entropy beta and its schedule, widths, tau, batch size, head."""
    p = ParamSpec
    return {
        "lr": p(type="loguniform", low=2e-4, high=5e-3),
        "beta_start": p(type="loguniform", low=5e-3, high=0.2),
        "beta_end": p(type="loguniform", low=1e-4, high=1e-2),
        "beta_decay_fraction": p(type="uniform", low=0.3, high=1.0),
        "hidden_dim": p(type="choice", values=[64, 128, 256, 512]),
        "pref_dim": p(type="choice", values=[8, 16, 32, 64]),
        TAU_SCALE: p(type="choice", values=[0.5, 1.0, 2.0]),
        "batch_size": p(type="choice", values=[128, 256, 512, 1024]),
        "head": p(type="choice", values=["mlp", "linear", "bilinear"]),
    }


class SweepConfig(JobConfig):
    """Config of `barp tune`: the base training config, the search space, searcher and scheduler."""

    data: Location = Field(default="runs/demo/data", description="prepared + embedded shard directory")
    out_dir: LocalPath = Field(default=Path("runs/tune"), description="best_config.yaml, best_policy/, results")
    storage_path: Location | None = Field(
        default=None, description="Tune + Train storage: local path or s3:// URI (default <out_dir>/ray)"
    )
    name: str = Field(default="barp-sweep", description="Tune experiment name under storage_path")
    overwrite: bool = Field(default=False, description="delete an earlier sweep of the same name first")
    num_samples: int = Field(default=8, ge=1, description="trials in all (the default config included)")
    max_concurrent_trials: int = Field(default=2, ge=1, description="trials running at once")
    metric: Literal["val_aiq", "val_reward"] = Field(
        default="val_aiq", description="maximised; computed on the validation split carved from train"
    )
    search_alg: Literal["optuna", "random"] = Field(default="optuna", description="Tune search algorithm")
    scheduler: Literal["asha", "fifo"] = Field(default="asha", description="trial scheduler (asha stops early)")
    grace_period: int = Field(default=2, ge=1, description="ASHA: epochs every trial gets")
    reduction_factor: int = Field(default=3, ge=2, description="ASHA: keep 1/reduction_factor per rung")
    include_default: bool = Field(default=True, description="evaluate the base config as the first trial")
    driver_cpus: float = Field(default=0.25, gt=0, description="CPU held by each trial's driver function")
    local_num_cpus: int = Field(
        default=4, ge=1, description="logical CPUs of a local Ray started by `barp tune` (not on a cluster)"
    )
    local_dashboard: bool = Field(
        default=True, description="a local Ray started by `barp tune` runs the dashboard (and the State API)"
    )
    time_budget_s: float | None = Field(default=None, gt=0, description="stop starting trials after this")
    seed: int = Field(default=0, description="seed of the searcher")
    base: dict[str, Any] = Field(
        default_factory=lambda: {"epochs": 6, "steps_per_epoch": 60},
        description="TrainConfig fields fixed for every trial (epochs, steps_per_epoch, use_gpu, ...)",
    )
    space: dict[str, ParamSpec] = Field(
        default_factory=default_space, description="searched TrainConfig fields (and tau_scale) -> range"
    )

    @model_validator(mode="after")
    def _check_fields(self) -> SweepConfig:
        fields = set(TrainConfig.model_fields)
        for key in ("data", "storage_path", "name"):
            if key in self.base:
                raise ValueError(f"base.{key} is set by the sweep itself: use SweepConfig.{key}")
        unknown = [k for k in self.base if k not in fields]
        unknown += [k for k in self.space if k not in fields and k != TAU_SCALE]
        if unknown:
            raise ValueError(f"not TrainConfig fields: {unknown} (allowed: {sorted(fields)} and {TAU_SCALE})")
        overlap = sorted(set(self.base) & set(self.space))
        if overlap:
            raise ValueError(f"{overlap} are both fixed in `base` and searched in `space`")
        if TAU_SCALE in self.space and "tau" in self.space:
            raise ValueError("search either `tau` or `tau_scale`, not both")
        self.base_config()  # fail at load time, not inside a trial, if base is not a valid TrainConfig
        return self

    def base_config(self) -> TrainConfig:
        """The TrainConfig every trial starts from (the 'default config' of the comparison)."""
        return TrainConfig.model_validate({**self.base, "data": self.data})

    def resolved_storage(self) -> str:
        """Absolute local storage path, or the URI as given."""
        if self.storage_path and "://" in self.storage_path:
            return self.storage_path.rstrip("/")
        path = Path(self.storage_path) if self.storage_path else self.out_dir / "ray"
        return str(path.expanduser().resolve())

    def default_point(self) -> dict[str, Any] | None:
        """The base config's value of every searched parameter, or None if one falls outside the space."""
        base = self.base_config()
        point = {}
        for key, spec in self.space.items():
            value = 1.0 if key == TAU_SCALE else getattr(base, key)
            if not spec.contains(value):
                return None
            point[key] = value
        return point
