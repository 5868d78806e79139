"""The router app for real: Ray Serve, HTTP on 127.0.0.1, MiniLM, a trained policy, replay upstreams, parquet.

Order matters only for the last test, which kills the router replica.
"""

from __future__ import annotations

import asyncio
import functools
import json

import httpx
import pytest
from serve_helpers import free_port, router_replica_actor_names, wait_until

from barp_ray.serving.decision_log import read_decision_log, read_policies

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(420)]

CHEAP = {"quality": 0.0, "cost": 1.0}
QUALITY = {"quality": 1.0, "cost": 0.0}


def _messages(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@functools.lru_cache(maxsize=8)
def _replay(model: str):
    from barp_ray.serving.upstreams import ReplayBackend

    return ReplayBackend(model, {"on_miss": "error"})


def _replay_answer(model: str, prompt: str) -> str:
    return _replay(model).lookup(_messages(prompt))[0]


# ---- health, models, auth ---------------------------------------------------------------------------------
def test_healthz_and_models(serve_app, client):
    health = httpx.get(f"{serve_app.base_url}/healthz", timeout=10).json()  # no key needed
    assert health["status"] == "ok" and health["models"] == len(serve_app.policy.models)
    models = client.get("/v1/models").json()
    ids = [m["id"] for m in models["data"]]
    assert ids[0] == "barp" and set(ids[1:]) == set(serve_app.policy.models)


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/v1/chat/completions", {}),
        ("POST", "/v1/chat/completions", {"Authorization": "Bearer wrong-key"}),
        ("POST", "/v1/chat/completions", {"Authorization": "Basic dGVzdC1rZXktMTIzOg=="}),
        ("POST", "/v1/route", {}),
        ("POST", "/v1/feedback", {}),
        ("GET", "/v1/models", {}),
    ],
)
def test_401_without_a_valid_key(serve_app, method, path, headers):
    body = {"messages": _messages("hi")} if method == "POST" else None
    r = httpx.request(method, f"{serve_app.base_url}{path}", json=body, headers=headers, timeout=30)
    assert r.status_code == 401, r.text
    assert r.headers.get("www-authenticate") == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"


def test_second_key_from_the_file_works(serve_app):
    r = httpx.get(f"{serve_app.base_url}/v1/models", headers={"Authorization": "Bearer second-key"}, timeout=30)
    assert r.status_code == 200


# ---- chat completions -------------------------------------------------------------------------------------
def test_openai_client_chat_completion(serve_app):
    from openai import OpenAI

    tp = serve_app.policy
    client = OpenAI(base_url=f"{serve_app.base_url}/v1", api_key=serve_app.api_key, timeout=60, max_retries=0)
    resp = client.chat.completions.create(
        model="barp", messages=_messages(tp.probe), extra_body={"preference": CHEAP, "prompt_id": "probe-1"}
    )
    assert resp.model == tp.cheap_choice
    assert resp.choices[0].message.content == _replay_answer(tp.cheap_choice, tp.probe)
    assert resp.choices[0].finish_reason == "stop"
    barp = resp.model_extra["barp"]
    assert barp["model"] == barp["served_model"] == tp.cheap_choice
    assert barp["w_cost"] == 1.0 and barp["preference_source"] == "body"
    assert set(barp["probabilities"]) == set(tp.models)
    assert abs(sum(barp["probabilities"].values()) - 1.0) < 1e-5
    assert barp["propensity"] == 1.0 and barp["exploration"] == "greedy"
    assert barp["probability"] == max(barp["probabilities"].values())
    assert barp["expected_cost_usd"] > 0 and barp["cost_usd"] > 0
    assert barp["fallback"]["count"] == 0
    assert resp.usage.total_tokens > 0


def _long_answer_prompt(serve_app, client) -> tuple[str, str]:
    """A prompt whose cheap-preference model has a long recorded answer (so that it streams in chunks)."""
    for prompt in serve_app.policy.prompts:
        model = client.post("/v1/route", json={"prompt": prompt, "preference": CHEAP}).json()["model"]
        if model != serve_app.failing_model and len(_replay_answer(model, prompt)) >= 64:
            return prompt, model
    pytest.fail("no test prompt with a long recorded answer")


def test_openai_client_streaming(serve_app, client):
    from openai import OpenAI

    prompt, model = _long_answer_prompt(serve_app, client)
    oai = OpenAI(base_url=f"{serve_app.base_url}/v1", api_key=serve_app.api_key, timeout=60, max_retries=0)
    stream = oai.chat.completions.create(
        model="barp",
        messages=_messages(prompt),
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"preference": CHEAP},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == _replay_answer(model, prompt)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 4  # really streamed
    assert chunks[0].model_extra["barp"]["model"] == model
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals and finals[-1].choices[0].finish_reason == "stop"
    assert finals[-1].model_extra["barp"]["cost_usd"] > 0
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_raw_sse_format(serve_app, client):
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={"messages": _messages(serve_app.policy.probe), "stream": True, "preference": CHEAP},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-barp-model"] == serve_app.policy.cheap_choice
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


