"""Ray Serve router app: a BaRP checkpoint in front of one upstream deployment per candidate model.

`build_app(args)` builds the application (see docs/serving.md); `read_decision_log(path)` reads the
decision log back, joined with feedback, for off-policy training.

The names below are imported on first use, so that importing one submodule (an upstream replica imports only
`barp_ray.serving.upstreams`) does not load the policy, torch and the decision log with it.
"""

from __future__ import annotations

import importlib

#: public name -> the submodule that defines it
_EXPORTS = {
    "Budget": "config_sections",
    "Preference": "config_sections",
    "ServeAppConfig": "config",
    "read_decision_log": "decision_log",
    "read_decisions": "decision_log",
    "read_feedback": "decision_log",
    "read_policies": "decision_log",
}


def build_app(args=None):
    """See `barp_ray.serving.app.build_app` (imported lazily: it pulls in Ray Serve)."""
    from barp_ray.serving.app import build_app as _build

    return _build(args)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Budget",
    "Preference",
    "ServeAppConfig",
    "build_app",
    "read_decision_log",
    "read_decisions",
    "read_feedback",
    "read_policies",
]
