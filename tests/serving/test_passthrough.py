"""The router as a faithful OpenAI gateway: real Serve app, real HTTP, the real openai client, a real upstream.

The upstream is tests/serving/openai_upstream.py (FastAPI + uvicorn on a free loopback port, counting its
calls); the router app (`barp-pt` on /pt) binds the tiny policy's four models to it as `openai` upstreams:

    mistral-7b  -> healthy-mistral   (deny_params: [metadata])
    Yi-34B      -> strict-yi         (temperature > 1 is a 400 there)
    gpt-3.5     -> dead-gpt35        (503 after 0.5 s; no SDK retries; the breaker opens after 2 failures)
    gpt-4       -> healthy-gpt4

Every test forces its model (`model: <id>`), so the policy's choice never sends traffic elsewhere.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from openai_upstream import FINGERPRINT, TOOL_ARGS, start_upstream
from serve_helpers import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(420)]

APP, PREFIX = "barp-pt", "/pt"
UPSTREAM_NAMES = {
    "mistralai/mistral-7b-chat": "healthy-mistral",
    "zero-one-ai/Yi-34B-Chat": "strict-yi",
    "gpt-3.5-turbo-1106": "dead-gpt35",
    "gpt-4-1106-preview": "healthy-gpt4",
}
MISTRAL, YI, GPT35, GPT4 = UPSTREAM_NAMES
CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather", "parameters": CITY}}]
BREAKER_FAILURES = 2
API_KEY = "pt-test-key"


@pytest.fixture(scope="module")
def upstream():
    up = start_upstream()
    up.dead_delay_s = 0.5
    yield up
    up.stop()


@pytest.fixture(scope="module")
def pt_app(serve_port, tiny_policy, upstream, tmp_path_factory):
    """The router app with OpenAI upstreams, started once for this module (Serve start costs ~25 s here)."""
    from ray import serve

    from barp_ray.serving.app import build_app

    root = tmp_path_factory.mktemp("pt")
    keys_file = root / "keys.txt"
    keys_file.write_text(f"{API_KEY}\n")
    upstreams = []
    for model, name in UPSTREAM_NAMES.items():
        openai = {
            "base_url": upstream.base_url,
            "model_name": name,
            "api_key_env": None,
            "timeout_s": 20,
            "max_retries": 0 if name.startswith("dead-") else 2,
            "usd_per_1k_input": 0.001,
            "usd_per_1k_output": 0.002,
        }
        if name == "healthy-mistral":
            openai["deny_params"] = ["metadata"]
        upstreams.append({"model": model, "kind": "openai", "openai": openai})
    cfg = {
        "name": "barp",
        "policy": str(tiny_policy.policy_dir),
        "upstreams": upstreams,
        "router": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.25, "max_ongoing_requests": 64},
        "batching": {"enabled": True, "max_batch_size": 8, "batch_wait_timeout_s": 0.005},
        "fallback": {"max_fallbacks": 2, "breaker_failures": BREAKER_FAILURES, "breaker_cooldown_s": 600},
        "auth": {"enabled": True, "api_keys_env": None, "api_keys_file": str(keys_file)},
        "decision_log": {"path": str(root / "log"), "flush_interval_s": 0.5, "flush_rows": 64},
    }
    serve.run(build_app(cfg), name=APP, route_prefix=PREFIX, blocking=False)
    base = f"http://127.0.0.1:{serve_port}{PREFIX}"
    wait_until(lambda: httpx.get(f"{base}/healthz", timeout=5).status_code == 200, 120, what="/pt/healthz")
    yield {"base": base, "key": API_KEY, "log": root / "log"}
    serve.delete(APP)


@pytest.fixture()
def oai(pt_app):
    from openai import OpenAI

    with OpenAI(base_url=f"{pt_app['base']}/v1", api_key=pt_app["key"], timeout=60, max_retries=0) as client:
        yield client


def _marker() -> str:
    return f"m-{uuid.uuid4().hex[:10]}"


def _msg(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---- responses pass through ---------------------------------------------------------------------------
def test_tool_calls_logprobs_fingerprint_and_usage_details(oai, upstream):
    marker = _marker()
    resp = oai.chat.completions.create(
        model=MISTRAL, messages=_msg(f"weather in Paris? {marker}"), tools=TOOLS, logprobs=True, top_logprobs=0
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id == "call_0" and call.function.name == "get_weather" and call.function.arguments == TOOL_ARGS
    assert [t.token for t in choice.logprobs.content] == ["Hello", " from", " ", "healthy-mistral"]
    assert resp.system_fingerprint == FINGERPRINT and resp.model == MISTRAL  # `model`: the router's model id
    assert resp.usage.completion_tokens_details.reasoning_tokens == 2
    assert resp.usage.prompt_tokens_details.cached_tokens == 0
    assert resp.model_extra["barp"]["served_model"] == MISTRAL and resp.model_extra["barp"]["cost_usd"] > 0
    assert resp.service_tier == "default"  # fields the router does not know pass too
    sent = upstream.calls_for(marker=marker)
    assert len(sent) == 1 and sent[0]["body"]["tools"] == TOOLS and sent[0]["body"]["logprobs"] is True


def test_refusal_and_n_choices(oai):
    refused = oai.chat.completions.create(model=GPT4, messages=_msg("please refuse this"))
    assert refused.choices[0].message.refusal == "I can't help with that."
    assert refused.choices[0].message.content is None
    two = oai.chat.completions.create(model=GPT4, messages=_msg("two answers"), n=2)
    assert [c.index for c in two.choices] == [0, 1]


def test_streamed_tool_call_deltas_and_include_usage(oai):
    stream = oai.chat.completions.create(
        model=MISTRAL, messages=_msg("weather?"), tools=TOOLS, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    deltas = [tc for c in chunks for ch in c.choices for tc in (ch.delta.tool_calls or [])]
    assert len(deltas) > 3  # the call really came in pieces
    assert deltas[0].function.name == "get_weather" and deltas[0].id == "call_s0"
    assert "".join(d.function.arguments or "" for d in deltas) == TOOL_ARGS
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["tool_calls"]
    assert finals[-1].model_extra["barp"]["cost_usd"] > 0 and chunks[0].model_extra["barp"]["model"] == MISTRAL
    # include_usage: "usage": null on every chunk, then one final usage chunk without choices
    assert all(c.usage is None for c in chunks[:-1]) and all("usage" in c.model_fields_set for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens_details.reasoning_tokens == 2
    assert all(c.model == MISTRAL and c.system_fingerprint == FINGERPRINT for c in chunks)


def test_stream_without_include_usage_has_no_usage_field(pt_app):
    body = {"model": GPT4, "messages": _msg("hello"), "stream": True, "logprobs": True}
    with httpx.stream(
        "POST",
        f"{pt_app['base']}/v1/chat/completions",
        json=body,
        timeout=60,
        headers={"Authorization": f"Bearer {pt_app['key']}"},
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert lines[-1] == "data: [DONE]" and all("usage" not in e for e in events)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "Hello from healthy-gpt4"
    assert [
        lp["token"]
        for e in events
        if e["choices"]
        for lp in (e["choices"][0].get("logprobs") or {}).get("content") or []
    ] == ["Hello", " from", " ", "healthy-gpt4"]


def test_unknown_fields_are_forwarded_except_the_deny_list(oai, upstream):
    marker = _marker()
    oai.chat.completions.create(
        model=MISTRAL,
        messages=_msg(marker),
        temperature=0.3,
        parallel_tool_calls=False,
        extra_body={
            "top_k": 5,
            "reasoning_effort": "low",
            "metadata": {"a": "b"},
            "preference": {"cost": 1.0},
            "prompt_id": "p-1",
        },
    )
    body = upstream.calls_for(marker=marker)[0]["body"]
    assert body["top_k"] == 5 and body["reasoning_effort"] == "low" and body["temperature"] == 0.3
    assert body["parallel_tool_calls"] is False and body["model"] == "healthy-mistral"
    assert "metadata" not in body  # deny_params of this upstream
    assert not {"preference", "prompt_id", "budget"} & set(body)  # the router's own fields stay here


def test_get_model_by_id(oai):
    assert oai.models.retrieve(MISTRAL).id == MISTRAL  # ids with '/' work
    assert oai.models.retrieve("barp").owned_by == "barp"
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        oai.models.retrieve("no-such-model")


# ---- upstream errors --------------------------------------------------------------------------------------
def test_upstream_400_goes_back_with_one_call_and_no_fallback(oai, upstream, pt_app):
    from openai import BadRequestError

    marker = _marker()
    with pytest.raises(BadRequestError) as info:  # strict-yi caps temperature at 1; the router allows <= 2
        oai.chat.completions.create(model=YI, messages=_msg(marker), temperature=1.5)
    err = info.value
    assert err.status_code == 400 and "maximum of 1" in err.message
    body = err.body if "param" in (err.body or {}) else (err.body or {}).get("error", {})
    assert body["param"] == "temperature" and body["type"] == "invalid_request_error"
    calls = upstream.calls_for(marker=marker)
    assert [c["model"] for c in calls] == ["strict-yi"] and calls[0]["status"] == 400  # one paid call, no fallback
    assert err.response.headers["x-barp-model"] == YI
    # temperature > 2 is refused by the router itself: no upstream call at all
    marker2 = _marker()
    with pytest.raises(BadRequestError):
        oai.chat.completions.create(model=YI, messages=_msg(marker2), temperature=2.5)
    assert upstream.calls_for(marker=marker2) == []


def test_error_bodies_never_reveal_the_upstream_address_or_key(pt_app, upstream):
    from barp_ray.serving.decision_log import read_decision_log

    r = httpx.post(
        f"{pt_app['base']}/v1/chat/completions",
        timeout=60,
        headers={"Authorization": f"Bearer {pt_app['key']}"},
        json={"model": GPT4, "messages": _msg("echo-auth please")},
    )
    assert r.status_code == 400, r.text
    port = upstream.base_url.split(":")[-1].split("/")[0]
    assert f":{port}" not in r.text and "127.0.0.1" not in r.text and "<redacted>" in r.json()["error"]["message"]
    decision = r.headers["x-barp-decision-id"]

    def logged():
        frame = read_decision_log(pt_app["log"], decision)
        return frame if len(frame) else None

    row = wait_until(logged, 30, what="the rejected decision in the log").iloc[0]
    assert row["status"] == "client_error" and f":{port}" not in row["attempts"] and "127.0.0.1" not in row["attempts"]


def test_retry_after_is_honoured(oai, upstream):
    marker = _marker()
    upstream.set_rate_limit(marker, 1.5)
    resp = oai.chat.completions.create(model=GPT4, messages=_msg(marker))
    calls = upstream.calls_for(marker=marker)
    assert [c["status"] for c in calls] == [429, 200]  # the SDK retried the same model ...
    gap = calls[1]["t"] - calls[0]["t"]
    print(f"retry after {gap:.3f}s (Retry-After: 1.5)")
    assert gap >= 1.5 * 0.98  # ... after the Retry-After delay (a lower bound, not a latency target)
    assert resp.model == GPT4 and resp.model_extra["barp"]["fallback"]["count"] == 0


def test_a_dead_upstream_is_skipped_once_its_breaker_opens(oai, upstream, pt_app):
    healthz = f"{pt_app['base']}/healthz"
    before = len(upstream.calls_for(model="dead-gpt35"))
    assert before == 0 and httpx.get(healthz, timeout=10).json()["upstream_circuits"][GPT35] == "closed"
    times, barps = [], []
    for i in range(6):
        started = time.perf_counter()
        resp = oai.chat.completions.create(model=GPT35, messages=_msg(f"dead model request {i}"))
        times.append(time.perf_counter() - started)
        barps.append(resp.model_extra["barp"])
        assert resp.model != GPT35 and resp.model_extra["barp"]["served_model"] == resp.model  # fell back
    # the breaker opened after BREAKER_FAILURES failures: later requests never called the dead upstream
    assert len(upstream.calls_for(model="dead-gpt35")) == BREAKER_FAILURES
    reasons = [b["fallback"]["attempts"][0]["reason"] for b in barps]
    assert reasons == ["error"] * BREAKER_FAILURES + ["circuit_open"] * (6 - BREAKER_FAILURES)
    assert barps[0]["fallback"]["attempts"][0]["error"].startswith("HTTP 503")
    assert httpx.get(healthz, timeout=10).json()["upstream_circuits"][GPT35] == "open"
    before_open = sum(times[:BREAKER_FAILURES]) / BREAKER_FAILURES
    after_open = sum(times[BREAKER_FAILURES:]) / (6 - BREAKER_FAILURES)
    print(
        f"time per request: {before_open * 1000:.0f} ms while the dead upstream was called (0.5 s to its 503), "
        f"{after_open * 1000:.0f} ms once its breaker was open"
    )


# ---- config -----------------------------------------------------------------------------------------------
def test_router_timeout_shorter_than_the_backend_is_refused():
    from pydantic import ValidationError

    from barp_ray.serving.config_sections import UpstreamConfig

    openai = {"base_url": "http://127.0.0.1:9/v1", "timeout_s": 60, "max_retries": 2}
    with pytest.raises(ValidationError, match="timeout_s"):
        UpstreamConfig(model="m", kind="openai", timeout_s=90, openai=openai)
    assert UpstreamConfig(model="m", kind="openai", timeout_s=180, openai=openai).attempt_timeout_s() == 180
    assert UpstreamConfig(model="m", kind="openai", openai=openai).attempt_timeout_s() == 60 * 3 + 8 * 2
    assert UpstreamConfig(model="m").attempt_timeout_s() == 30
