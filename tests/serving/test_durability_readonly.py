"""A router whose decision-log store cannot be written: it starts, serves, rolls out, and reports the drops.

Real Serve / HTTP / MiniLM; the log path lies under a regular file, so every write fails (the store is "down").
Decisions are kept in a small byte-bounded buffer and counted as dropped past it; feedback (which must be
durable before its 200) gets a 503 with an OpenAI-style body; a rollout works as usual.
"""

from __future__ import annotations

import pytest
from h2_apps import CountingUpstream, deploy, openai_upstreams
from serve_helpers import wait_until

APP, PREFIX, KEY = "h2-readonly", "/h2readonly", "h2-readonly-key"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_router_serves_and_rolls_out_while_the_log_store_is_down(serve_port, tiny_policy, tmp_path):
    import httpx
    import torch

    from barp_ray.policy.checkpoint import load_policy, save_policy
    from barp_ray.serving.engine import policy_version
    from barp_ray.serving.rollout import delete_app, rollout

    keys = tmp_path / "keys.txt"
    keys.write_text(KEY + "\n")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("the decision log cannot be created under a regular file")
    policy = load_policy(tiny_policy.policy_dir)
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(1.1)
    policy_b = save_policy(policy, tmp_path / "policy-b")
    upstream = CountingUpstream(chunks=2)
    args = {
        "name": "barp",
        "policy": str(tiny_policy.policy_dir),
        "calibration": str(tiny_policy.calibration),
        "upstreams": openai_upstreams(tiny_policy.models, upstream),
        "router": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.25},
        "auth": {"enabled": True, "api_keys_env": None, "api_keys_file": str(keys)},
        "decision_log": {
            "path": str(blocker / "decision-log"),
            "flush_interval_s": 0.5,
            "max_buffer_bytes": 4096,
            "write_retries": 0,
            "close_timeout_s": 1,
        },
    }
    try:
        base_url = deploy(APP, PREFIX, args, serve_port)  # starts although the store is down
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
            ids = []
            for prompt in tiny_policy.prompts[:12]:
                r = client.post("/v1/route", json={"prompt": prompt[:300]})
                assert r.status_code == 200, r.text
                ids.append(r.json()["decision_id"])
            chat = client.post(
                "/v1/chat/completions", json={"model": "barp", "messages": [{"role": "user", "content": "hello"}]}
            )
            assert chat.status_code == 200, chat.text
            feedback = client.post("/v1/feedback", json={"decision_id": ids[-1], "score": 1.0})
            assert feedback.status_code == 503, feedback.text  # never a 200 for feedback that is not durable
            assert feedback.json()["error"]["code"] == "log_unavailable"

            result = rollout(str(policy_b), app=APP, timeout_s=240, log=lambda *_: None)
            assert result.new_version == policy_version(str(policy_b))
            assert (
                client.post("/v1/route", json={"prompt": "after the rollout"}).json()["policy_version"]
                == result.new_version
            )

            def dropped():
                log = client.get("/healthz").json()["decision_log"]
                return log if log["dropped"] > 0 and log["write_errors"] > 0 else None

            log = wait_until(dropped, 60, what="the drops reported in /healthz")
            assert log["buffered_bytes"] <= 4096 and log["written"] == 0
            print(f"\nread-only log: served 14 requests and a rollout; /healthz decision_log = {log}")
    finally:
        delete_app(APP)
        upstream.stop()
