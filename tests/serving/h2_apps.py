"""Helpers of the durability / isolation / bad-input Serve tests (imported by name: tests/serving is on sys.path).

- `CountingUpstream`: a real OpenAI-compatible HTTP server on loopback (FastAPI + uvicorn in a thread) that
  answers chat completions (plain and streamed) and counts every call it receives.
- `deploy(name, prefix, args)`: a router app deployed from a declarative config through Serve's REST API
  (as `serve deploy` does), waited for until /healthz answers.
- `Traffic`: background clients sending /v1/route, plain and streamed chat completions; it keeps the decision
  id of every request that was answered in full (a 200, or a stream that reached `data: [DONE]`).
"""

# no `from __future__ import annotations`: FastAPI must see the real `Request` annotation of the endpoint
import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

import pytest
from serve_helpers import free_port, wait_until

BUILDER = "barp_ray.serving.app:build_app"
RUNTIME_ENV = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}}


class CountingUpstream:
    """An OpenAI-compatible chat endpoint counting its calls; `delay_s` between streamed chunks."""

    def __init__(self, chunks: int = 4, delay_s: float = 0.0) -> None:
        import uvicorn
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, StreamingResponse

        self.calls = 0
        self.lock = threading.Lock()
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            with self.lock:
                self.calls += 1
            model = body.get("model", "m")
            if not body.get("stream"):
                return JSONResponse(
                    {
                        "id": "up-1",
                        "object": "chat.completion",
                        "created": 0,
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "hello from upstream"},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
                    }
                )

            async def events():
                for i in range(chunks):
                    chunk = {
                        "id": "up-1",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": model,
                        "choices": [{"index": 0, "delta": {"content": f"part{i} "}, "finish_reason": None}],
                    }
                    yield f"data: {json.dumps(chunk)}\n\n"
                    await asyncio.sleep(delay_s)
                last = {
                    "id": "up-1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks},
                }
                yield f"data: {json.dumps(last)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 30, interval=0.1, what="the counting upstream")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def count(self) -> int:
        with self.lock:
            return self.calls

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def openai_upstreams(models: list[str], upstream: CountingUpstream, stream_deadline_s: float = 60) -> list[dict]:
    return [
        {
            "model": m,
            "kind": "openai",
            "stream_deadline_s": stream_deadline_s,
            "openai": {
                "base_url": upstream.base_url,
                "model_name": m,
                "api_key_env": None,
                "max_retries": 0,
                "timeout_s": 20,
            },
        }
        for m in models
    ]


def deploy(name: str, prefix: str, args: dict, port: int, timeout_s: float = 900) -> str:
    """Deploy (or replace) a router app from a declarative config via Serve's REST API; its base URL."""
    import httpx
    from ray import serve

    from barp_ray.serving.rollout import deploy_app

    deploy_app({"name": name, "route_prefix": prefix, "import_path": BUILDER, "args": args, "runtime_env": RUNTIME_ENV})
    base_url = f"http://127.0.0.1:{port}{prefix}"

    def running() -> bool:
        app = serve.status().applications[name]
        if app.status == "DEPLOY_FAILED":
            raise AssertionError(f"{name}: DEPLOY_FAILED: {app.message[:2000]}")
        return app.status == "RUNNING"

    deadline = time.monotonic() + timeout_s
    while not running():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not RUNNING after {timeout_s}s: {serve.status().applications[name]}")
        time.sleep(1.0)
    wait_until(lambda: httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200, 60, what=f"{name}/healthz")
    return base_url


