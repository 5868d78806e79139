"""Every non-public Ray API barp_ray touches, in one place, each with the Ray issue it works around.

Nothing else in the package imports `ray.*._internal` or `ray._private`; `tests/test_ray_compat.py` checks
each shim against the installed Ray, so an upgrade that moves one fails there, not inside a sweep.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def worker_group_callback_base() -> type:
    """Ray Train V2's `WorkerGroupCallback` (no public export in Ray 2.60).

    Works around: a Train run inside a Tune trial that ASHA stops leaves its worker group's placement group
    reserved (Train V2 ties it to the controller actor; Tune never sees it), so later trials wait forever
    for CPUs. Ray's own fix, the detached PlacementGroupCleaner (ray-project/ray PR #58515, for #54305 and
    #53921), needs the State API (the dashboard) and has an orphaning race (ray-project/ray#62753). The
    callback is the only hook that sees the placement group, so the sweep can free it itself.
    """
    from ray.train.v2._internal.execution.callback import WorkerGroupCallback

    return WorkerGroupCallback


def placement_group_id(worker_group) -> str | None:
    """The placement group id (hex) of a Train V2 worker group, or None (best effort; see above)."""
    try:
        return worker_group.get_worker_group_state().placement_group_handle.placement_group.id.hex()
    except Exception as exc:  # noqa: BLE001 - only the cleanup depends on it
        log.debug("no placement group id on the worker group: %s", exc)
        return None


def actor_state(actor_id: str) -> str | None:
    """ "ALIVE", "DEAD", ... of an actor, or None if unknown.

    The public State API (`ray.util.state.get_actor`) needs the dashboard; without it (e.g. a cluster
    started with include_dashboard=False, or a State API hiccup) the GCS actor table is read directly
    through `ray._private.state.actors`, which has no public equivalent (ray-project/ray#54305).
    """
    try:
        from ray.util.state import get_actor

        info = get_actor(actor_id, timeout=5)
        if info is not None:
            return str(info.state)
    except Exception as exc:  # noqa: BLE001 - State API unavailable: fall back to the GCS table
        log.debug("State API unavailable (%s); reading the GCS actor table", exc)
    import ray

    try:
        return ray._private.state.actors(actor_id=actor_id).get("State")
    except Exception as exc:  # noqa: BLE001
        log.debug("actor %s not found: %s", actor_id, exc)
        return None


__all__ = ["actor_state", "placement_group_id", "worker_group_callback_base"]


def quiet_train_report_logs() -> None:
    """Silence Ray Train V2's per-report INFO line in a training worker.

    Works around: every `ray.train.report` logs `Reporting training result N: TrainingReport(...)` with the
    whole metrics dict at INFO on a logger named after its source file (`logging.getLogger(__file__)` in
    `ray/train/v2/_internal/execution/context.py`), which `RunConfig(logging_config=...)` does not reach in
    the workers (Train V2's worker logging comes from ray-project/ray#49414; no upstream issue on this line
    found as of Ray 2.60). barp prints its own one-line epoch summary instead.
    """
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)