# ---- routing follows the preference -----------------------------------------------------------------------
def test_cheap_preference_picks_a_cheaper_model(serve_app, client):
    tp = serve_app.policy
    quality = client.post("/v1/route", json={"prompt": tp.probe, "preference": QUALITY}).json()
    cheap = client.post("/v1/route", json={"prompt": tp.probe, "preference": CHEAP}).json()
    assert quality["model"] == tp.quality_choice and cheap["model"] == tp.cheap_choice
    assert tp.mean_cost[cheap["model"]] < tp.mean_cost[quality["model"]]
    assert cheap["expected_cost_usd"] < quality["expected_cost_usd"]
    # the same preference given as a header, as only one weight, and as a bare number
    for headers in ({"x-barp-preference": "quality=0,cost=1"}, {"x-barp-preference": "1.0"}):
        r = client.post("/v1/route", json={"prompt": tp.probe}, headers=headers).json()
        assert r["model"] == tp.cheap_choice and r["preference_source"] == "header"
    one_weight = client.post("/v1/route", json={"prompt": tp.probe, "preference": {"cost": 1}}).json()
    assert one_weight["model"] == tp.cheap_choice
    # the chat answer costs less with the cheap preference than the quality one served
    chat = client.post("/v1/chat/completions", json={"messages": _messages(tp.probe), "preference": CHEAP}).json()
    assert chat["model"] == tp.cheap_choice
    assert chat["barp"]["cost_usd"] < tp.mean_cost[tp.quality_choice]


def test_budget_instead_of_a_preference(serve_app, client):
    tp = serve_app.policy
    tight = client.post("/v1/route", json={"prompt": tp.probe, "budget": {"max_cost_per_query": 0.0}}).json()
    assert tight["preference_source"] == "budget" and tight["w_cost"] > 0.5
    assert tight["budget"] == {"max_cost_per_query": 0.0}
    loose = client.post("/v1/route", json={"prompt": tp.probe}, headers={"x-barp-budget": "1.0"}).json()
    assert loose["w_cost"] <= tight["w_cost"]


def test_forced_model(serve_app, client):
    tp = serve_app.policy
    forced = tp.cheap_choice
    r = client.post(
        "/v1/chat/completions", json={"model": forced, "messages": _messages(tp.probe), "preference": QUALITY}
    ).json()
    assert r["model"] == forced and r["barp"]["exploration"] == "forced" and r["barp"]["propensity"] == 1.0


# ---- fallback ---------------------------------------------------------------------------------------------
def test_fallback_when_the_chosen_upstream_fails(serve_app, client):
    tp = serve_app.policy
    r = client.post("/v1/chat/completions", json={"messages": _messages(tp.probe), "preference": QUALITY})
    assert r.status_code == 200, r.text
    body = r.json()
    barp = body["barp"]
    assert barp["model"] == serve_app.failing_model  # the policy's choice ...
    assert body["model"] == barp["served_model"] != serve_app.failing_model  # ... fell back
    assert barp["served_model"] == barp["ranking"][1]  # to the next-ranked model
    assert barp["fallback"]["count"] == 1
    first = barp["fallback"]["attempts"][0]
    assert first["model"] == serve_app.failing_model and not first["ok"] and "simulated failure" in first["error"]
    assert body["choices"][0]["message"]["content"] == _replay_answer(barp["served_model"], tp.probe)

    # streaming falls back the same way (before the first byte)
    with client.stream(
        "POST", "/v1/chat/completions", json={"messages": _messages(tp.probe), "preference": QUALITY, "stream": True}
    ) as s:
        assert s.status_code == 200 and s.headers["x-barp-model"] == barp["served_model"]
        first_chunk = json.loads(next(line for line in s.iter_lines() if line)[6:])
    assert first_chunk["barp"]["fallback"]["count"] == 1

    # the log says what happened
    def logged():
        frame = read_decision_log(serve_app.log_dir, barp["decision_id"])
        return frame if len(frame) else None

    row = wait_until(logged, 30, what="the fallback decision in the log").iloc[0]
    assert row["status"] == "fallback" and row["chosen_model"] == serve_app.failing_model
    assert row["served_model"] == barp["served_model"] and row["fallback_count"] == 1
    assert json.loads(row["attempts"])[0]["reason"] == "error"


