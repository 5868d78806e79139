"""Integration on a real local Ray cluster: embeddings on Ray Data, Ray Train with 2 workers, resume,
worker-failure recovery, leave-one-task-out, and the CLI end to end. Data: a small real RouterBench subset.

Each TorchTrainer start costs about 20-25 s on 2 cores, so one run (and its resume) checks every guarantee."""

from __future__ import annotations

import numpy as np
import pytest

from barp_ray.data.shards import read_shards
from barp_ray.embeddings.job import EmbedConfig, run_embed
from barp_ray.objective import derive_cost_floor
from barp_ray.policy import load_policy, read_policy_metadata
from barp_ray.training.config import TrainConfig
from barp_ray.training.trainer import train_policy

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]


def _cfg(small_shards, tmp_path, **kw) -> TrainConfig:
    base = dict(
        data=str(small_shards["data"]),
        storage_path=str(tmp_path / "ray"),
        epochs=2,
        steps_per_epoch=15,
        batch_size=64,
        cpus_per_worker=0.5,
    )
    return TrainConfig(**{**base, **kw})


def test_embeddings_are_real_and_cached(small_shards):
    table = read_shards(small_shards["data"])
    assert table.embeddings is not None and table.embeddings.shape == (len(table), 384)
    assert np.allclose(np.linalg.norm(table.embeddings, axis=1), 1.0, atol=1e-4)
    assert small_shards["embed_stats"].embedded > 0
    again = run_embed(EmbedConfig(data=small_shards["data"], cache_dir=small_shards["cache"]))
    assert again.embedded == 0 and again.cache_hits == again.unique_prompts  # second run embeds nothing
    assert np.array_equal(read_shards(small_shards["data"]).embeddings, table.embeddings)


def test_ray_train_two_workers_crash_resume_and_loto(small_shards, tmp_path):
    """One 2-worker Ray Train run pays for everything a run has to guarantee: DDP on 2 workers with their own
    shards and RNG streams, a worker-group crash restarted from the last checkpoint (FailureConfig), a refused
    resume with another config, a resume with more epochs, and leave-one-task-out (tau and data without mbpp)."""
    from pathlib import Path

    import torch

    from barp_ray.training.trainer import _read_split

    cfg = _cfg(
        small_shards,
        tmp_path,
        num_workers=2,
        name="two-workers",
        exclude_tasks=["mbpp"],
        inject_failure_at_epoch=1,
        max_failures=1,
    )
    table = read_shards(small_shards["data"])
    # leave one task out: the Ray Data split the workers read has no mbpp row (and the table had some)
    read = [row["task"] for row in _read_split(cfg, "train", ["task"]).take_all()]
    assert "mbpp" in set(table.where_split("train").tasks) and "mbpp" not in set(read)
    assert len(read) == len(table.where_split("train").where_tasks(["mbpp"], keep=False))

    first = train_policy(cfg)
    # epoch 0 ran in a fresh group; the group crashed at epoch 1 and the restarted one restored the epoch-0
    # checkpoint: no epoch skipped or run twice, and the optimizer step count carried over
    assert [m["epoch"] for m in first.history] == [0, 1]  # both epochs checkpointed
    assert first.history[0]["resumed"] is False and first.history[1]["resumed"] is True
    assert first.latest_metrics["epoch"] == 1 and first.latest_metrics["resumed"] is True
    assert first.latest_metrics["step"] == 2 * cfg.steps_per_epoch
    assert read_policy_metadata(first.policy_dir)["epoch"] in (0, 1)
    policy = load_policy(first.policy_dir)
    assert policy.spec.models == table.models and policy.spec.tau == first.tau
    assert 0.0 <= first.best_metrics["val_aiq"] <= 1.0

    # leave one task out: tau comes from the training rows without the excluded task
    train = table.where_split("train").where_tasks(["mbpp"], keep=False)
    top = train.costs.mean(axis=0).argmax()
    assert first.tau == pytest.approx(float(np.quantile(train.costs[:, top], 0.99)))
    # the default log cost scale: its floor derived from the same rows, recorded in the exported policy
    assert policy.spec.cost_scale == first.scale and first.scale.floor == pytest.approx(
        derive_cost_floor(train.costs, first.tau)
    )

    # every rank saved its own sampling RNG state into the checkpoint (rank 1's differs from rank 0's)
    ckpt = Path(first.best_checkpoint)
    states = [torch.load(ckpt / f"rng_rank{r}.pt", weights_only=True)["generator"] for r in (0, 1)]
    assert not torch.equal(states[0], states[1])
    # the exported policy is the weight average (ema_epochs, on by default); the live weights that a resume
    # continues from travel in the train state
    train_state = torch.load(ckpt / "train_state.pt", weights_only=True)
    exported = torch.load(ckpt / "policy.pt", weights_only=True)
    assert cfg.ema_epochs and "average" in train_state["learner"]
    assert any(not torch.equal(exported[k], v) for k, v in train_state["live_policy"].items())

    # the same run name with other data is refused (before anything is launched), not silently "resumed"
    import shutil

    other = shutil.copytree(small_shards["data"], tmp_path / "other-data")  # a valid prepared dir, elsewhere
    with pytest.raises(ValueError, match=r"different config \(data: "):
        train_policy(cfg.model_copy(update={"data": str(other)}))

    # Same storage path and name, more epochs: picks up after the last checkpoint instead of restarting.
    resumed = train_policy(cfg.model_copy(update={"epochs": 3}))
    assert resumed.latest_metrics["epoch"] == 2 and resumed.latest_metrics["resumed"] is True
    assert resumed.latest_metrics["step"] == 3 * cfg.steps_per_epoch  # optimizer step count carried over
    assert [m["epoch"] for m in resumed.history] == [0, 1, 2]  # one run: old and new checkpoints together
    assert resumed.tau == first.tau


def test_cli_rejects_a_bad_data_dir_with_a_clear_error(tmp_path, capsys):
    from barp_ray.cli import main

    assert main(["prepare", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_ray_train_workers_stop_early_and_export_the_best_epoch(small_shards, tmp_path):
    """A real Ray Train run whose policy cannot improve (lr ~ 0): epoch 0 stays the best, the run stops after
    `patience` epochs instead of running all of them, and the exported policy is the best epoch's."""
    cfg = _cfg(
        small_shards,
        tmp_path,
        epochs=6,
        steps_per_epoch=2,
        batch_size=32,
        lr=1e-12,
        patience=1,
        select_metric="val_reward",
        name="early-stop",
    )
    outcome = train_policy(cfg)
    assert outcome.latest_metrics["epoch"] == 1 and outcome.latest_metrics["stopping_early"] is True
    assert [m["epoch"] for m in outcome.history] == [0, 1]  # 4 of the 6 epochs never ran
    assert outcome.best_metrics["epoch"] == 0
    assert read_policy_metadata(outcome.policy_dir)["epoch"] == 0
