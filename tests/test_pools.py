"""Model pools (subsets, leave-one-task-out, synthetic with a known optimum) and seed intervals."""

from __future__ import annotations

import numpy as np
import pytest

from barp_ray.data.table import RoutingTable
from barp_ray.evaluation.intervals import aggregate_results, mean_interval
from barp_ray.evaluation.pools import build_pools, loto_pools, select_models, synthetic_pool
from barp_ray.evaluation.routers import utility_argmax


def _table() -> RoutingTable:
    n = 12
    rng = np.random.default_rng(0)
    return RoutingTable(
        prompt_ids=[f"p{i}" for i in range(n)],
        prompts=[f"q{i}" for i in range(n)],
        tasks=np.array(["a", "b", "c"] * 4, dtype=object),
        models=["m0", "m1", "m2"],
        scores=rng.random((n, 3)),
        costs=rng.random((n, 3)) * 1e-3,
        split=np.array(["train"] * 3 + ["val"] * 3 + ["test"] * 3 + ["train"] * 3, dtype=object),
        embeddings=rng.normal(size=(n, 4)).astype(np.float32),
    )


def test_select_models_keeps_rows_and_picks_columns() -> None:
    t = _table()
    sub = select_models(t, ["m2", "m0"])
    assert sub.models == ["m2", "m0"] and len(sub) == len(t)
    assert np.array_equal(sub.scores[:, 0], t.scores[:, 2]) and np.array_equal(sub.costs[:, 1], t.costs[:, 0])
    with pytest.raises(ValueError, match="not in the table"):
        select_models(t, ["nope"])


def test_loto_pools_hold_each_task_out_of_training() -> None:
    t = _table()
    pools = loto_pools(t)
    assert [p.name for p in pools] == ["loto:a", "loto:b", "loto:c"]
    for p in pools:
        held = p.name.split(":")[1]
        assert held not in set(p.train.tasks) | set(p.val.tasks)
        assert set(p.test.tasks) == {held} and set(p.test.split) == {"test"}


def test_synthetic_pool_optimum_is_known_and_beats_every_single_model() -> None:
    pool = synthetic_pool(n_train=200, n_val=50, n_test=2000, seed=1)
    assert len(pool.models) == 9 and len(pool.train.task_names) == 14
    costs = pool.test.costs.mean(axis=0)
    assert costs.max() / costs.min() < 12  # costs within ~10x
    mu = pool.test.extra["expected_scores"]
    best = utility_argmax(mu, np.broadcast_to(costs, mu.shape), 0.0, 1.0)
    optimum = pool.test.scores[np.arange(len(best)), best].mean()
    assert optimum > pool.test.scores.mean(axis=0).max() + 0.05  # routing pays on this pool
    with pytest.raises(ValueError, match="needs the prepared RouterBench table"):
        build_pools(None, ["open6"])


def test_mean_interval_and_aggregate() -> None:
    iv = mean_interval([0.8, 0.82, 0.84])
    assert iv.mean == pytest.approx(0.82) and iv.lo < 0.82 < iv.hi and iv.n == 3
    assert iv.half_width == pytest.approx(4.303 * 0.02 / np.sqrt(3), rel=1e-3)  # t_{0.975, 2} = 4.303
    assert mean_interval([0.5]).lo == 0.5 and mean_interval([]).n == 0
    runs = [
        {"routers": {"r": {"aiq": a, "kind": "x", "points": {"0.0": {"score": a, "cost": 1.0}}}}}
        for a in (0.8, 0.82, 0.84)
    ]
    agg = aggregate_results(runs)
    assert agg["r"]["aiq"]["mean"] == pytest.approx(0.82) and agg["r"]["aiq_per_seed"] == [0.8, 0.82, 0.84]
    assert agg["r"]["points"]["0.0"]["cost"]["mean"] == 1.0