def test_a_forced_model_falls_back_too(serve_app, client):
    tp = serve_app.policy
    r = client.post("/v1/chat/completions", json={"messages": _messages(tp.probe), "model": serve_app.failing_model})
    assert r.status_code == 200, r.text
    barp = r.json()["barp"]
    assert barp["model"] == serve_app.failing_model and barp["exploration"] == "forced"
    assert barp["fallback"]["count"] == 1 and r.json()["model"] != serve_app.failing_model


# ---- bad input --------------------------------------------------------------------------------------------
BAD_INPUTS = [
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages"),  # no text to route on
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": _messages("hi"), "preference": {"quality": 1.2, "cost": -0.2}}, "preference"),
    ({"messages": _messages("hi"), "preference": {"quality": 0.5, "cost": 0.6}}, "preference"),
    ({"messages": _messages("hi"), "preference": {"cost": -0.1}}, "preference"),
    ({"messages": _messages("hi"), "preference": {"quality": "high"}}, "preference.quality"),
    ({"messages": _messages("hi"), "preference": {"cost": 0.3}, "budget": {"max_cost_per_query": 1}}, "preference"),
    ({"messages": _messages("hi"), "budget": {"max_cost_per_query": -1}}, "budget"),
    ({"messages": _messages("hi"), "model": "no-such-model"}, "model"),
    ({"messages": _messages("x" * 20_001)}, "messages"),
    ({"messages": _messages("hi") * 17}, "messages"),
    ({"messages": _messages("hi"), "n": 3}, "n"),
    ({"messages": "hello"}, "messages"),
]


@pytest.mark.parametrize(("body", "field"), BAD_INPUTS, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD_INPUTS)])
def test_bad_input_is_a_4xx_naming_the_field(serve_app, client, body, field):
    r = client.post("/v1/chat/completions", json=body)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"], err


@pytest.mark.parametrize(
    ("path", "kwargs", "field"),
    [
        ("/v1/chat/completions", {"content": b"{not json"}, "body"),
        ("/v1/chat/completions", {"content": b"[1, 2]"}, "body"),
        (
            "/v1/chat/completions",
            {"json": {"messages": _messages("hi")}, "headers": {"x-barp-preference": "q=x"}},
            "x-barp-preference",
        ),
        (
            "/v1/chat/completions",
            {"json": {"messages": _messages("hi")}, "headers": {"x-barp-preference": "1.5"}},
            "x-barp-preference",
        ),
        ("/v1/route", {"json": {"prompt": "hi", "messages": _messages("hi")}}, "messages"),
        ("/v1/route", {"json": {"prompt": "hi", "extra": 1}}, "extra"),
        ("/v1/feedback", {"json": {"decision_id": "nope", "score": 0.5}}, "decision_id"),
        ("/v1/feedback", {"json": {"decision_id": "0" * 32, "score": 1.5}}, "score"),
        ("/v1/chat/completions", {"content": b"{" + b" " * 1_000_001 + b"}"}, "body"),
        ("/v1/chat/completions", {"content": b"[" * 200_000 + b"]" * 200_000}, "body"),
    ],
)
def test_other_bad_requests(serve_app, client, path, kwargs, field):
    r = client.post(path, **kwargs)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"], err


def test_bad_input_neither_crashes_nor_stalls_the_replica(serve_app, client):
    before = client.get("/healthz").json()["replica"]

    async def burst():
        async with httpx.AsyncClient(base_url=serve_app.base_url, headers=serve_app.headers(), timeout=60) as c:
            bad = [c.post("/v1/chat/completions", json=body) for body, _ in BAD_INPUTS] * 2
            results = await asyncio.gather(*bad)
            good = await c.post("/v1/route", json={"prompt": serve_app.policy.probe, "preference": CHEAP})
            return results, good

    results, good = asyncio.run(asyncio.wait_for(burst(), 120))
    assert all(400 <= r.status_code < 500 for r in results)
    assert good.status_code == 200 and good.elapsed.total_seconds() < 30
    assert client.get("/healthz").json()["replica"] == before


