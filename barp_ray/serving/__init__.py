"""Ray Serve router app: a BaRP checkpoint in front of one upstream deployment per candidate model.

`build_app(args)` builds the application (see docs/serving.md); `read_decision_log(path)` reads the
decision log back, joined with feedback, for off-policy training.
"""

from barp_ray.serving.config import ServeAppConfig
from barp_ray.serving.config_sections import Budget, Preference
from barp_ray.serving.decision_log import read_decision_log, read_decisions, read_feedback, read_policies


def build_app(args=None):
    """See `barp_ray.serving.app.build_app` (imported lazily: it pulls in Ray Serve)."""
    from barp_ray.serving.app import build_app as _build

    return _build(args)


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
