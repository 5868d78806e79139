"""Ray Tune sweeps driving Ray Train, plus helpers for Ray Jobs on a scoped local head.

Names are imported lazily so that `barp --help` (which imports `barp_ray.tuning.cli`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ParamSpec": "barp_ray.tuning.config",
    "SweepConfig": "barp_ray.tuning.config",
    "default_space": "barp_ray.tuning.config",
    "SweepOutcome": "barp_ray.tuning.sweep",
    "build_tuner": "barp_ray.tuning.tuner",
    "run_sweep": "barp_ray.tuning.sweep",
    "LocalHead": "barp_ray.tuning.jobs",
    "job_runtime_env": "barp_ray.tuning.jobs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'barp_ray.tuning' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
