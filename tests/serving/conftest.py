"""Serve fixtures: a tiny real policy trained on RouterBench rows, and the router app on a free port.

One Serve instance per session (`serve_port`: one HTTP proxy, `serve.shutdown()` at the end) on the session
Ray cluster of tests/conftest.py; `serve_app` is the router app (router + 4 replay upstreams) on route "/",
test_rollout.py deploys its own app beside it on "/rollout". Everything is loopback (127.0.0.1) on a port
picked free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from h2_apps import guard_app  # noqa: F401 (the app of test_bad_input.py + test_isolation.py, deployed once)
from serve_helpers import APP_NAME, free_port, wait_until

from barp_ray.config import default_data_dir

# the candidate models of the test policy: cheapest ... largest
TEST_MODELS = [
    "mistralai/mistral-7b-chat",
    "zero-one-ai/Yi-34B-Chat",
    "gpt-3.5-turbo-1106",
    "gpt-4-1106-preview",
]
API_KEY = "test-key-123"
PROMPTS_PER_TASK = 16
TEST_TAU = 0.002


@dataclass
class TinyPolicy:
    policy_dir: Path
    calibration: Path
    shards: Path  # the training prompts as embedded shards (split "val"), for `barp calibrate`
    models: list[str]
    prompts: list[str]  # RouterBench prompts (replay upstreams know them)
    prompt_ids: list[str]
    mean_cost: dict[str, float]
    probe: str  # the prompt the preference tests use
    quality_choice: str  # argmax at w_c = 0 on `probe`
    cheap_choice: str  # argmax at w_c = 1 on `probe`


@pytest.fixture(scope="session")
def tiny_policy(routerbench_dir, tmp_path_factory) -> TinyPolicy:
    """A real BaRP policy: MiniLM (ONNX fp32, 128 tokens) embeddings of 48 RouterBench prompts, REINFORCE for 400
    steps (seconds)."""
    import torch

    torch.set_num_threads(1)  # 2 OpenMP threads on a busy 2-core machine are ~50x slower for this tiny MLP

    from barp_ray.data.readers import load_raw
    from barp_ray.data.shards import write_shards
    from barp_ray.data.validation import validate
    from barp_ray.embeddings.encoder import DEFAULT_ENCODER, EncoderSpec, encode, load_encoder
    from barp_ray.policy.checkpoint import save_policy
    from barp_ray.policy.model import BarpPolicy, preference_tensor
    from barp_ray.serving.calibration import calibrate
    from barp_ray.training.config import TrainConfig
    from barp_ray.training.loop import PolicyData, ReinforceLearner, policy_spec

    raw = load_raw(routerbench_dir, models=TEST_MODELS)
    table, _ = validate(raw)
    table = table.where_split("train")
    rng = np.random.default_rng(0)
    rows = []
    for task in table.task_names:
        idx = np.flatnonzero(table.tasks == task)
        rows += rng.choice(idx, size=min(PROMPTS_PER_TASK, len(idx)), replace=False).tolist()
    table = table.take(np.array(sorted(rows)))
    torch.manual_seed(0)
    # ONNX Runtime fp32 at 128 tokens: a router replica loads and runs it several times faster than torch at
    # 256, and unlike the int8 default its embeddings do not depend on the batch (test_rollout.py compares
    # served probabilities with in-process ones to 2e-3)
    spec = EncoderSpec(DEFAULT_ENCODER, "onnx", 128).resolved()
    encoder = load_encoder(spec)
    table.embeddings = encode(encoder, table.prompts)
    table.encoder = spec.id

    cfg = TrainConfig(
        epochs=1,
        steps_per_epoch=400,
        batch_size=256,
        lr=3e-3,
        hidden_dim=64,
        pref_dim=16,
        beta_start=0.05,
        beta_end=0.001,
        samples_per_prompt=4,
    )
    tau = TEST_TAU  # below gpt-4's mean cost so that the cheap models' cost differences matter
    policy = BarpPolicy(policy_spec(cfg, table.models, tau, spec.id, table.embeddings.shape[1]))
    learner = ReinforceLearner(policy, cfg, tau, batch_size=cfg.batch_size, seed=0)
    data = PolicyData.from_table(table)
    for _ in range(cfg.total_steps):
        learner.step(data)
    policy.eval()

    out = tmp_path_factory.mktemp("policy")
    policy_dir = save_policy(policy, out / "policy", extra={"note": "tests/serving tiny policy"})
    cal = calibrate(policy, table.embeddings, table.scores, table.costs, table.models, grid_points=21)
    cal.split = "train"
    calibration = cal.save(out / "calibration.json")
    table.split = np.full(len(table), "val", dtype=object)  # calibrate on these prompts (tests only)
    write_shards(table, out / "shards", num_shards=2)

    mean_cost = {m: float(c) for m, c in zip(table.models, table.costs.mean(axis=0), strict=True)}
    costs = np.array([mean_cost[m] for m in table.models])
    with torch.inference_mode():
        emb = torch.as_tensor(table.embeddings)
        at_quality = policy(emb, preference_tensor(0.0, len(emb))).argmax(dim=-1).numpy()
        at_cost = policy(emb, preference_tensor(1.0, len(emb))).argmax(dim=-1).numpy()
    # the probe: a prompt whose choice gets cheaper with the cost preference
    differs = np.flatnonzero(costs[at_cost] < costs[at_quality])
    probe_index = int(differs[0]) if len(differs) else 0
    quality, cheap = int(at_quality[probe_index]), int(at_cost[probe_index])
    tp = TinyPolicy(
        policy_dir=policy_dir,
        calibration=calibration,
        shards=out / "shards",
        models=list(table.models),
        prompts=list(table.prompts),
        prompt_ids=[str(p) for p in table.prompt_ids],
        mean_cost=mean_cost,
        probe=table.prompts[probe_index],
        quality_choice=table.models[quality],
        cheap_choice=table.models[cheap],
    )
    assert mean_cost[tp.cheap_choice] < mean_cost[tp.quality_choice], (
        f"the tiny policy did not learn the preference: w_c=0 -> {tp.quality_choice}, w_c=1 -> {tp.cheap_choice}"
    )
    return tp


@dataclass
class ServeApp:
    base_url: str
    port: int
    api_key: str
    log_dir: Path
    policy: TinyPolicy
    failing_model: str  # its replay upstream always errors: requests routed to it fall back

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def app_config(policy: TinyPolicy, log_dir: Path, keys_file: Path, failing_model: str) -> dict:
    upstreams = []
    for m in policy.models:
        replay = {"data": str(default_data_dir()), "stream_chunk_chars": 8}  # checked by routerbench_dir
        if m == failing_model:
            replay["error_rate"] = 1.0
        upstreams.append({"model": m, "kind": "replay", "replay": replay, "timeout_s": 20})
    return {
        "name": "barp",
        "policy": str(policy.policy_dir),
        "calibration": str(policy.calibration),
        "default_preference": {"quality": 0.5, "cost": 0.5},
        "upstreams": upstreams,
        "router": {
            "min_replicas": 1,
            "max_replicas": 1,
            "num_cpus": 0.5,
            "max_ongoing_requests": 64,
            "health_check_period_s": 2,
        },
        "batching": {"enabled": True, "max_batch_size": 8, "batch_wait_timeout_s": 0.005},
        # the failing model fails on every call (the fallback tests count on it): no breaker skipping it here
        "fallback": {"max_fallbacks": 2, "breaker_failures": 0},
        "auth": {"enabled": True, "api_keys_env": None, "api_keys_file": str(keys_file)},
        "limits": {"max_prompt_chars": 20_000, "max_messages": 16},
        "decision_log": {"path": str(log_dir), "flush_interval_s": 0.5, "flush_rows": 64},
    }


@pytest.fixture(scope="session")
def serve_port(ray_cluster) -> int:
    """Serve started once per session (one HTTP proxy) on a free loopback port; every test app shares it."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    yield port
    serve.shutdown()


@pytest.fixture(scope="session")
def serve_app(serve_port, tiny_policy, tmp_path_factory) -> ServeApp:
    from ray import serve

    from barp_ray.serving.app import build_app

    root = tmp_path_factory.mktemp("serve")
    keys_file = root / "api_keys.txt"
    keys_file.write_text(f"# test keys\n{API_KEY}\nsecond-key\n")
    log_dir = root / "decision-log"
    failing = tiny_policy.quality_choice
    port = serve_port
    app = build_app(app_config(tiny_policy, log_dir, keys_file, failing))
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    base_url = f"http://127.0.0.1:{port}"

    import httpx

    wait_until(lambda: httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200, 60, what="/healthz")
    yield ServeApp(base_url, port, API_KEY, log_dir, tiny_policy, failing)


@pytest.fixture()
def client(serve_app):
    import httpx

    with httpx.Client(base_url=serve_app.base_url, headers=serve_app.headers(), timeout=60) as c:
        yield c


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
