"""`ray job submit` of a small `barp train` against a real `ray start --head`, with token auth on.

The head runs in its own process group with its own --temp-dir, free ports and a token file of its own
(never ~/.ray/auth_token); it is stopped by ending only its own processes (`ray stop` is never run).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from barp_ray.policy.checkpoint import load_policy
from barp_ray.training.config import TrainConfig
from barp_ray.tuning.jobs import JOB_EXCLUDES, LocalHead, job_runtime_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]
REPO = Path(__file__).resolve().parents[2]


def test_runtime_env_excludes_data_caches_and_venv():
    env = job_runtime_env(["extra/"])
    assert {".venv", "runs", ".barp_cache", ".git"} <= set(env["excludes"]) and "extra/" in env["excludes"]
    out = subprocess.run(
        [sys.executable, "-m", "barp_ray.tuning.jobs", "--runtime-env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out)["excludes"] == JOB_EXCLUDES


def test_ray_job_submit_trains_on_a_token_authenticated_head(tuning_data, tmp_path):
    storage = tmp_path / "storage"
    cfg_path = tmp_path / "train.yaml"
    cfg = TrainConfig(data=str(tuning_data), epochs=1, steps_per_epoch=3, batch_size=32, max_failures=0)
    cfg.to_yaml(cfg_path)
    head = LocalHead(num_cpus=2, auth="token")
    head.start()
    try:
        # token auth is on: the Jobs API refuses a request without the token or with a wrong one
        assert head.request("/api/jobs/", token=None)[0] == 401
        assert head.request("/api/jobs/", token="0" * 64)[0] == 403
        assert head.request("/api/jobs/")[0] == 200

        env = head.client_env()
        env["SUBMISSION_ID"] = f"barp-test-{uuid.uuid4().hex[:8]}"
        proc = subprocess.run(
            [
                "bash",
                str(REPO / "scripts" / "submit_train.sh"),
                "--config",
                str(cfg_path),
                "--storage-path",
                str(storage),
                "--name",
                "job-run",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        logs = proc.stdout[-4000:] + proc.stderr[-3000:]
        assert proc.returncode == 0, logs + "\n--- head ---\n" + head.log_tail()
        assert head.job_status(env["SUBMISSION_ID"]) == "SUCCEEDED"
        assert "best epoch 0" in proc.stdout
    finally:
        left = head.stop()
    assert left == [], f"processes of the test head still alive: {left}"
    assert head.own_processes() == []
    checkpoints = sorted((storage / "job-run").glob("checkpoint_*"))
    assert checkpoints and (checkpoints[0] / "policy.pt").exists()
    assert load_policy(storage / "job-run" / "best_policy").spec.models
    head.cleanup()
