"""No logged decision is lost when router replicas go away while streams and route calls are in flight.

A real router app (2 replicas, real Serve / HTTP / MiniLM, a real streaming upstream, parquet log) takes
continuous traffic (route calls, streamed and plain chat completions) while, in turn, (1) Serve scales the
router down from 2 replicas to 1, (2) a new policy is rolled out, (3) a replica process gets SIGTERM. The log
flushes only every few seconds, so the rows a stopping replica holds reach the store only through its
shutdown flush. After each event every answered request (a 200, or a stream that reached [DONE]) must have
its row in the log; for (1) and (2) no request may fail and rows == answered.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from h2_apps import BUILDER, RUNTIME_ENV, CountingUpstream, Traffic, deploy, openai_upstreams
from serve_helpers import wait_until

APP, PREFIX, KEY = "h2-durable", "/h2durable", "h2-durable-key"
FLUSH_INTERVAL_S = 3.0


class DurableApp:
    def __init__(self, base_url, args, log_dir, prompts, policy_b, upstream, port):
        self.base_url, self.args, self.log_dir, self.prompts = base_url, args, log_dir, prompts
        self.policy_b, self.upstream, self.port = policy_b, upstream, port

    def replicas(self) -> dict[str, dict]:
        from barp_ray.serving.rollout import ServeRestClient

        details = ServeRestClient().get_serve_details()
        replicas = details["applications"][APP]["deployments"]["BarpRouter"]["replicas"]
        return {r["replica_id"]: r for r in replicas if r["state"] == "RUNNING"}


@pytest.fixture(scope="module")
def durable_app(serve_port, tiny_policy, tmp_path_factory):
    import torch

    from barp_ray.policy.checkpoint import load_policy, save_policy
    from barp_ray.serving.rollout import delete_app

    root = tmp_path_factory.mktemp("h2durable")
    keys = root / "keys.txt"
    keys.write_text(KEY + "\n")
    policy = load_policy(tiny_policy.policy_dir)
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(0.9)
    policy_b = save_policy(policy, root / "policy-b")
    upstream = CountingUpstream(chunks=6, delay_s=0.2)  # streams of about 1.2 s
    args = {
        "name": "barp",
        "policy": str(tiny_policy.policy_dir),
        "calibration": str(tiny_policy.calibration),
        # streams of ~1.2 s: a 10 s deadline keeps the drain (graceful_shutdown_timeout_s = deadline + the log's
        # close_timeout_s) at 15 s; Serve waits that long before it kills the SIGTERMed, unanswering replica
        "upstreams": openai_upstreams(tiny_policy.models, upstream, stream_deadline_s=10),
        "router": {
            "min_replicas": 2,
            "max_replicas": 2,
            "num_cpus": 0.25,
            "max_ongoing_requests": 64,
            # the SIGTERMed replica stops answering and is replaced after 3 failed checks: ~30 s, not ~70 s
            "health_check_period_s": 2,
            "health_check_timeout_s": 8,
        },
        "batching": {"enabled": True, "max_batch_size": 8, "batch_wait_timeout_s": 0.005},
        "auth": {"enabled": True, "api_keys_env": None, "api_keys_file": str(keys)},
        "decision_log": {
            "path": str(root / "decision-log"),
            "flush_interval_s": FLUSH_INTERVAL_S,
            "flush_rows": 100_000,
            "close_timeout_s": 5,
        },
    }
    base_url = deploy(APP, PREFIX, args, serve_port)
    app = DurableApp(
        base_url, args, root / "decision-log", [p[:500] for p in tiny_policy.prompts], policy_b, upstream, serve_port
    )
    wait_until(lambda: len(app.replicas()) == 2, 120, interval=1.0, what="two router replicas")
    yield app
    delete_app(APP)
    upstream.stop()


def _logged_ids(log_dir: Path) -> list[str]:
    from barp_ray.serving.decision_log import read_decisions

    return read_decisions(log_dir)["decision_id"].to_pylist()


def _run_with_traffic(app: DurableApp, event, settle_s: float = 4.0) -> Traffic:
    traffic = Traffic(app.base_url, KEY, app.prompts).start()
    wait_until(lambda: traffic.count() >= 15, 180, interval=0.2, what="traffic before the event")
    event()
    seen = traffic.count()
    wait_until(lambda: traffic.count() >= seen + 10, 180, interval=0.2, what="traffic after the event")
    time.sleep(settle_s)
    return traffic.stop()


def _all_logged(app: DurableApp, traffic: Traffic, timeout_s: float = 60.0) -> set[str]:
    """Wait (up to one flush interval of the surviving replicas, plus margin) until every answered id is logged."""
    want = set(traffic.answered)

    def check():
        return want <= set(_logged_ids(app.log_dir)) or None

    try:
        wait_until(check, timeout_s, interval=1.0, what="every answered request in the log")
    except TimeoutError:
        pass
    return want - set(_logged_ids(app.log_dir))


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_scale_down_with_requests_in_flight_loses_no_row(durable_app):
    from barp_ray.serving.rollout import deploy_app

    app = durable_app
    before = set(app.replicas())

    def scale_down():
        deploy_app(
            {
                "name": APP,
                "route_prefix": PREFIX,
                "import_path": BUILDER,
                "args": app.args,
                "runtime_env": RUNTIME_ENV,
                "deployments": [
                    {
                        "name": "BarpRouter",
                        "autoscaling_config": {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1},
                    }
                ],
            }
        )
        wait_until(lambda: len(app.replicas()) == 1, 120, interval=0.5, what="the scale-down to 1 replica")

    traffic = _run_with_traffic(app, scale_down)
    # under heavy load Serve may also replace the surviving replica (a failed health check): for a moment no
    # replica is RUNNING, then its replacement is. That only adds a second stopped replica whose rows must be
    # kept as well, so wait for the one replica the config asks for before comparing.
    wait_until(lambda: len(app.replicas()) == 1, 120, interval=0.5, what="one running replica after the scale-down")
    after = set(app.replicas())
    gone = before - after
    assert gone and len(after) == 1, (before, after)
    lost = _all_logged(app, traffic)
    assert not traffic.failed, traffic.failed[:5]
    assert not lost, f"{len(lost)} of {len(traffic.answered)} answered requests have no log row"
    final = [f for f in app.log_dir.rglob("*.parquet") if any(f"-{stopped}-" in f.name for stopped in gone)]
    print(
        f"\nscale-down: {len(traffic.answered)} answered ({dict(_kinds(traffic))}), 0 lost; the {len(gone)} "
        f"stopped replica(s) wrote {len(final)} file(s)"
    )


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_rollout_with_requests_in_flight_loses_no_row(durable_app):
    from barp_ray.serving.rollout import rollout

    app = durable_app
    results = {}

    def roll():
        results["r"] = rollout(str(app.policy_b), app=APP, timeout_s=240, log=lambda *_: None)

    traffic = _run_with_traffic(app, roll)
    assert results["r"].new_version != results["r"].old_version
    lost = _all_logged(app, traffic)
    assert not traffic.failed, traffic.failed[:5]
    assert not lost, f"{len(lost)} of {len(traffic.answered)} answered requests have no log row"
    print(f"\nrollout: {len(traffic.answered)} answered, 0 lost")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_sigterm_of_a_replica_loses_no_answered_row(durable_app):
    app = durable_app
    killed = {}

    def sigterm():
        replica_id, info = next(iter(app.replicas().items()))
        killed["id"], killed["pid"] = replica_id, info["pid"]
        os.kill(info["pid"], signal.SIGTERM)
        wait_until(lambda: killed["id"] not in app.replicas(), 120, interval=0.5, what="the replica to go")

    traffic = _run_with_traffic(app, sigterm)
    wait_until(lambda: len(app.replicas()) >= 1, 180, interval=1.0, what="a running router replica")
    lost = _all_logged(app, traffic)
    assert not lost, f"{len(lost)} of {len(traffic.answered)} answered requests have no log row"
    final = [f for f in app.log_dir.rglob("*.parquet") if f"-{killed['id']}-" in f.name]
    assert final, "the SIGTERMed replica wrote no file: its shutdown flush did not run"
    print(
        f"\nSIGTERM: {len(traffic.answered)} answered, 0 lost; {len(traffic.failed)} cut in flight "
        f"(not answered): {traffic.failed[:3]}"
    )


def _kinds(traffic: Traffic) -> dict[str, int]:
    out: dict[str, int] = {}
    for kind in traffic.answered.values():
        out[kind] = out.get(kind, 0) + 1
    return out
