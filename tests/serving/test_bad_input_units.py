"""Request guards without Ray: every malformed body is a 4xx naming the field (the Serve corpus test is
test_bad_input.py); rate limits and admission answer 429 / 503."""

from __future__ import annotations

import asyncio

import pytest

from barp_ray.serving.guards import Admission, RateLimiter, check_params, parse_json, read_body
from barp_ray.serving.schemas import ApiError


def _error(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args)
    return info.value


@pytest.mark.parametrize(
    "raw, param, code",
    [
        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content", "invalid_unicode"),
        (b'{"prompt": "ok \\udfff end"}', "prompt", "invalid_unicode"),
        (b'{"temperature": NaN}', "temperature", "invalid_value"),
        (b'{"preference": {"cost": Infinity}}', "preference.cost", "invalid_value"),
        (b'{"x": -Infinity}', "x", "invalid_value"),
        (b'{"max_tokens": 1e400}', "max_tokens", "invalid_value"),
        (b'{"seed": 99999999999999999999999}', "seed", "invalid_value"),
        (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "a" + "[0]" * 32, "invalid_json"),
        (b"", "body", "invalid_json"),
        (b"   ", "body", "invalid_json"),
        (b"[1, 2]", "body", "invalid_json"),
        (b'"text"', "body", "invalid_json"),
        (b"{'single': 'quotes'}", "body", "invalid_json"),
        (b'{"a": "\xff\xfe"}', "body", "invalid_unicode"),
        (b'{"\\ud800": 1}', "<key>", "invalid_unicode"),
    ],
)
def test_parse_json_names_the_field(raw, param, code):
    err = _error(parse_json, raw)
    assert err.status == 400 and err.param == param and err.code == code, err.body()


def test_parse_json_accepts_good_bodies():
    assert parse_json(b'{"messages": [{"role": "user", "content": "caf\\u00e9 \\ud83d\\ude00"}], "seed": 7}')


@pytest.mark.parametrize(
    "body, param",
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"max_tokens": "lots"}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"logit_bias": {"42": 500}}, "logit_bias.42"),
        ({"tools": {"a": 1}}, "tools"),
        ({"user": 3}, "user"),
        ({"top_logprobs": 50}, "top_logprobs"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_check_params_names_the_parameter(body, param):
    err = _error(check_params, body)
    assert err.status == 400 and err.param == param, err.body()


def test_check_params_accepts_valid_values():
    check_params(
        {
            "temperature": 0,
            "top_p": 1,
            "max_tokens": 16,
            "stop": ["\n"],
            "seed": -3,
            "logprobs": True,
            "top_logprobs": 2,
            "logit_bias": {"1": -100},
            "tool_choice": "auto",
            "n": 1,
        }
    )


class _Request:
    def __init__(self, chunks: list[bytes], content_length: str | None) -> None:
        self.headers = {} if content_length is None else {"content-length": content_length}
        self.chunks = chunks
        self.read = 0

    async def stream(self):
        for c in self.chunks:
            self.read += 1
            yield c


def test_read_body_stops_at_the_limit_with_and_without_content_length():
    big = _Request([b"x" * 1000] * 100, None)  # chunked: no Content-Length
    with pytest.raises(ApiError) as info:
        asyncio.run(read_body(big, 5000))
    assert info.value.status == 413 and big.read == 6  # stopped after the chunk that passed the limit
    lying = _Request([b"x" * 1000] * 100, "10")  # Content-Length says small, the body is big
    with pytest.raises(ApiError):
        asyncio.run(read_body(lying, 5000))
    declared = _Request([b"{}"], "999999")
    with pytest.raises(ApiError) as info:
        asyncio.run(read_body(declared, 5000))
    assert info.value.status == 413 and declared.read == 0  # refused before reading
    assert asyncio.run(read_body(_Request([b'{"a":', b" 1}"], "8"), 5000)) == b'{"a": 1}'


def test_rate_limiter_is_per_key_with_retry_after():
    limiter = RateLimiter(requests_per_s=1.0, burst=2, per_key={"vip": 100.0})
    limiter.check("a", now=0.0)
    limiter.check("a", now=0.0)
    with pytest.raises(ApiError) as info:
        limiter.check("a", now=0.1)
    assert info.value.status == 429 and info.value.headers["Retry-After"] == "1"
    limiter.check("b", now=0.1)  # another key has its own bucket
    limiter.check("a", now=1.2)  # refilled
    for i in range(50):
        limiter.check("vip", now=i * 0.01)


def test_admission_queues_then_answers_503():
    async def scenario():
        admission = Admission(ongoing=2, queued=1)
        gate = asyncio.Event()
        outcomes = []

        async def request():
            try:
                async with admission:
                    await gate.wait()
                outcomes.append("ok")
            except ApiError as exc:
                outcomes.append(exc.status)

        tasks = [asyncio.create_task(request()) for _ in range(5)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(*tasks)
        return outcomes

    outcomes = asyncio.run(scenario())
    assert sorted(outcomes, key=str) == sorted(["ok", "ok", "ok", 503, 503], key=str)


def test_a_failing_prompt_fails_alone_in_a_merged_forward():
    """A merged forward pass that raises is re-run caller by caller: only the faulty caller gets the error.

    (The ForwardCoalescer is where isolation lives: `PolicyForward.forward`, the `@serve.batch` method, makes
    each request of a batch its own caller here.)"""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from barp_ray.serving.batching import ForwardCoalescer

    gate = threading.Event()
    passes: list[list[str]] = []

    def forward(texts, w_costs):
        passes.append(list(texts))
        if len(passes) == 1:
            gate.wait(5)  # the first pass is slow: the others queue and are merged behind it
        if any("poison" in t for t in texts):
            raise UnicodeEncodeError("utf-8", "poison", 0, 1, "surrogates not allowed")
        return np.array([[len(t), w] for t, w in zip(texts, w_costs, strict=True)], dtype=float)

    isolated: list[int] = []
    executor = ThreadPoolExecutor(1)
    coalescer = ForwardCoalescer(forward, executor, max_items=16, on_isolate=lambda: isolated.append(1))

    async def scenario():
        first = asyncio.create_task(coalescer.run(["a"], [0.5]))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(coalescer.run([t], [0.5])) for t in ("bb", "poison", "dddd", "eeeee")]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    out = asyncio.run(asyncio.wait_for(scenario(), 10))
    executor.shutdown()
    assert isinstance(out[2], UnicodeEncodeError)
    assert [o[0][0][0] for i, o in enumerate(out) if i != 2] == [1, 2, 4, 5]
    assert passes[1] == ["bb", "poison", "dddd", "eeeee"] and isolated == [1]  # merged, failed, re-run one by one
