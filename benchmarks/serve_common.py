"""Shared pieces of the Serve benchmarks: a local Ray + Serve on a free loopback port, prompts, load, output
(`write_results`, the JSON + markdown pair every benchmark here writes).

Not a benchmark itself; see serve_latency.py and serve_autoscale.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

API_KEY = "bench-key"
APP_NAME = "barp-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict:
    """Load and size of this (shared) machine, recorded with every number."""
    load = os.getloadavg()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_1_5_15": [round(x, 2) for x in load],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def default_policy() -> str:
    for candidate in (REPO / "runs" / "demo" / "policy", Path("/tmp/barp/smoke/policy")):
        if (candidate / "policy.json").exists():
            return str(candidate)
    raise SystemExit("no checkpoint: run `barp demo` (writes runs/demo/policy) or pass --policy")


def load_prompts(n: int, kind: str = "routerbench", seed: int = 0) -> list[str]:
    """`n` RouterBench test prompts (long: few-shot, most truncated at 256 tokens by MiniLM), or their
    first line cut to at most 20 words (`short`: chat-like)."""
    from barp_ray.config import default_data_dir
    from barp_ray.data.readers import load_raw

    raw = load_raw(default_data_dir(), models=["gpt-4-1106-preview"])
    test = [p for p, s in zip(raw.prompts, raw.split, strict=True) if s == "test" and p.strip()]
    rng = np.random.default_rng(seed)
    picked = [test[i] for i in rng.choice(len(test), size=min(n, len(test)), replace=False)]
    if kind == "short":
        picked = [" ".join(p.strip().splitlines()[0].split()[:20]) for p in picked]
    return picked


def percentiles(values_ms: list[float]) -> dict:
    if not values_ms:
        return {"n": 0}
    a = np.asarray(values_ms)
    return {
        "n": int(a.size),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p90_ms": round(float(np.percentile(a, 90)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
    }


def start_ray_and_serve(num_cpus: int = 4) -> int:
    """A private local Ray (never an existing cluster) and Serve on a free 127.0.0.1 port; returns it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray
    from ray import serve

    for attempt in range(3):  # a busy shared machine can time the GCS start out
        try:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                object_store_memory=512 * 1024**2,
                log_to_driver=False,
            )
            break
        except Exception as exc:  # noqa: BLE001
            if attempt == 2:
                raise
            print(f"ray.init failed ({exc}); retrying", flush=True)
            ray.shutdown()
            time.sleep(10)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    return port


def deploy(config: dict, port: int, timeout_s: float = 600, name: str = APP_NAME, prefix: str = "") -> float:
    """(Re)deploy the router app with `config` and wait for /healthz; returns the seconds it took."""
    import httpx
    from ray import serve

    from barp_ray.serving.app import build_app

    start = time.perf_counter()
    serve.run(build_app(config), name=name, route_prefix=prefix or "/", blocking=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{prefix}/healthz", timeout=5).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("router did not become healthy")


def deploy_declarative(
    config: dict, port: int, name: str = APP_NAME, prefix: str = "/", timeout_s: float = 600
) -> float:
    """Deploy the app from a Serve config (what `serve run config.yaml` does), so `barp rollout` can update it
    in place; wait for /healthz; returns the seconds it took."""
    import httpx
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    start = time.perf_counter()
    schema = ServeDeploySchema.model_validate(
        {
            "applications": [
                {
                    "name": name,
                    "route_prefix": prefix,
                    "import_path": "barp_ray.serving.app:build_app",
                    "args": config,
                    "runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}},
                }
            ]
        }
    )
    _get_global_client().deploy_apps(schema)
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{port}{prefix.rstrip('/')}/healthz"
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"app {name} did not become healthy")


def app_config(policy: str, log_dir: str, keys_file: str, **overrides) -> dict:
    cfg = {
        "policy": policy,
        "auth": {"enabled": True, "api_keys_env": None, "api_keys_file": keys_file},
        "decision_log": {"path": log_dir, "flush_rows": 1024, "flush_interval_s": 5},
        "router": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.5, "max_ongoing_requests": 256},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def keys_file(out_dir: Path) -> str:
    path = out_dir / "api_keys.txt"
    path.write_text(API_KEY + "\n")
    return str(path)


async def closed_loop(
    url: str,
    bodies: list[dict],
    clients: int,
    duration_s: float,
    warmup_s: float = 2.0,
    timeout_s: float = 60.0,
) -> dict:
    """`clients` concurrent closed-loop clients POSTing `bodies` round-robin for warmup + duration seconds.

    Throughput counts the requests that *complete* inside the measured window (whenever they started), so a
    mode with long per-batch latency is not penalised for requests straddling the window's start; latency
    stats are over those same requests. No new request starts after the window; in-flight ones are dropped.
    """
    import httpx

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    latencies: list[float] = []
    errors = 0
    t0 = time.perf_counter()
    measure_from, stop_at = t0 + warmup_s, t0 + warmup_s + duration_s

    async def request(client: httpx.AsyncClient, body: dict) -> bool:
        try:
            r = await client.post(url, json=body)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    async def one_client(idx: int, client: httpx.AsyncClient) -> None:
        nonlocal errors
        i = idx
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            try:
                ok = await asyncio.wait_for(request(client, bodies[i % len(bodies)]), stop_at - start + 0.001)
            except asyncio.TimeoutError:
                return  # still running when the window closed: not counted
            end = time.perf_counter()
            if measure_from <= end <= stop_at:
                if ok:
                    latencies.append((end - start) * 1000.0)
                else:
                    errors += 1
            i += clients

    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout_s) as client:
        await asyncio.gather(*(one_client(i, client) for i in range(clients)))
    return {
        "clients": clients,
        "duration_s": duration_s,
        "completed": len(latencies),
        "errors": errors,
        "throughput_rps": round(len(latencies) / duration_s, 3),
        **percentiles(latencies),
    }


def write_results(out_dir: Path, name: str, results: dict, markdown: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / f"{name}.json"
    md = out_dir / f"{name}.md"
    js.write_text(json.dumps(results, indent=2))
    md.write_text(markdown)
    return js, md
