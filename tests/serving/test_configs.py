"""Every committed Serve / KubeRay config validates through the path the app takes at start, not only Serve's schema.

For each app that imports `barp_ray.serving.app:build_app`, `resolve_config` (what `build_app` runs first)
is called on its `args` with only the policy location swapped for a local checkpoint holding every model the
configs name (the committed locations are placeholders such as s3://YOUR-BUCKET). On top: the keys the
router needs at start are provided (the RayService takes them from a Kubernetes Secret), cluster configs
keep the decision log on shared storage and declare their upstreams, the shutdown budget fits the pod's
termination grace, and the LLM app of serve-llm.yaml is reachable only with the router's gate key.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from barp_ray import storage
from barp_ray.serving.config import ServeAppConfig

REPO = Path(__file__).resolve().parents[2]
BUILDER = "barp_ray.serving.app:build_app"
CONFIGS = sorted([*(REPO / "serve").glob("*.yaml"), *(REPO / "deploy").glob("rayservice*.yaml")])
CLUSTER_CONFIGS = {"serve-llm.yaml", "rayservice-router.yaml"}


def serve_doc(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    if doc.get("kind") == "RayService":
        return yaml.safe_load(doc["spec"]["serveConfigV2"])
    return doc


def barp_apps(doc: dict) -> list[dict]:
    return [a for a in doc["applications"] if a["import_path"] == BUILDER]


@pytest.fixture(scope="module")
def any_policy(tmp_path_factory) -> str:
    """A real (untrained) checkpoint whose models cover every upstream model named in the configs."""
    import torch

    from barp_ray.policy.checkpoint import save_policy
    from barp_ray.policy.model import BarpPolicy, PolicySpec

    models = sorted(
        {
            u["model"]
            for path in CONFIGS
            for app in barp_apps(serve_doc(path))
            for u in app["args"].get("upstreams") or []
        }
    )
    if not models:  # offline.yaml only: one replay upstream per model of the checkpoint
        models = ["m0", "m1"]
    torch.manual_seed(0)
    spec = PolicySpec(
        models=models,
        tau=0.002,
        encoder="sentence-transformers/all-MiniLM-L6-v2",
        embed_dim=384,
        pref_dim=8,
        hidden_dim=16,
    )
    return str(save_policy(BarpPolicy(spec).eval(), tmp_path_factory.mktemp("cfg") / "policy"))


def test_every_config_is_found():
    names = {p.name for p in CONFIGS}
    assert {"offline.yaml", "openai.yaml", "serve-llm.yaml", "rayservice-router.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_through_the_start_path(path, any_policy, monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    from barp_ray.serving.app import resolve_config

    doc = serve_doc(path)
    ServeDeploySchema.model_validate(doc)  # Serve's own schema
    apps = barp_apps(doc)
    assert len(apps) == 1, "one BaRP router app per config"
    args = dict(apps[0]["args"])
    raw = ServeAppConfig.model_validate(args)  # field errors name the field
    # the start path (build_app -> resolve_config), with only the placeholder policy location swapped
    args["policy"] = any_policy
    if args.get("calibration") and storage.is_uri(args["calibration"]):
        args.pop("calibration")  # a placeholder bucket; s3:// loading: test_calibration_from_s3
    monkeypatch.setenv("BARP_DATA_DIR", str(REPO))  # offline: replay data is resolved, not read, at this point
    cfg = resolve_config(args)
    assert cfg.upstreams, "resolve_config gives every app its upstreams"
    assert cfg.shutdown_timeout_s() >= max(u.stream_deadline_s for u in cfg.upstreams)
    if raw.auth.enabled:  # the router refuses to start without keys: the config must say where they come from
        assert raw.auth.api_keys_env or raw.auth.api_keys_file
    if path.name in CLUSTER_CONFIGS:
        assert storage.is_uri(raw.decision_log.path), "cluster configs keep the decision log on shared storage"
        assert raw.upstreams and all(u.kind == "openai" for u in raw.upstreams), "declared upstreams, no replay"
        assert storage.is_uri(raw.policy)
    if path.name != "serve-llm.yaml" and path.parent.name == "serve":
        assert doc["http_options"]["host"] == "127.0.0.1"


def test_rayservice_takes_keys_from_a_secret_and_drains_within_the_pod_grace():
    path = REPO / "deploy" / "rayservice-router.yaml"
    doc = yaml.safe_load(path.read_text())
    cfg = ServeAppConfig.model_validate(barp_apps(serve_doc(path))[0]["args"])
    cluster = doc["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert "secretKeyRef" in env[cfg.auth.api_keys_env]["valueFrom"]
        for u in cfg.upstreams:
            if u.openai.api_key_env:
                assert "secretKeyRef" in env[u.openai.api_key_env]["valueFrom"]
    for group in cluster["workerGroupSpecs"]:
        assert group["template"]["spec"]["terminationGracePeriodSeconds"] > cfg.shutdown_timeout_s()


def test_serve_llm_app_is_reachable_only_with_the_gate_key():
    doc = serve_doc(REPO / "serve" / "serve-llm.yaml")
    llm = next(a for a in doc["applications"] if a["import_path"] == "ray.serve.llm:build_openai_app")
    prefix = llm["route_prefix"]
    cfg = ServeAppConfig.model_validate(barp_apps(doc)[0]["args"])
    internal = [u for u in cfg.upstreams if f":{doc['http_options']['port']}{prefix}/" in u.openai.base_url]
    assert internal and all(u.openai.api_key_env == "BARP_GATE_API_KEY" for u in internal)
    text = (REPO / "serve" / "serve-llm.yaml").read_text()
    assert "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=barp_ray.serving.gate:proxy_middlewares" in text
    assert f"BARP_GATE_PREFIXES={prefix}" in text


def test_gate_blocks_internal_routes_without_the_key(monkeypatch):
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from barp_ray.serving.gate import proxy_middlewares

    async def ok(request):
        return JSONResponse({"path": request.url.path})

    monkeypatch.setenv("BARP_GATE_PREFIXES", "/llm")
    monkeypatch.setenv("BARP_GATE_API_KEYS", "internal-1,internal-2")
    app = Starlette(routes=[Route("/llm/v1/models", ok), Route("/v1/models", ok)], middleware=proxy_middlewares())

    async def calls():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gate") as c:
            return [
                await c.get("/llm/v1/models"),
                await c.get("/llm/v1/models", headers={"Authorization": "Bearer x"}),
                await c.get("/llm/v1/models", headers={"Authorization": "Bearer internal-2"}),
                await c.get("/v1/models"),
            ]

    no_key, bad_key, good, router = asyncio.run(calls())
    assert no_key.status_code == bad_key.status_code == 401
    assert no_key.json()["error"]["code"] == "invalid_api_key"
    assert good.status_code == 200 and router.status_code == 200
    monkeypatch.setenv("BARP_GATE_API_KEYS", "")
    with pytest.raises(ValueError, match="BARP_GATE_API_KEYS is empty"):
        proxy_middlewares()


def test_removed_and_unsafe_settings_are_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="metrics_interval_s was removed"):
        ServeAppConfig(router={"metrics_interval_s": 2})
    with pytest.raises(ValidationError, match=r"graceful_shutdown_timeout_s \(10\) < the longest upstream"):
        ServeAppConfig(router={"graceful_shutdown_timeout_s": 10}, upstreams=[{"model": "m", "stream_deadline_s": 60}])
    cfg = ServeAppConfig(upstreams=[{"model": "m", "stream_deadline_s": 60}], decision_log={"close_timeout_s": 5})
    assert cfg.shutdown_timeout_s() == 65 and cfg.router.serve_max_ongoing_requests() == 256 + 2 * 256
    assert "metrics_interval_s" not in cfg.router.autoscaling_config()


def test_calibration_from_s3():
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from s3_server import s3_server

    from barp_ray.serving.calibration import Calibration, CalibrationRow, load_calibration

    cal = Calibration(
        models=["a", "b"],
        largest_model="b",
        rows=[CalibrationRow(0.0, 0.005, 0.9, 1.0)],
        model_mean_cost={"a": 1e-4, "b": 5e-3},
        model_mean_score={"a": 0.6, "b": 0.9},
        num_prompts=3,
        split="val",
    )
    with s3_server() as env:
        uri = f"s3://{env['BUCKET']}/barp/calibration.json"
        assert cal.save(uri) == uri
        assert load_calibration(uri, "unused-policy-location").rows == cal.rows
