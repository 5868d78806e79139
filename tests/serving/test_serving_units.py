"""Serving pieces without Ray Serve: config, choice rule, calibration, replay backend, CLI.

The decision log has its own file: test_durability_log.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from barp_ray.serving.calibration import Calibration, CalibrationRow, calibrate_from_shards
from barp_ray.serving.config import ServeAppConfig, config_from_args, deployment_name
from barp_ray.serving.config_sections import Budget, Preference
from barp_ray.serving.engine import choose

REPO = Path(__file__).resolve().parents[2]


# ---- preference, budget, config ---------------------------------------------------------------------------
def test_preference_on_the_simplex():
    assert Preference(quality=0.7, cost=0.3).w_cost == pytest.approx(0.3)
    assert Preference(cost=0.2).w_cost == pytest.approx(0.2)
    assert Preference(quality=0.9).w_cost == pytest.approx(0.1)
    for bad, word in [
        ({"quality": 0.5, "cost": 0.6}, "sum to 1"),
        ({"cost": -0.1}, ">= 0"),
        ({"quality": 1.5}, "<= 1"),
        ({}, "quality and/or cost"),
        ({"cost": float("nan")}, "finite"),
    ]:
        with pytest.raises(ValidationError, match=word):
            Preference(**bad)


def test_budget_needs_exactly_one_target():
    assert Budget(max_cost_per_query=0.001).max_cost_per_query == 0.001
    for bad in [
        {},
        {"max_cost_per_query": 1, "max_largest_share": 0.1},
        {"max_cost_per_query": -1},
        {"max_largest_share": 1.5},
    ]:
        with pytest.raises(ValidationError):
            Budget(**bad)


def test_config_validation_and_paths(tmp_path):
    cfg = ServeAppConfig()
    assert cfg.default_preference.w_cost == 0.5 and cfg.batching.enabled and cfg.exploration.mode == "greedy"
    with pytest.raises(ValidationError, match="max_batch_size"):
        ServeAppConfig(batching={"max_batch_size": 128}, router={"max_ongoing_requests": 64})
    with pytest.raises(ValidationError, match="needs an `openai:` block"):
        ServeAppConfig(upstreams=[{"model": "m", "kind": "openai"}])
    with pytest.raises(ValidationError, match="listed twice"):
        ServeAppConfig(upstreams=[{"model": "m"}, {"model": "m"}])
    with pytest.raises(ValidationError, match="min_replicas"):
        ServeAppConfig(router={"min_replicas": 3, "max_replicas": 2})
    resolved = ServeAppConfig(policy="runs/x", decision_log={"path": "s3://bucket/log"}).resolved(tmp_path)
    assert resolved.policy == str(tmp_path / "runs/x") and resolved.decision_log.path == "s3://bucket/log"
    # `serve run module:build_app key=value` passes strings; nested values may be JSON
    parsed = config_from_args({"policy": "p", "batching": '{"enabled": false}'})
    assert parsed.batching.enabled is False
    assert deployment_name("WizardLM/WizardLM-13B-V1.2") == "upstream-WizardLM-WizardLM-13B-V1-2"


@pytest.mark.parametrize("name", ["offline.yaml", "openai.yaml", "serve-llm.yaml"])
def test_committed_serve_configs_are_valid(name):
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((REPO / "serve" / name).read_text())
    ServeDeploySchema.model_validate(doc)
    barp_apps = [a for a in doc["applications"] if a["import_path"] == "barp_ray.serving.app:build_app"]
    assert len(barp_apps) == 1
    ServeAppConfig.model_validate(barp_apps[0]["args"])
    if name != "serve-llm.yaml":
        assert doc["http_options"]["host"] == "127.0.0.1"


def test_resolve_config_fills_one_replay_upstream_per_model(tiny_policy):
    from barp_ray.serving.app import resolve_config

    cfg = resolve_config({"policy": str(tiny_policy.policy_dir)})
    assert [u.model for u in cfg.upstreams] == tiny_policy.models
    assert all(u.kind == "replay" and Path(u.replay.data).is_absolute() for u in cfg.upstreams)
    with pytest.raises(ValueError, match="not models of the policy"):
        resolve_config({"policy": str(tiny_policy.policy_dir), "upstreams": [{"model": "nope"}]})
    with pytest.raises(FileNotFoundError, match="not a BaRP policy checkpoint"):
        resolve_config({"policy": str(tiny_policy.policy_dir.parent / "missing")})


# ---- the choice rule --------------------------------------------------------------------------------------
def test_choose_greedy_forced_and_masked():
    probs = np.array([0.1, 0.6, 0.0, 0.3])
    c = choose(probs)
    assert (c.index, c.propensity, c.ranking, c.explored) == (1, 1.0, [1, 3, 0], False)
    f = choose(probs, forced=0)
    assert f.index == 0 and f.propensity == 1.0 and f.ranking == [0, 1, 3] and not f.explored


def test_choose_sample_and_epsilon_propensities():
    probs = np.array([0.2, 0.5, 0.3])
    rng = np.random.default_rng(0)
    picks = [choose(probs, "sample", rng=rng) for _ in range(4000)]
    freq = np.bincount([p.index for p in picks], minlength=3) / len(picks)
    assert np.allclose(freq, probs, atol=0.03)
    assert all(p.propensity == pytest.approx(probs[p.index]) for p in picks)
    eps = [choose(probs, "epsilon", epsilon=0.3, rng=rng) for _ in range(4000)]
    expected = np.array([0.1, 0.7 + 0.1, 0.1])
    assert np.allclose(np.bincount([p.index for p in eps], minlength=3) / len(eps), expected, atol=0.03)
    assert all(p.propensity == pytest.approx(expected[p.index]) for p in eps)
    never = [choose(np.array([0.0, 1.0]), "epsilon", epsilon=1.0, rng=rng).index for _ in range(100)]
    assert set(never) == {1}  # a model without an upstream (probability 0) is never explored


# ---- calibration ------------------------------------------------------------------------------------------
def _calibration() -> Calibration:
    rows = [
        CalibrationRow(0.0, 0.0050, 0.88, 0.9),
        CalibrationRow(0.5, 0.0010, 0.80, 0.1),
        CalibrationRow(0.8, 0.0004, 0.75, 0.0),
        CalibrationRow(1.0, 0.0001, 0.60, 0.0),
    ]
    return Calibration(
        models=["a", "b"],
        largest_model="b",
        rows=rows,
        model_mean_cost={"a": 1e-4, "b": 5e-3},
        model_mean_score={"a": 0.6, "b": 0.88},
        num_prompts=10,
        split="val",
    )


def test_calibration_choice_rule(tmp_path):
    cal = _calibration()
    assert cal.choose(Budget(max_cost_per_query=0.002)) == (cal.rows[1], True)
    assert cal.choose(Budget(max_cost_per_query=1.0))[0].w_cost == 0.0
    assert cal.choose(Budget(max_cost_per_query=0.00001)) == (cal.rows[3], False)  # nothing meets it
    assert cal.choose(Budget(max_largest_share=0.0))[0].w_cost == 0.8
    assert Calibration.load(cal.save(tmp_path / "c.json")) == cal
    assert "**<- chosen**" in cal.markdown(cal.rows[1])


def test_calibrate_cli_and_serve_config_cli(tiny_policy, tmp_path, capsys):
    from barp_ray.cli import main

    out = tmp_path / "cal.json"
    rc = main(
        [
            "calibrate",
            "--policy",
            str(tiny_policy.policy_dir),
            "--data",
            str(tiny_policy.shards),
            "--target-cost",
            "0.0004",
            "--grid-points",
            "11",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "| w_c |" in text and "**<- chosen**" in text and "chosen: w_c =" in text
    cal = Calibration.load(out)
    assert len(cal.rows) == 11 and cal.extra["met"] and cal.policy_version
    chosen = cal.choose(Budget(max_cost_per_query=0.0004))[0]
    assert chosen.mean_cost <= 0.0004 and cal.extra["chosen_w_cost"] == chosen.w_cost
    # same table from the library, and a tighter budget is not looser in w_c
    again = calibrate_from_shards(str(tiny_policy.policy_dir), str(tiny_policy.shards), "val", 11)
    assert [r.mean_cost for r in again.rows] == [r.mean_cost for r in cal.rows]
    assert again.w_cost_for(Budget(max_cost_per_query=0.0)) >= chosen.w_cost
    rc = main(
        [
            "calibrate",
            "--policy",
            str(tiny_policy.policy_dir),
            "--data",
            str(tiny_policy.shards),
            "--target-largest-share",
            "0.0",
        ]
    )
    assert rc in (0, 1) and "share to gpt-4-1106-preview" in capsys.readouterr().out

    yaml_out = tmp_path / "my.yaml"
    rc = main(["serve-config", "--policy", str(tiny_policy.policy_dir), "--port", "8123", "--out", str(yaml_out)])
    assert rc == 0
    doc = yaml.safe_load(yaml_out.read_text())
    assert doc["http_options"] == {"host": "127.0.0.1", "port": 8123}
    assert doc["applications"][0]["args"]["policy"] == str(tiny_policy.policy_dir)


# ---- headers and error naming -----------------------------------------------------------------------------
def test_header_parsing_and_error_params():
    from barp_ray.serving.router import parse_budget_header, parse_preference_header, validation_error
    from barp_ray.serving.schemas import ApiError, ChatCompletionRequest

    assert parse_preference_header("quality=0.7, cost=0.3").w_cost == pytest.approx(0.3)
    assert parse_preference_header("0.25").w_cost == 0.25
    assert parse_budget_header("0.001").max_cost_per_query == 0.001
    assert parse_budget_header("max_largest_share=0.2").max_largest_share == 0.2
    for bad in ("cost=x", "quality=0.9,cost=0.9", "2"):
        with pytest.raises(ApiError) as info:
            parse_preference_header(bad)
        assert info.value.param.startswith("x-barp-preference") and info.value.status == 400
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(
            {"messages": [{"role": "user", "content": "x"}], "preference": {"quality": "a"}}
        )
    err = validation_error(info.value)
    assert err.param == "preference.quality" and err.message.startswith("preference.quality: ")


def test_api_keys_from_env_and_file(tmp_path):
    import hashlib

    from barp_ray.serving.config_sections import AuthConfig
    from barp_ray.serving.router import api_key_hashes

    keys = tmp_path / "keys"
    keys.write_text("# comment\nfile-key\n\n")
    got = api_key_hashes(AuthConfig(api_keys_env="K", api_keys_file=str(keys)), env={"K": "a, b"})
    assert got == {hashlib.sha256(k.encode()).hexdigest() for k in ("a", "b", "file-key")}
    assert api_key_hashes(AuthConfig(api_keys_env="K"), env={}) == set()


# ---- replay backend ---------------------------------------------------------------------------------------
def test_replay_backend_answers_recorded_prompts(tiny_policy):
    from barp_ray.serving.upstream_protocol import UpstreamError
    from barp_ray.serving.upstreams import ReplayBackend

    model = tiny_policy.models[0]
    backend = ReplayBackend(model, {"stream_chunk_chars": 5})
    prompt = tiny_policy.prompts[0]
    payload = {"messages": [{"role": "user", "content": prompt}]}
    done = asyncio.run(backend.complete(payload))
    assert done["replay_hit"] and done["cost_usd"] > 0 and done["text"]
    chunks = asyncio.run(_collect(backend.stream(payload)))
    assert "".join(c.get("delta", "") for c in chunks) == done["text"] and chunks[-1]["done"]
    # a system message in front still finds it (by the last user message)
    system = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}]}
    assert asyncio.run(backend.complete(system))["text"] == done["text"]
    miss = asyncio.run(backend.complete({"messages": [{"role": "user", "content": "hello?"}]}))
    assert not miss["replay_hit"] and miss["cost_usd"] == pytest.approx(backend.mean_cost)
    assert backend.info()["mean_cost_usd"] == pytest.approx(backend.mean_cost)
    strict = ReplayBackend(model, {"on_miss": "error", "error_rate": 0.0})
    with pytest.raises(UpstreamError, match="no recorded response"):
        asyncio.run(strict.complete({"messages": [{"role": "user", "content": "hello?"}]}))
    failing = ReplayBackend(model, {"error_rate": 1.0})
    with pytest.raises(UpstreamError, match="simulated failure"):
        asyncio.run(failing.complete(payload))


async def _collect(agen):
    return [c async for c in agen]


def test_decision_json_is_plain_json():
    import pandas as pd

    from barp_ray.serving.router import decision_json

    frame = pd.DataFrame(
        {
            "a": [np.float64("nan")],
            "b": [pd.NaT],
            "c": [np.array([0.5, 0.5], np.float32)],
            "d": [pd.Timestamp("2024-01-01", tz="UTC")],
            "e": [np.int16(3)],
        }
    )
    out = decision_json(frame)
    assert json.loads(json.dumps(out)) == {
        "a": None,
        "b": None,
        "c": [0.5, 0.5],
        "d": "2024-01-01T00:00:00+00:00",
        "e": 3,
    }


# ---- forward coalescing -----------------------------------------------------------------------------------
def test_forward_coalescer_merges_waiting_batches_and_propagates_errors():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from barp_ray.serving.router import ForwardCoalescer

    calls: list[list[str]] = []
    gate = threading.Event()

    def forward(texts, w_costs):
        calls.append(list(texts))
        if len(calls) == 1:
            gate.wait(5)  # the first pass is slow: the others queue behind it
        if "boom" in texts:
            raise ValueError("boom")
        return np.array([[len(t), w] for t, w in zip(texts, w_costs, strict=True)], dtype=float)

    sizes: list[int] = []
    executor = ThreadPoolExecutor(1)
    coalescer = ForwardCoalescer(forward, executor, max_items=3, on_forward=sizes.append)

    async def scenario():
        first = asyncio.create_task(coalescer.run(["a"], [0.1]))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(coalescer.run([t], [0.2])) for t in ("bb", "ccc", "dddd", "eeeee")]
        await asyncio.sleep(0.05)
        gate.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert calls == [["a"], ["bb", "ccc", "dddd"], ["eeeee"]] and sizes == [1, 3, 1]
    assert first[0].tolist() == [[1, 0.1]] and first[1] == 1
    assert [r[0][0][0] for r in rest] == [2, 3, 4, 5] and [r[1] for r in rest] == [3, 3, 3, 1]

    async def failing():
        return await asyncio.gather(coalescer.run(["boom"], [0.0]), return_exceptions=True)

    time.sleep(0.01)
    assert isinstance(asyncio.run(asyncio.wait_for(failing(), 10))[0], ValueError)
    executor.shutdown()


def test_module_app_for_serve_build(tiny_policy, tmp_path, monkeypatch):
    from ray.serve import Application

    import barp_ray.serving.app as app_module

    cfg = tmp_path / "args.yaml"
    cfg.write_text(yaml.safe_dump({"policy": str(tiny_policy.policy_dir)}))
    monkeypatch.setenv(app_module.CONFIG_ENV, str(cfg))
    assert isinstance(app_module.app, Application)  # what `serve build barp_ray.serving.app:app` imports
    with pytest.raises(AttributeError):
        _ = app_module.no_such_attribute
