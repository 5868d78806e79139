"""A bad-input corpus fired at a real router app together with valid traffic (real Serve, HTTP, MiniLM).

Every valid request is a 200, every bad one a 4xx whose OpenAI-style body names the field (`param`), no
request gets a 5xx, and the bad ones cost zero upstream calls (the upstream is a real HTTP server that
counts what it receives).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from h2_apps import KEY_A

CHAT, ROUTE, FEEDBACK = "/v1/chat/completions", "/v1/route", "/v1/feedback"
MSG = [{"role": "user", "content": "What is 2 + 2?"}]


def chat(**extra) -> bytes:
    return json.dumps({"model": "barp", "messages": MSG, **extra}).encode()


def raw(text: str) -> bytes:
    return text.encode()


def deep(n: int) -> bytes:
    return b'{"model": "barp", "messages": [{"role": "user", "content": "x"}], "x": ' + b"[" * n + b"]" * n + b"}"


# (name, method, path, body bytes, extra headers, expected status (None: any 4xx), expected param or prefix)
BAD = [
    (
        "surrogate-content",
        "POST",
        CHAT,
        raw('{"messages": [{"role": "user", "content": "\\ud800"}]}'),
        {},
        400,
        "messages[0].content",
    ),
    (
        "surrogate-part",
        "POST",
        CHAT,
        raw('{"messages": [{"role": "user", "content": [{"type": "text", "text": "a\\udfffb"}]}]}'),
        {},
        400,
        "messages[0].content[0].text",
    ),
    (
        "surrogate-model",
        "POST",
        CHAT,
        raw('{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}'),
        {},
        400,
        "model",
    ),
    ("surrogate-prompt-id", "POST", CHAT, chat()[:-1] + b', "prompt_id": "\\udc00"}', {}, 400, "prompt_id"),
    ("surrogate-stop", "POST", CHAT, chat()[:-1] + b', "stop": ["\\ud801"]}', {}, 400, "stop[0]"),
    ("surrogate-user", "POST", CHAT, chat()[:-1] + b', "user": "\\ud800"}', {}, 400, "user"),
    (
        "surrogate-name",
        "POST",
        CHAT,
        raw('{"messages": [{"role": "user", "name": "\\ud800", "content": "x"}]}'),
        {},
        400,
        "messages[0].name",
    ),
    ("surrogate-route", "POST", ROUTE, raw('{"prompt": "hi \\ud800"}'), {}, 400, "prompt"),
    ("temperature-nan", "POST", CHAT, chat()[:-1] + b', "temperature": NaN}', {}, 400, "temperature"),
    ("temperature-inf", "POST", CHAT, chat()[:-1] + b', "temperature": Infinity}', {}, 400, "temperature"),
    ("temperature-negative", "POST", CHAT, chat(temperature=-1), {}, 400, "temperature"),
    ("temperature-huge", "POST", CHAT, chat()[:-1] + b', "temperature": 1e400}', {}, 400, "temperature"),
    ("top-p-range", "POST", CHAT, chat(top_p=2), {}, 400, "top_p"),
    ("max-tokens-string", "POST", CHAT, chat(max_tokens="lots"), {}, 400, "max_tokens"),
    ("max-tokens-negative", "POST", CHAT, chat(max_tokens=-5), {}, 400, "max_tokens"),
    ("max-tokens-huge", "POST", CHAT, chat(max_tokens=10**30), {}, 400, "max_tokens"),
    ("penalty-type", "POST", CHAT, chat(presence_penalty="x"), {}, 400, "presence_penalty"),
    ("seed-float", "POST", CHAT, chat(seed=1e300), {}, 400, "seed"),
    ("n-zero", "POST", CHAT, chat(n=0), {}, 400, "n"),
    ("stream-type", "POST", CHAT, chat(stream="yes"), {}, 400, "stream"),
    ("logprobs-type", "POST", CHAT, chat(logprobs="yes"), {}, 400, "logprobs"),
    ("stop-type", "POST", CHAT, chat(stop=7), {}, 400, "stop"),
    ("logit-bias-range", "POST", CHAT, chat(logit_bias={"1": 1000}), {}, 400, "logit_bias.1"),
    ("messages-string", "POST", CHAT, raw('{"messages": "hi"}'), {}, 400, "messages"),
    ("messages-empty", "POST", CHAT, raw('{"messages": []}'), {}, 400, "messages"),
    (
        "role-unknown",
        "POST",
        CHAT,
        raw('{"messages": [{"role": "wizard", "content": "x"}]}'),
        {},
        400,
        "messages[0].role",
    ),
    ("role-missing", "POST", CHAT, raw('{"messages": [{"content": "x"}]}'), {}, 400, "messages[0].role"),
    (
        "content-number",
        "POST",
        CHAT,
        raw('{"messages": [{"role": "user", "content": 42}]}'),
        {},
        400,
        "messages[0].content",
    ),
    ("preference-range", "POST", CHAT, chat(preference={"cost": 1.5}), {}, 400, "preference"),
    ("preference-nan", "POST", CHAT, chat()[:-1] + b', "preference": {"quality": NaN}}', {}, 400, "preference.quality"),
    ("budget-negative", "POST", CHAT, chat(budget={"max_cost_per_query": -1}), {}, 400, "budget"),
    ("model-unknown", "POST", CHAT, json.dumps({"model": "gpt-99", "messages": MSG}).encode(), {}, 404, "model"),
    ("body-empty", "POST", CHAT, b"", {}, 400, "body"),
    ("body-array", "POST", CHAT, b"[]", {}, 400, "body"),
    ("body-broken", "POST", CHAT, b'{"messages": [', {}, 400, "body"),
    ("body-not-utf8", "POST", CHAT, b'{"messages": "\xff\xfe"}', {}, 400, "body"),
    ("body-deep", "POST", CHAT, deep(200), {}, 400, "x"),
    ("body-huge-declared", "POST", CHAT, chat(pad="x" * 20_000), {}, 413, "body"),
    ("body-huge-chunked", "POST", CHAT, None, {}, 413, "body"),  # streamed without Content-Length
    ("messages-too-many", "POST", CHAT, json.dumps({"messages": MSG * 20}).encode(), {}, 400, "messages"),
    (
        "prompt-too-long",
        "POST",
        CHAT,
        json.dumps({"messages": [{"role": "user", "content": "y" * 5000}]}).encode(),
        {},
        400,
        "messages",
    ),
    ("route-both", "POST", ROUTE, json.dumps({"prompt": "a", "messages": MSG}).encode(), {}, 400, "messages"),
    ("route-extra-field", "POST", ROUTE, json.dumps({"prompt": "a", "bogus": 1}).encode(), {}, 400, "bogus"),
    (
        "header-preference",
        "POST",
        ROUTE,
        json.dumps({"prompt": "a"}).encode(),
        {"x-barp-preference": "cost=abc"},
        400,
        "x-barp-preference",
    ),
    (
        "header-budget",
        "POST",
        ROUTE,
        json.dumps({"prompt": "a"}).encode(),
        {"x-barp-budget": "max_cost=1"},
        400,
        "x-barp-budget",
    ),
    ("feedback-id", "POST", FEEDBACK, json.dumps({"decision_id": "xyz", "score": 1}).encode(), {}, 400, "decision_id"),
    ("feedback-nan", "POST", FEEDBACK, raw('{"decision_id": "' + "a" * 32 + '", "score": NaN}'), {}, 400, "score"),
    ("feedback-range", "POST", FEEDBACK, json.dumps({"decision_id": "a" * 32, "score": 2}).encode(), {}, 400, "score"),
    (
        "feedback-unknown",
        "POST",
        FEEDBACK,
        json.dumps({"decision_id": "0" * 32, "score": 1}).encode(),
        {},
        404,
        "decision_id",
    ),
    ("decision-pattern", "GET", "/v1/decisions/not-hex", None, {}, 400, "decision_id"),
    ("decision-unknown", "GET", "/v1/decisions/" + "0" * 32, None, {}, 404, "decision_id"),
]


def _valid(prompts: list[str]) -> list[tuple[str, str, bytes]]:
    out = []
    for i in range(60):
        prompt = prompts[i % len(prompts)][:1000]  # under the app's 8 KB body limit in UTF-8
        kind = ("route", "chat", "stream")[i % 3]
        if kind == "route":
            out.append((kind, ROUTE, json.dumps({"prompt": prompt}, ensure_ascii=False).encode()))
        else:
            body = {
                "model": "barp",
                "messages": [{"role": "user", "content": prompt}],
                "stream": kind == "stream",
                "temperature": 0.5,
            }
            out.append((kind, CHAT, json.dumps(body, ensure_ascii=False).encode()))
    return out


async def _fire(base_url: str, valid, bad):
    import httpx

    async def chunks():
        for _ in range(40):
            yield b"x" * 1000

    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=120
    ) as client:

        async def send_bad(case):
            _, method, path, body, headers, _, _ = case
            if method == "GET":
                return await client.get(path, headers=headers)
            content = chunks() if body is None else body
            return await client.request(
                method, path, content=content, headers={"Content-Type": "application/json", **headers}
            )

        async def send_valid(item):
            kind, path, body = item
            if kind != "stream":
                r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
                return r.status_code, r.text
            async with client.stream("POST", path, content=body, headers={"Content-Type": "application/json"}) as r:
                text = (await r.aread()).decode()
                return r.status_code, text

        tasks = [send_valid(v) for v in valid] + [send_bad(b) for b in bad]
        results = await asyncio.gather(*tasks, return_exceptions=True)
    return results[: len(valid)], results[len(valid) :]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_bad_input_corpus_with_valid_traffic(guard_app):
    assert len(BAD) >= 40
    valid = _valid(guard_app.prompts)
    assert len(valid) >= 50
    before = guard_app.upstream.count()
    valid_out, bad_out = asyncio.run(_fire(guard_app.base_url, valid, BAD))
    upstream_calls = guard_app.upstream.count() - before

    for (kind, _, _), out in zip(valid, valid_out, strict=True):
        assert not isinstance(out, BaseException), (kind, out)
        status, text = out
        assert status == 200, (kind, status, text[:300])
        if kind == "stream":
            assert "data: [DONE]" in text and 'data: {"error"' not in text, text[-300:]
    problems = []
    for case, out in zip(BAD, bad_out, strict=True):
        name, _, _, _, _, status, param = case
        if isinstance(out, BaseException):
            problems.append((name, repr(out)))
            continue
        try:
            error = out.json()["error"]
        except Exception:  # noqa: BLE001
            problems.append((name, out.status_code, out.text[:200]))
            continue
        ok_status = out.status_code == status if status else 400 <= out.status_code < 500
        ok_param = bool(error.get("param")) and (error["param"] == param or error["param"].startswith(param))
        if not (ok_status and ok_param):
            problems.append((name, out.status_code, error))
    assert not problems, problems
    n_chat = sum(1 for kind, _, _ in valid if kind != "route")
    assert upstream_calls == n_chat, f"{upstream_calls} upstream calls for {n_chat} valid chat requests"
    print(
        f"\nbad-input corpus: {len(BAD)} bad + {len(valid)} valid concurrently; {n_chat} upstream calls, "
        f"0 for the bad ones; 0 5xx"
    )
