"""Policy rollout: a new checkpoint reaches the running router replica in place, while requests keep succeeding.

The Serve test (real Serve, HTTP, MiniLM, replay upstreams) deploys its own app from a declarative config
(what `serve run config.yaml` does) on route "/rollout" beside the session app, rolls a second checkpoint out
with `barp rollout`, and checks: no failed request, both versions answered, each decision reports (and logs)
the version whose probabilities it carries, the same replica processes before and after, and bad rollouts
are refused while the old policy keeps serving. The other tests need no Ray.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import wait_until

from barp_ray.serving import rollout as rollout_mod
from barp_ray.serving.rollout import RolloutError

ROLLOUT_APP = "barp-rollout"
PREFIX = "/rollout"
API_KEY = "rollout-key"
W_COSTS = [0.0, 0.5, 1.0]


def _small_policy(models: list[str], seed: int = 0):
    import torch

    from barp_ray.policy.model import BarpPolicy, PolicySpec

    torch.manual_seed(seed)
    spec = PolicySpec(
        models=models,
        tau=0.002,
        encoder="sentence-transformers/all-MiniLM-L6-v2",
        embed_dim=384,
        pref_dim=8,
        hidden_dim=16,
    )
    return BarpPolicy(spec).eval()


# ---- without Ray ------------------------------------------------------------------------------------------
def test_coalescer_never_mixes_two_policies_in_one_pass():
    from concurrent.futures import ThreadPoolExecutor

    from barp_ray.serving.router import ForwardCoalescer

    passes: list[tuple[str, list[str]]] = []
    gate = threading.Event()

    def make(name: str, offset: float):
        def forward(texts, w_costs):
            passes.append((name, list(texts)))
            if len(passes) == 1:
                gate.wait(5)
            return np.array([[offset + len(t)] for t in texts])

        return forward

    old, new = make("old", 0.0), make("new", 100.0)
    executor = ThreadPoolExecutor(1)
    coalescer = ForwardCoalescer(old, executor, max_items=8)

    async def scenario():
        first = asyncio.create_task(coalescer.run(["a"], [0.0]))  # default fn: old
        await asyncio.sleep(0.05)
        queued = [
            asyncio.create_task(coalescer.run([t], [0.0], fn))
            for t, fn in (("bb", old), ("ccc", new), ("dddd", new), ("eeeee", old))
        ]
        await asyncio.sleep(0.05)
        gate.set()
        return await first, await asyncio.gather(*queued)

    first, queued = asyncio.run(asyncio.wait_for(scenario(), 10))
    executor.shutdown()
    assert passes == [("old", ["a"]), ("old", ["bb"]), ("new", ["ccc", "dddd"]), ("old", ["eeeee"])]
    assert first[0][0][0] == 1 and [q[0][0][0] for q in queued] == [2, 103, 104, 5]


def test_rollout_target_from_user_config(tmp_path):
    from barp_ray.serving.config import ServeAppConfig
    from barp_ray.serving.router import RolloutTarget

    cfg = ServeAppConfig(policy=str(tmp_path / "a"), calibration=str(tmp_path / "cal.json"))
    assert RolloutTarget.from_user_config(None, cfg) == RolloutTarget(str(tmp_path / "a"), str(tmp_path / "cal.json"))
    t = RolloutTarget.from_user_config({"policy": "s3://b/p", "version": "v", "rollout_id": "r"}, cfg)
    assert (t.policy, t.calibration, t.version, t.rollout_id) == ("s3://b/p", str(tmp_path / "cal.json"), "v", "r")
    with pytest.raises(ValueError, match="relative path"):
        RolloutTarget.from_user_config({"policy": "runs/demo/policy"}, cfg)
    with pytest.raises(ValueError, match="unknown keys"):
        RolloutTarget.from_user_config({"polcy": "/x"}, cfg)


def test_check_policy_refuses_missing_and_incompatible_checkpoints(tmp_path):
    from barp_ray.policy.checkpoint import save_policy
    from barp_ray.serving.engine import policy_version

    with pytest.raises(RolloutError, match="not a BaRP policy checkpoint"):
        rollout_mod.check_policy(str(tmp_path / "nope"), ["m1"])
    path = save_policy(_small_policy(["m1", "m2"]), tmp_path / "p")
    spec, version = rollout_mod.check_policy(str(path), ["m1", "m2"])
    assert spec["models"] == ["m1", "m2"] and version == policy_version(str(path))
    with pytest.raises(RolloutError, match=r"upstreams \['m3'\] are not models of the policy"):
        rollout_mod.check_policy(str(path), ["m1", "m3"])
    assert rollout_mod.resolve_location("rel/p") == str(Path("rel/p").resolve())
    assert rollout_mod.resolve_location("s3://b/p") == "s3://b/p"


def _details(source: str = "declarative") -> dict:
    router_app = {
        "name": "barp",
        "route_prefix": "/",
        "import_path": "barp_ray.serving.app:build_app",
        "args": {"policy": "/p/a"},
        "runtime_env": {"env_vars": {"X": "1"}},
        "deployments": [{"name": "upstream-m1", "num_replicas": 2}],
    }
    other = {"name": "other", "route_prefix": "/other", "import_path": "mod:app", "args": {"k": 1}}
    replicas = [{"replica_id": "r1", "state": "RUNNING", "pid": 1}, {"replica_id": "r0", "state": "STOPPING"}]
    return {
        "target_capacity": None,
        "applications": {
            "barp": {
                "source": source,
                "status": "RUNNING",
                "deployed_app_config": router_app if source == "declarative" else None,
                "deployments": {"BarpRouter": {"replicas": replicas}},
            },
            "other": {"source": "declarative", "deployed_app_config": other, "deployments": {}},
            "py": {"source": "imperative", "deployed_app_config": None, "deployments": {}},
        },
    }


def test_deploy_schema_changes_only_the_router_user_config():
    from ray.serve._private.deploy_utils import get_app_code_version
    from ray.serve.schema import ServeApplicationSchema

    details = _details()
    before = {a.name: a for a in rollout_mod._deploy_schema(details, "barp").applications}
    after = {a.name: a for a in rollout_mod._deploy_schema(details, "barp", {"policy": "/p/b"}).applications}
    assert set(after) == {"barp", "other"}  # every declarative app (Serve deletes omitted ones), no imperative
    for name in after:  # same code version: Serve applies it as an in-place override, no rebuild
        assert get_app_code_version(after[name]) == get_app_code_version(before[name])
    assert get_app_code_version(before["barp"]) == get_app_code_version(
        ServeApplicationSchema.model_validate(details["applications"]["barp"]["deployed_app_config"])
    )
    deployments = {d.name: d.model_dump(exclude_unset=True) for d in after["barp"].deployments}
    assert deployments == {
        "upstream-m1": {"name": "upstream-m1", "num_replicas": 2},
        "BarpRouter": {"name": "BarpRouter", "user_config": {"policy": "/p/b"}},
    }
    assert after["other"].model_dump(exclude_unset=True) == before["other"].model_dump(exclude_unset=True)
    assert rollout_mod._router_replicas(details["applications"]["barp"]).keys() == {"r1"}


def test_rollout_refuses_an_app_deployed_from_python(monkeypatch):
    class FakeClient:
        def get_serve_details(self):
            return _details("imperative")

    monkeypatch.setattr(rollout_mod, "_client", lambda address=None: FakeClient())
    with pytest.raises(RolloutError, match=r"deployed from Python \(serve.run\).*restart all replicas"):
        rollout_mod.rollout("/p/b", app="barp")
    with pytest.raises(RolloutError, match="no Serve application 'nope'"):
        rollout_mod.rollout("/p/b", app="nope")


# ---- the Serve test ---------------------------------------------------------------------------------------
@dataclass
class Result:
    kind: str
    thread: int
    started: float
    ended: float
    ok: bool
    version: str | None = None
    decision_id: str | None = None
    prompt: str | None = None
    w_cost: float | None = None
    probabilities: dict | None = None
    error: str | None = None


@dataclass
class Traffic:
    """Background threads sending /v1/route (2 threads) and chat completions (1 thread) until stopped."""

    base_url: str
    prompts: list[str]
    results: list[Result] = field(default_factory=list)

    def __post_init__(self):
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._loop, args=(kind, n), daemon=True)
            for n, kind in enumerate(("route", "route", "chat"))
        ]

    def start(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> list[Result]:
        self.stop_event.set()
        for t in self.threads:
            t.join(90)
        return list(self.results)

    def count(self, after: float = 0.0, kind: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.results if r.started > after and (kind is None or r.kind == kind))

    def _loop(self, kind: str, n: int) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {API_KEY}"}
        i = n
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=60) as client:
            while not self.stop_event.is_set():
                prompt, w = self.prompts[i % len(self.prompts)], W_COSTS[i % len(W_COSTS)]
                pref = {"quality": 1.0 - w, "cost": w}
                started = time.monotonic()
                try:
                    if kind == "route":
                        r = client.post("/v1/route", json={"prompt": prompt, "preference": pref})
                        info = r.json() if r.status_code == 200 else None
                    else:
                        r = client.post(
                            "/v1/chat/completions",
                            json={"messages": [{"role": "user", "content": prompt}], "preference": pref},
                        )
                        info = r.json()["barp"] if r.status_code == 200 else None
                    res = Result(
                        kind,
                        n,
                        started,
                        time.monotonic(),
                        info is not None,
                        error=None if info else f"HTTP {r.status_code}: {r.text[:300]}",
                    )
                    if info:
                        res.version, res.decision_id = info["policy_version"], info["decision_id"]
                        res.prompt, res.w_cost, res.probabilities = prompt, w, info["probabilities"]
                except Exception as exc:  # noqa: BLE001 - a failed request is what the test looks for
                    res = Result(kind, n, started, time.monotonic(), False, error=repr(exc))
                with self.lock:
                    self.results.append(res)
                i += 3
                if kind == "chat":
                    time.sleep(0.05)


@dataclass
class RolloutApp:
    base_url: str
    log_dir: Path
    upstreams: list[str]
    policy_a: Path
    policy_b: Path
    foreign: Path  # models do not cover the upstreams
    prompts: list[str]


def _replica_pids(app: str = ROLLOUT_APP) -> dict[str, dict[str, int]]:
    deployments = rollout_mod.ServeRestClient().get_serve_details()["applications"][app]["deployments"]
    return {name: {r["replica_id"]: r["pid"] for r in d["replicas"]} for name, d in deployments.items()}


@pytest.fixture(scope="module")
def rollout_app(serve_port, tiny_policy, tmp_path_factory) -> RolloutApp:
    """A router app with two replay upstreams, deployed from a config (as `serve run <yaml>` does)."""
    import httpx
    import torch
    from ray import serve

    from barp_ray.config import default_data_dir
    from barp_ray.policy.checkpoint import load_policy, save_policy

    root = tmp_path_factory.mktemp("rollout")
    # v_b: the same network with perturbed weights (another content hash, other probabilities)
    policy = load_policy(tiny_policy.policy_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    policy_b = save_policy(policy, root / "policy-b", extra={"note": "perturbed copy for the rollout test"})
    upstreams = [tiny_policy.cheap_choice, next(m for m in tiny_policy.models if m != tiny_policy.cheap_choice)]
    foreign = save_policy(_small_policy([m for m in tiny_policy.models if m != upstreams[1]]), root / "foreign")

    keys = root / "keys.txt"
    keys.write_text(API_KEY + "\n")
    log_dir = root / "decision-log"
    args = {
        "name": "barp",
        "policy": str(tiny_policy.policy_dir),
        "calibration": str(tiny_policy.calibration),
        "upstreams": [{"model": m, "kind": "replay", "replay": {"data": str(default_data_dir())}} for m in upstreams],
        "router": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.25},
        "batching": {"enabled": True, "max_batch_size": 8, "batch_wait_timeout_s": 0.005},
        "auth": {"enabled": True, "api_keys_env": None, "api_keys_file": str(keys)},
        "decision_log": {"path": str(log_dir), "flush_interval_s": 0.5, "flush_rows": 64},
    }
    rollout_mod.deploy_app(
        {  # Serve's public REST API (PUT /api/serve/applications/), as `serve deploy` does
            "name": ROLLOUT_APP,
            "route_prefix": PREFIX,
            "import_path": "barp_ray.serving.app:build_app",
            "args": args,
            "runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}},
        }
    )
    base_url = f"http://127.0.0.1:{serve_port}{PREFIX}"
    wait_until(
        lambda: serve.status().applications[ROLLOUT_APP].status == "RUNNING",
        600,
        interval=1.0,
        what=f"the {ROLLOUT_APP} app",
    )
    wait_until(lambda: httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200, 60, what="/rollout/healthz")
    yield RolloutApp(
        base_url,
        log_dir,
        upstreams,
        Path(tiny_policy.policy_dir),
        Path(policy_b),
        Path(foreign),
        tiny_policy.prompts[:12],
    )
    rollout_mod.delete_app(ROLLOUT_APP)


def _expected(app: RolloutApp, policy: Path, encoder=None):
    """(prompt, w_cost) -> the probabilities the router must answer with under `policy` (over its upstreams)."""
    from barp_ray.serving.engine import RoutingEngine

    engine = RoutingEngine(str(policy), encoder_model=encoder)
    available = np.array([m in app.upstreams for m in engine.models])
    out = {}
    for w in W_COSTS:
        probs = engine.forward(app.prompts, [w] * len(app.prompts)) * available
        for prompt, p in zip(app.prompts, probs / probs.sum(axis=1, keepdims=True), strict=True):
            out[(prompt, w)] = dict(zip(engine.models, p, strict=True))
    return engine, out


def _max_diff(a: dict, b: dict) -> float:
    return max(abs(a[m] - b[m]) for m in a)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_rollout_swaps_versions_while_requests_keep_succeeding(rollout_app, capsys):
    import httpx

    from barp_ray.cli import main as barp
    from barp_ray.serving.decision_log import read_decision_log, read_policies
    from barp_ray.serving.engine import policy_version

    app = rollout_app
    v_a, v_b = policy_version(str(app.policy_a)), policy_version(str(app.policy_b))
    assert v_a != v_b
    engine_a, expect_a = _expected(app, app.policy_a)
    _, expect_b = _expected(app, app.policy_b, engine_a.encoder)
    expect = {v_a: expect_a, v_b: expect_b}
    assert max(_max_diff(expect_a[k], expect_b[k]) for k in expect_a) > 0.05  # the versions are told apart

    health = httpx.get(f"{app.base_url}/healthz", timeout=10).json()
    assert health["policy_version"] == v_a
    pids_before = _replica_pids()
    assert list(pids_before["BarpRouter"]) == [health["replica"]]
    (status,) = rollout_mod.replica_statuses(ROLLOUT_APP, {health["replica"]}).values()
    assert status["policy_loads"] == 1  # Serve's reconfigure() at replica start found the policy loaded

    # ---- roll v_b out with `barp rollout` while requests keep coming -------------------------------------
    traffic = Traffic(app.base_url, app.prompts).start()
    wait_until(lambda: traffic.count() >= 12, 120, interval=0.2, what="traffic before the rollout")
    capsys.readouterr()
    t0 = time.monotonic()
    assert barp(["rollout", "--policy", str(app.policy_b), "--app", ROLLOUT_APP, "--timeout", "180"]) == 0
    rollout_s = time.monotonic() - t0
    swapped = time.monotonic()
    out = capsys.readouterr().out
    assert f"policy {v_a} -> {v_b}" in out and "no replica was restarted" in out, out
    wait_until(
        lambda: traffic.count(after=swapped) >= 12 and traffic.count(after=swapped, kind="chat") >= 2,
        120,
        interval=0.2,
        what="traffic after the rollout",
    )
    results = traffic_results = traffic.stop()

    failed = [r for r in results if not r.ok]
    assert not failed, failed[:5]
    assert {r.version for r in results} == {v_a, v_b}
    assert all(r.version == v_b for r in results if r.started > swapped)  # every decision after the swap
    for thread in {r.thread for r in results}:  # per client: v_a ... v_a, v_b ... v_b (one swap, no way back)
        seq = [r.version for r in sorted(results, key=lambda r: r.started) if r.thread == thread]
        assert seq == sorted(seq, key=lambda v: v == v_b), seq
    for r in results:  # each decision carries the probabilities of the version it reports
        assert _max_diff(r.probabilities, expect[r.version][(r.prompt, r.w_cost)]) < 2e-3, (r.version, r.prompt)

    # the same replica process (and upstream processes) before and after: reconfigured, not restarted
    health = httpx.get(f"{app.base_url}/healthz", timeout=10).json()
    assert health["policy_version"] == v_b and health["last_rollout"]["ok"]
    assert _replica_pids() == pids_before

    # the decision log says which version decided each request
    ids = {r.decision_id: r.version for r in results}

    def logged():
        frame = read_decision_log(app.log_dir)
        return frame if ids.keys() <= set(frame["decision_id"]) else None

    frame = wait_until(logged, 30, what="every decision in the log")
    frame = frame[frame["decision_id"].isin(list(ids))]
    assert dict(zip(frame["decision_id"], frame["policy_version"], strict=True)) == ids
    policies = read_policies(app.log_dir)
    assert {v_a, v_b} <= set(policies) and policies[v_b]["models"] == engine_a.models

    # ---- bad rollouts are refused; v_b keeps serving ----------------------------------------------------------
    with pytest.raises(RolloutError, match="not a BaRP policy checkpoint"):
        rollout_mod.rollout(str(app.policy_a.parent / "no-such-policy"), app=ROLLOUT_APP, timeout_s=60)
    with pytest.raises(RolloutError, match=r"are not models of the policy"):
        rollout_mod.rollout(str(app.foreign), app=ROLLOUT_APP, timeout_s=60)  # checked here, Serve untouched
    traffic = Traffic(app.base_url, app.prompts).start()
    wait_until(lambda: traffic.count() >= 6, 60, interval=0.2, what="traffic before the bad rollout")
    with pytest.raises(RolloutError, match=r"refused .*are not models of the policy.*re-applied the previous"):
        rollout_mod.rollout(str(app.foreign), app=ROLLOUT_APP, timeout_s=120, check=False)  # the replica refuses
    after_bad = time.monotonic()
    wait_until(lambda: traffic.count(after=after_bad) >= 6, 60, interval=0.2, what="traffic after the bad rollout")
    results = traffic.stop()
    assert all(r.ok for r in results), [r for r in results if not r.ok][:5]
    assert {r.version for r in results} == {v_b}
    health = httpx.get(f"{app.base_url}/healthz", timeout=10).json()
    assert health["policy_version"] == v_b and health["last_rollout"]["ok"]  # the re-applied config is a no-op
    assert _replica_pids() == pids_before
    (status,) = rollout_mod.replica_statuses(ROLLOUT_APP, set(pids_before["BarpRouter"])).values()
    assert status["policy"] == str(app.policy_b) and status["policy_loads"] == 2  # a, b; the revert loaded nothing
    during = [r.ended - r.started for r in traffic_results if r.ended > t0 and r.started < swapped]
    print(
        f"rollout took {rollout_s:.1f}s; {len(ids)} decisions in the first traffic window, none failed; slowest "
        f"request overlapping the rollout: {max(during, default=0.0):.2f}s"
    )
