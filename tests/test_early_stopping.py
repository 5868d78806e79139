"""The one early-stopping rule (in-process loop and Ray Train workers), including its checkpointed state."""

from __future__ import annotations

from barp_ray.training.early_stopping import EarlyStopping


def test_stops_after_patience_validations_without_a_new_best():
    stopper = EarlyStopping("val_reward", patience=2)
    seen = []
    for value in [0.1, 0.3, 0.2, 0.3, 0.25, 0.5]:
        seen.append((stopper.update({"val_reward": value}), stopper.should_stop))
        if stopper.should_stop:
            break
    # 0.1 best, 0.3 best, 0.2 no, 0.3 (a tie is not better) no -> stop before 0.25 and 0.5
    assert seen == [(True, False), (True, False), (False, False), (False, True)]
    assert stopper.best == 0.3


def test_no_patience_never_stops_but_still_tracks_the_best():
    stopper = EarlyStopping("val_aiq")
    for value in [0.5, 0.4, 0.3, 0.2]:
        stopper.update({"val_aiq": value})
    assert not stopper.should_stop and stopper.best == 0.5 and stopper.since_best == 3


def test_resumed_state_keeps_counting_only_for_the_same_metric():
    first = EarlyStopping("val_reward", patience=3)
    for value in [0.4, 0.3, 0.2]:
        first.update({"val_reward": value})
    resumed = EarlyStopping.from_state("val_reward", 3, first.state_dict())
    assert (resumed.best, resumed.since_best) == (0.4, 2)
    resumed.update({"val_reward": 0.1})
    assert resumed.should_stop  # the count carried over the restart: 3 epochs without a new best in all
    other = EarlyStopping.from_state("val_aiq", 3, first.state_dict())
    assert other.since_best == 0 and other.best == float("-inf")  # another metric starts fresh


def test_ray_train_workers_stop_early_and_export_the_best_epoch(small_shards, tmp_path):
    """A real Ray Train run whose policy cannot improve (lr ~ 0): epoch 0 stays the best, the run stops after
    `patience` epochs instead of running all of them, and the exported policy is the best epoch's."""
    from barp_ray.policy.checkpoint import read_policy_metadata
    from barp_ray.training.config import TrainConfig
    from barp_ray.training.trainer import train_policy

    cfg = TrainConfig(
        data=str(small_shards["data"]),
        storage_path=str(tmp_path / "ray"),
        epochs=6,
        steps_per_epoch=2,
        batch_size=32,
        cpus_per_worker=0.5,
        lr=1e-12,
        patience=1,
        select_metric="val_reward",
    )
    outcome = train_policy(cfg)
    assert outcome.latest_metrics["epoch"] == 1 and outcome.latest_metrics["stopping_early"] is True
    assert [m["epoch"] for m in outcome.history] == [0, 1]  # 4 of the 6 epochs never ran
    assert outcome.best_metrics["epoch"] == 0
    assert read_policy_metadata(outcome.policy_dir)["epoch"] == 0
