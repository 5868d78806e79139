"""Training at log scale, small sizes: streamed vs in-memory ingestion on Ray Train recovers the synthetic
ground truth, and a Ray Job trains from s3:// logs to an s3:// policy (real S3-compatible server on loopback)."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from s3_server import s3_server

from barp_ray.data.synth import SynthConfig, optimal_rewards, policy_rewards, read_synth_split, synth_logs
from barp_ray.objective import greedy_curve, w_grid
from barp_ray.policy.checkpoint import load_policy
from barp_ray.training.config import TrainConfig
from barp_ray.training.trainer import train_policy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[1]
SYNTH = {"rows": 6000, "rows_per_shard": 1500, "num_models": 4, "num_centres": 24, "seed": 7}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synth_logs(SynthConfig(out=str(out), **SYNTH), progress=False)
    return out


def _rewards(policy_dir, synth_dir) -> tuple[float, float, float]:
    """(policy, best single model, optimum) mean expected reward over the w grid on the test split."""
    test = read_synth_split(str(synth_dir), "test")
    policy = load_policy(policy_dir)
    tau, grid = float(policy.spec.tau), w_grid()
    curve = greedy_curve(policy, torch.as_tensor(test["embedding"]), test["expected_scores"], test["costs"], grid, tau)
    n, k = test["expected_scores"].shape
    achieved = policy_rewards(curve.choices, test["expected_scores"], test["costs"], tau, grid).mean()
    single = max(
        policy_rewards(np.full((len(grid), n), m), test["expected_scores"], test["costs"], tau, grid).mean()
        for m in range(k)
    )
    optimum = optimal_rewards(test["expected_scores"], test["costs"], tau, grid).mean()
    return float(achieved), float(single), float(optimum)


@pytest.mark.ray
@pytest.mark.parametrize("mode", ["stream", "memory"])
def test_both_ingest_modes_learn_the_synthetic_optimum(ray_cluster, synth_dir, tmp_path, mode):
    cfg = TrainConfig(
        data=str(synth_dir),
        storage_path=str(tmp_path / "ray"),
        name=f"synth-{mode}",
        num_workers=2,
        cpus_per_worker=0.5,
        epochs=2,
        steps_per_epoch=60,
        batch_size=256,
        ingest=mode,
        shuffle_buffer_rows=1024,
        seed=0,
    )
    outcome = train_policy(cfg)
    assert outcome.latest_metrics["ingest"] == mode
    assert outcome.latest_metrics["worker_peak_rss_mb"] > 0 and outcome.latest_metrics["seconds_to_first_step"] >= 0
    achieved, single, optimum = _rewards(outcome.policy_dir, synth_dir)
    # The policy saw bandit feedback only, yet beats the best single model and closes most of the gap to
    # the known optimum.
    assert achieved > single
    assert (optimum - achieved) < 0.5 * (optimum - single)


@pytest.mark.ray
def test_auto_streams_above_the_budget(ray_cluster, synth_dir, tmp_path):
    cfg = TrainConfig(
        data=str(synth_dir),
        storage_path=str(tmp_path / "ray"),
        name="auto",
        num_workers=1,
        epochs=1,
        steps_per_epoch=3,
        batch_size=64,
        ingest="auto",
        worker_memory_budget_mb=1.0,
    )
    assert train_policy(cfg).latest_metrics["ingest"] == "stream"  # 4.8k train rows x 1.6 KB > 1 MiB


def test_ray_job_trains_from_s3_logs_to_an_s3_policy(tmp_path):
    from barp_ray.tuning.jobs import LocalHead

    with s3_server() as env:
        bucket = f"s3://{env['BUCKET']}"
        synth_logs(SynthConfig(out=f"{bucket}/logs", **{**SYNTH, "rows": 2000}), progress=False)
        head = LocalHead(num_cpus=2, auth="token", extra_env={k: v for k, v in env.items() if k != "BUCKET"})
        head.start()
        try:
            client_env = head.client_env()
            client_env["SUBMISSION_ID"] = f"barp-s3-{uuid.uuid4().hex[:8]}"
            proc = subprocess.run(
                [
                    "bash",
                    str(REPO / "scripts" / "submit_train.sh"),
                    "--data",
                    f"{bucket}/logs",
                    "--storage-path",
                    f"{bucket}/ray",
                    "--name",
                    "s3-run",
                    "--export",
                    f"{bucket}/policy",
                    "--epochs",
                    "1",
                    "--steps-per-epoch",
                    "5",
                    "--batch-size",
                    "64",
                    "--max-failures",
                    "0",
                ],
                cwd=tmp_path,
                env=client_env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            logs = proc.stdout[-4000:] + proc.stderr[-3000:]
            assert proc.returncode == 0, logs + "\n--- head ---\n" + head.log_tail()
            assert head.job_status(client_env["SUBMISSION_ID"]) == "SUCCEEDED"
        finally:
            head.stop()
            head.cleanup()
        policy = load_policy(f"{bucket}/policy")  # what a Serve replica does with `policy: s3://...`
        assert policy.spec.models == [f"synth-model-{i:02d}" for i in range(4)]
        from barp_ray import storage

        assert storage.list_files(f"{bucket}/ray/s3-run", suffix="policy.pt")  # checkpoints went to S3 too