# ---- OpenAI-compatible backend, against this very app -----------------------------------------------------
def test_openai_compatible_backend_complete_stream_and_errors(serve_app, monkeypatch):
    from barp_ray.serving.openai_backend import OpenAIBackend
    from barp_ray.serving.upstream_protocol import UpstreamError

    tp = serve_app.policy
    monkeypatch.setenv("BARP_TEST_UPSTREAM_KEY", serve_app.api_key)
    settings = {
        "base_url": f"{serve_app.base_url}/v1",
        "model_name": tp.cheap_choice,
        "api_key_env": "BARP_TEST_UPSTREAM_KEY",
        "timeout_s": 30,
        "max_retries": 1,
        "usd_per_1k_input": 0.001,
        "usd_per_1k_output": 0.002,
    }
    payload = {"messages": _messages(tp.probe), "params": {"temperature": 0}}
    expected = _replay_answer(tp.cheap_choice, tp.probe)

    async def run():
        backend = OpenAIBackend("upstream-under-test", settings)
        try:
            done = await backend.complete(payload)
            items = [c async for c in backend.stream(payload)]
        finally:
            await backend.aclose()
        return done, items

    done, items = asyncio.run(asyncio.wait_for(run(), 120))
    completion = done["completion"]  # the upstream's answer as it came, `barp` block included
    assert completion["choices"][0]["message"]["content"] == expected and completion["model"] == tp.cheap_choice
    assert completion["barp"]["served_model"] == tp.cheap_choice and done["cost_usd"] > 0
    chunks = [i["chunk"] for i in items if "chunk" in i]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == expected
    assert items[-1]["done"] and items[-1]["cost_usd"] > 0  # usage came with the stream

    async def fails(overrides):
        backend = OpenAIBackend("upstream-under-test", {**settings, **overrides})
        try:
            with pytest.raises(UpstreamError) as info:
                await backend.complete(payload)
            return info.value
        finally:
            await backend.aclose()

    monkeypatch.setenv("BARP_TEST_BAD_KEY", "wrong")
    unauthorized = asyncio.run(asyncio.wait_for(fails({"api_key_env": "BARP_TEST_BAD_KEY"}), 60))
    assert unauthorized.status == 401 and not unauthorized.retryable  # a client error: no fallback
    closed = f"http://127.0.0.1:{free_port()}/v1"
    refused = asyncio.run(asyncio.wait_for(fails({"base_url": closed, "max_retries": 0}), 60))
    assert refused.code == "connection_error" and refused.retryable and closed not in str(refused)


# ---- decision log, feedback, replica restart (last: it kills the replica) ---------------------------------
def test_feedback_survives_a_replica_restart(serve_app, client):
    import ray

    tp = serve_app.policy
    chat = client.post("/v1/chat/completions", json={"messages": _messages(tp.prompts[1]), "preference": CHEAP})
    assert chat.status_code == 200
    decision_id = chat.json()["barp"]["decision_id"]
    fb = client.post("/v1/feedback", json={"decision_id": decision_id, "score": 0.75, "comment": "good"})
    assert fb.status_code == 200 and fb.json()["durable"] is True

    def logged():  # decisions are written at the next flush (flush_interval_s), feedback before its 200
        frame = read_decision_log(serve_app.log_dir, decision_id)
        return frame if len(frame) and frame.iloc[0]["feedback_score"] == 0.75 else None

    frame = wait_until(logged, 30, what="the decision and its feedback in the log")
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["feedback_score"] == 0.75 and row["feedback_count"] == 1 and row["feedback_comment"] == "good"
    # what off-policy training needs
    assert row["prompt"] == tp.prompts[1] and len(row["prompt_hash"]) == 16
    assert not row["prompt_id"].startswith("h:")  # the RouterBench id, from the replay upstream
    assert row["w_cost"] == 1.0 and row["chosen_model"] == tp.cheap_choice
    assert row["propensity"] == 1.0 and 0 < row["probability"] <= 1
    assert len(row["probabilities"]) == len(tp.models) and row["cost_usd"] > 0
    assert row["decision_latency_ms"] > 0 and row["total_latency_ms"] >= row["decision_latency_ms"]
    policies = read_policies(serve_app.log_dir)
    assert policies[row["policy_version"]]["models"] == tp.models

    old = client.get("/healthz").json()["replica"]
    names = router_replica_actor_names()
    assert len(names) == 1
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)

    def new_replica():
        r = httpx.get(f"{serve_app.base_url}/healthz", timeout=5)
        return r.status_code == 200 and r.json()["replica"] != old

    wait_until(new_replica, 180, interval=1.0, what="a new router replica")
    got = client.get(f"/v1/decisions/{decision_id}")
    assert got.status_code == 200, got.text
    assert got.json()["feedback_score"] == 0.75 and got.json()["chosen_model"] == tp.cheap_choice
    assert read_decision_log(serve_app.log_dir, decision_id).iloc[0]["feedback_score"] == 0.75
    # and the new replica logs and takes feedback too
    again = client.post("/v1/route", json={"prompt": tp.probe, "preference": CHEAP}).json()["decision_id"]
    assert client.post("/v1/feedback", json={"decision_id": again, "score": 0.0}).status_code == 200

    def logged_again():
        frame = read_decision_log(serve_app.log_dir, again)
        return frame if len(frame) and frame.iloc[0]["feedback_score"] == 0.0 else None

    wait_until(logged_again, 30, what="the new replica's decision and its feedback in the log")