@dataclass
class Traffic:
    """Clients in threads: `route` and `stream` (and `chat`) loops until `stop()`; answered ids are kept."""

    base_url: str
    api_key: str
    prompts: list[str]
    kinds: tuple[str, ...] = ("route", "route", "stream", "stream", "chat")
    answered: dict[str, str] = field(default_factory=dict)  # decision id -> kind
    failed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(k, n), daemon=True) for n, k in enumerate(self.kinds)]

    def start(self) -> "Traffic":
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> "Traffic":
        self.stop_event.set()
        for t in self.threads:
            t.join(120)
        return self

    def count(self) -> int:
        with self.lock:
            return len(self.answered)

    def _one(self, client, kind: str, prompt: str) -> str | None:
        if kind == "route":
            r = client.post("/v1/route", json={"prompt": prompt})
            return r.json()["decision_id"] if r.status_code == 200 else None
        body = {"model": "barp", "messages": [{"role": "user", "content": prompt}], "stream": kind == "stream"}
        if kind == "chat":
            r = client.post("/v1/chat/completions", json=body)
            return r.json()["barp"]["decision_id"] if r.status_code == 200 else None
        decision_id, done = None, False
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return None
            decision_id = r.headers.get("x-barp-decision-id")
            for line in r.iter_lines():
                if line.strip() == "data: [DONE]":
                    done = True
                elif line.startswith('data: {"error"'):
                    return None
        return decision_id if done else None

    def _loop(self, kind: str, n: int) -> None:
        import httpx

        i = n
        headers = {"Authorization": f"Bearer {self.api_key}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=120) as client:
            while not self.stop_event.is_set():
                prompt = self.prompts[i % len(self.prompts)]
                i += len(self.kinds)
                try:
                    decision_id = self._one(client, kind, prompt)
                except Exception as exc:  # noqa: BLE001 - a cut connection: not answered, so not counted
                    decision_id = None
                    with self.lock:
                        self.failed.append(f"{kind}: {type(exc).__name__}: {exc}"[:200])
                if decision_id:
                    with self.lock:
                        self.answered[decision_id] = kind
                time.sleep(0.02)


# ---- the shared app of test_bad_input.py and test_isolation.py --------------------------------------------
KEY_A, KEY_B = "h2-key-alpha", "h2-key-bravo"


@dataclass
class GuardApp:
    base_url: str
    upstream: CountingUpstream
    log_dir: str
    prompts: list[str]
    models: list[str]


@pytest.fixture(scope="session")
def guard_app(serve_port, tiny_policy, tmp_path_factory):
    """The router app of test_bad_input.py and test_isolation.py (registered in tests/serving/conftest.py, so
    one deployment serves both modules): 4 OpenAI-compatible upstreams on one CountingUpstream, keys A and B."""
    from barp_ray.serving.rollout import delete_app

    root = tmp_path_factory.mktemp("h2guard")
    keys = root / "keys.txt"
    keys.write_text(f"{KEY_A}\n{KEY_B}\n")
    upstream = CountingUpstream(chunks=3)
    args = {
        "name": "barp",
        "policy": str(tiny_policy.policy_dir),
        "calibration": str(tiny_policy.calibration),
        "upstreams": openai_upstreams(tiny_policy.models, upstream),
        "router": {
            "min_replicas": 1,
            "max_replicas": 1,
            "num_cpus": 0.25,
            # the bad-input test fires its whole corpus (~150 requests) at once: queues sized for the burst, so
            # a slow replica (CI load) never turns it into Serve's own backpressure 503s
            "max_ongoing_requests": 256,
            "max_queued_requests": 256,
        },
        "batching": {"enabled": True, "max_batch_size": 8, "batch_wait_timeout_s": 0.005},
        "auth": {"enabled": True, "api_keys_env": None, "api_keys_file": str(keys)},
        "limits": {"max_prompt_chars": 4000, "max_messages": 16, "max_body_bytes": 8192},
        "decision_log": {"path": str(root / "decision-log"), "flush_interval_s": 0.5, "flush_rows": 64},
    }
    base_url = deploy("h2-guard", "/h2guard", args, serve_port)
    yield GuardApp(base_url, upstream, str(root / "decision-log"), list(tiny_policy.prompts), list(tiny_policy.models))
    delete_app("h2-guard")
    upstream.stop()
