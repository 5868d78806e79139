"""Each shim of barp_ray.ray_compat against the installed Ray (an upgrade that moves one fails here)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from barp_ray import ray_compat

REPO = Path(__file__).resolve().parents[1]


def test_private_ray_apis_only_in_ray_compat():
    offenders = []
    for path in (REPO / "barp_ray").rglob("*.py"):
        if path.name == "ray_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Attribute):
                names = [ast.unparse(node)]
            if any(
                n.startswith("ray.") and ("._internal" in n or "._private" in n or n.startswith("ray._")) for n in names
            ):
                offenders.append(f"{path.relative_to(REPO)}: {names[0]}")
    assert not offenders, offenders


def test_worker_group_callback_base_is_the_train_v2_hook():
    base = ray_compat.worker_group_callback_base()
    assert isinstance(base, type) and hasattr(base, "after_worker_group_start")


def test_placement_group_id_reads_a_worker_group_and_tolerates_others():
    class Handle:
        class placement_group:
            class id:
                @staticmethod
                def hex():
                    return "ab12"

    class State:
        placement_group_handle = Handle()

    class WorkerGroup:
        def get_worker_group_state(self):
            return State()

    assert ray_compat.placement_group_id(WorkerGroup()) == "ab12"
    assert ray_compat.placement_group_id(object()) is None


@pytest.mark.ray
def test_actor_state_alive_then_dead(ray_cluster):
    ray = ray_cluster

    @ray.remote(num_cpus=0)
    class Probe:
        def actor_id(self) -> str:
            import ray

            return ray.get_runtime_context().get_actor_id()

    actor = Probe.remote()
    actor_id = ray.get(actor.actor_id.remote())
    assert ray_compat.actor_state(actor_id) == "ALIVE"
    ray.kill(actor)
    import time

    deadline = time.monotonic() + 30
    while ray_compat.actor_state(actor_id) != "DEAD" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_compat.actor_state(actor_id) == "DEAD"


def test_quiet_train_report_logs_targets_the_logger_that_prints_each_report():
    import logging

    from ray.train.v2._internal.execution import context

    from barp_ray.ray_compat import quiet_train_report_logs

    assert context.logger.name == context.__file__  # the logger the shim raises to WARNING
    quiet_train_report_logs()
    assert not context.logger.isEnabledFor(logging.INFO)
