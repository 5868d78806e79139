"""`ray job submit` of a small `barp train` against a real `ray start --head`, with token auth on, from
s3:// logs to an s3:// policy (a real S3-compatible server on loopback).

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


def test_ray_job_trains_s3_logs_to_an_s3_policy_on_a_token_authenticated_head(tmp_path):
    """One `ray start` head (10-13 s up, 9 s down) for both job guarantees: token auth is enforced, and a job
    submitted with a config file + flags trains from s3:// logs to s3:// checkpoints and an s3:// policy."""
    from s3_server import s3_server

    from barp_ray import storage
    from barp_ray.data.synth import SynthConfig, synth_logs

    with s3_server() as env:
        bucket = f"s3://{env['BUCKET']}"
        synth_logs(
            SynthConfig(out=f"{bucket}/logs", rows=2000, rows_per_shard=1500, num_models=4, num_centres=24, seed=7),
            progress=False,
        )
        cfg_path = tmp_path / "train.yaml"
        cfg = TrainConfig(data=f"{bucket}/logs", epochs=1, steps_per_epoch=5, batch_size=64, max_failures=0)
        cfg.to_yaml(cfg_path)
        head = LocalHead(num_cpus=2, auth="token", extra_env={k: v for k, v in env.items() if k != "BUCKET"})
        head.start()
        try:
            # token auth is on: the Jobs API refuses a request without the token or with a wrong one
            assert head.request("/api/jobs/", token=None)[0] == 401
            assert head.request("/api/jobs/", token="0" * 64)[0] == 403
            assert head.request("/api/jobs/")[0] == 200

            client_env = head.client_env()
            client_env["SUBMISSION_ID"] = f"barp-s3-{uuid.uuid4().hex[:8]}"
            # start() returned once the head's job agent answered: the first submission is accepted
            proc = subprocess.run(
                [
                    "bash",
                    str(REPO / "scripts" / "submit_train.sh"),
                    "--config",
                    str(cfg_path),
                    "--storage-path",
                    f"{bucket}/ray",
                    "--name",
                    "s3-run",
                    "--export",
                    f"{bucket}/policy",
                ],
                cwd=tmp_path,
                env=client_env,
                capture_output=True,
                text=True,
                timeout=400,
            )
            logs = proc.stdout[-4000:] + proc.stderr[-3000:]
            assert proc.returncode == 0, logs + "\n--- head ---\n" + head.log_tail()
            assert head.job_status(client_env["SUBMISSION_ID"]) == "SUCCEEDED"
            assert "best epoch 0" in proc.stdout
        finally:
            left = head.stop()
        assert left == [], f"processes of the test head still alive: {left}"
        assert head.own_processes() == []
        head.cleanup()
        policy = load_policy(f"{bucket}/policy")  # what a Serve replica does with `policy: s3://...`
        assert policy.spec.models == [f"synth-model-{i:02d}" for i in range(4)]
        assert storage.list_files(f"{bucket}/ray/s3-run", suffix="policy.pt")  # checkpoints went to S3 too
