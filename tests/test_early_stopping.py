"""The one early-stopping rule, including its checkpointed state (a real Ray Train run: tests/test_training_ray.py)."""

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
