"""Fast checks of the gateway pieces without Ray: circuit breaker, stream relay, response passthrough, errors."""

from __future__ import annotations

import asyncio
import json

import pytest

from barp_ray.serving.fallback import CircuitBreaker, error_text
from barp_ray.serving.openai_format import client_chunk, completion, relay_stream
from barp_ray.serving.upstream_protocol import UpstreamError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_circuit_breaker_opens_half_opens_and_closes():
    clock, states = Clock(), []
    b = CircuitBreaker(3, 10.0, on_state=lambda m, s: states.append((m, s)), clock=clock)
    for _ in range(2):
        b.record("m", False)
    assert b.allow("m") and b.state("m") == "closed"
    b.record("m", True)  # a success resets the count
    for _ in range(3):
        b.record("m", False)
    assert not b.allow("m") and b.state("m") == "open" and b.retry_after_s(["m"]) == 10.0
    clock.now += 10.0
    assert b.allow("m") and b.state("m") == "half_open"
    b.record("m", False)  # one failure when half-open opens it again
    assert not b.allow("m")
    clock.now += 10.0
    b.record("m", True)
    assert b.allow("m") and b.state("m") == "closed"
    assert states == [("m", 1), ("m", 2), ("m", 1), ("m", 0)]
    assert b.allow("other") and CircuitBreaker(0, 1.0).allow("m")  # 0 failures: no breaker


def test_upstream_error_classification_and_pickling():
    import pickle

    assert not UpstreamError("bad", status=400).retryable
    assert all(UpstreamError("x", status=s).retryable for s in (408, 429, 500, 503))
    assert UpstreamError("connection refused").retryable  # no HTTP answer
    err = pickle.loads(pickle.dumps(UpstreamError("bad", status=422, param="tools", code="c")))
    assert (err.status, err.param, err.code, err.retryable) == (422, "tools", "c", False)
    assert error_text(err.to_dict()) == "HTTP 422: bad"


def test_completion_passes_the_upstream_object_through():
    upstream = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": "provider-name",
        "system_fingerprint": "fp",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                "finish_reason": "tool_calls",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 1,
            "completion_tokens": 2,
            "total_tokens": 3,
            "completion_tokens_details": {"reasoning_tokens": 1},
        },
        "provider_field": 7,
    }
    out = completion({"completion": upstream}, "router-model-id", {"decision_id": "d"}, "chatcmpl-fallback")
    assert out["model"] == "router-model-id" and out["barp"] == {"decision_id": "d"}
    assert {k: v for k, v in out.items() if k not in ("model", "barp")} == {
        k: v for k, v in upstream.items() if k != "model"
    }


def test_client_chunk_usage_semantics():
    chunk = {"id": "a", "choices": [{"index": 0, "delta": {"content": "x"}}], "usage": None, "model": "p"}
    assert client_chunk(chunk, "m", include_usage=True)["usage"] is None
    assert "usage" not in client_chunk(chunk, "m", include_usage=False)
    assert client_chunk({"id": "a", "choices": [], "usage": {"prompt_tokens": 1}}, "m", True) is None


class Gen:
    """The shape of a Serve DeploymentResponseGenerator: async iteration + cancel()."""

    def __init__(self, items, delay_s: float = 0.0) -> None:
        self.items, self.delay_s, self.cancelled = list(items), delay_s, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if not self.items:
            raise StopAsyncIteration
        return self.items.pop(0)

    def cancel(self) -> None:
        self.cancelled = True


def _chunk(delta: dict, finish: str | None = None) -> dict:
    return {
        "chunk": {
            "id": "u",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "provider",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            "usage": None,
        }
    }


async def _relay(items, include_usage: bool, deadline_s: float = 60.0, chunk_timeout: float = 10.0, delay_s=0.0):
    ended = []
    gen = Gen(items[1:], delay_s)
    events = [
        e
        async for e in relay_stream(
            gen,
            items[0],
            chunk_timeout,
            deadline_s,
            "m",
            include_usage,
            lambda cost: {"cost": cost},
            lambda *a: ended.append(a),
        )
    ]
    return events, ended, gen


def test_relay_stream_holds_the_finish_chunk_for_the_final_barp_and_adds_usage():
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    items = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "hi"}),
        _chunk({}, "stop"),
        {"chunk": {"id": "u", "object": "chat.completion.chunk", "created": 1, "choices": [], "usage": usage}},
        {"done": True, "usage": usage, "cost_usd": 0.5},
    ]
    events, ended, _ = asyncio.run(_relay(items, include_usage=True))
    assert events[-1] == "data: [DONE]\n\n"
    data = [json.loads(e[6:]) for e in events[:-1]]
    assert data[0]["barp"] == {"cost": None} and all(d["model"] == "m" for d in data)
    assert data[2]["choices"][0]["finish_reason"] == "stop" and data[2]["barp"] == {"cost": 0.5}
    assert [d["usage"] for d in data] == [None, None, None, usage] and data[3]["choices"] == []
    assert ended == [("ok", items[-1], None)]
    events, _, _ = asyncio.run(_relay(items, include_usage=False))
    assert all("usage" not in json.loads(e[6:]) for e in events[:-1]) and len(events) == 4


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("error", "boom"), ("deadline", "stream deadline of 0.2s exceeded"), ("silence", "upstream stopped sending")],
)
def test_relay_stream_ends_with_an_error_event(kind, expected):
    first = _chunk({"content": "a"})
    if kind == "error":
        items, kw = [first, {"error": {"message": "boom", "status": None}}], {}
    elif kind == "deadline":
        items, kw = [first] + [_chunk({"content": "b"})] * 50, {"deadline_s": 0.2, "delay_s": 0.05}
    else:
        items, kw = [first, _chunk({"content": "b"})], {"chunk_timeout": 0.1, "delay_s": 1.0}
    events, ended, gen = asyncio.run(_relay(items, include_usage=False, **kw))
    err = json.loads(events[-1][6:])["error"]
    assert err["code"] == "stream_error" and expected in err["message"]
    assert ended[0][0] == "stream_error" and expected in ended[0][2] and gen.cancelled


def test_upstream_errors_keep_only_the_message_with_address_and_key_redacted(monkeypatch):
    import httpx
    import openai

    from barp_ray.serving.openai_backend import OpenAIBackend

    monkeypatch.setenv("BARP_UNIT_KEY", "sk-very-secret")
    base = "http://10.1.2.3:8443/v1"
    backend = OpenAIBackend("m", {"base_url": base, "api_key_env": "BARP_UNIT_KEY"})
    body = {
        "error": {
            "message": f"key sk-very-secret is not valid for {base}/chat/completions",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    response = httpx.Response(401, json=body, request=httpx.Request("POST", f"{base}/chat/completions"))
    err = backend._error(openai.AuthenticationError("raw", response=response, body=body["error"]))
    assert err.status == 401 and not err.retryable and err.code == "invalid_api_key"
    assert err.message == "key <redacted> is not valid for <redacted>/chat/completions"
    timeout = backend._error(openai.APITimeoutError(request=httpx.Request("POST", f"{base}/chat/completions")))
    assert timeout.retryable and base not in timeout.message and "10.1.2.3" not in str(timeout.to_dict())
    other = backend._error(RuntimeError(f"cannot reach {base} with sk-very-secret"))
    assert other.retryable and other.message == "m: RuntimeError"
