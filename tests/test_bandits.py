"""Same-information bandit routers (LinUCB, linear TS, epsilon-greedy) on toy problems with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from barp_ray.data.table import RoutingTable
from barp_ray.evaluation import ROUTERS, build_baselines, evaluate_routers, make_router
from barp_ray.evaluation.bandits import linear_features

BANDITS = ("linucb", "lin_ts", "eps_greedy")


def cluster_table(n: int, seed: int) -> tuple[RoutingTable, np.ndarray]:
    """3 embedding clusters, model j scores 0.95 on cluster j and 0.1 elsewhere; model costs 1e-4, 2e-4, 4e-4."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(3, 32)).astype(np.float32)
    cluster = rng.integers(0, 3, size=n)
    emb = centres[cluster] + 0.3 * rng.normal(size=(n, 32)).astype(np.float32)
    p = np.full((n, 3), 0.1)
    p[np.arange(n), cluster] = 0.95
    scores = (rng.random((n, 3)) < p).astype(np.float32)
    costs = np.tile([1e-4, 2e-4, 4e-4], (n, 1))
    table = RoutingTable(
        prompt_ids=[f"p{i}" for i in range(n)],
        prompts=[f"q{i}" for i in range(n)],
        tasks=np.full(n, "t", dtype=object),
        models=["a", "b", "c"],
        scores=scores,
        costs=costs,
        embeddings=emb,
    )
    return table, cluster


def two_model_table(n: int, seed: int) -> RoutingTable:
    """'big' always right at cost tau; 'small' right half the time for free: big below w_c = 1/3, small above."""
    rng = np.random.default_rng(seed)
    scores = np.stack([np.ones(n), (rng.random(n) < 0.5).astype(float)], axis=1)
    costs = np.stack([np.full(n, 0.01), np.zeros(n)], axis=1)
    return RoutingTable(
        prompt_ids=[f"p{i}" for i in range(n)],
        prompts=[f"q{i}" for i in range(n)],
        tasks=np.full(n, "t", dtype=object),
        models=["big", "small"],
        scores=scores,
        costs=costs,
        embeddings=rng.normal(size=(n, 16)).astype(np.float32),
    )


def test_bandits_are_registered_and_route_embeddings() -> None:
    assert set(BANDITS) <= set(ROUTERS)
    train, _ = cluster_table(300, 0)
    router = make_router("linucb", passes=1, seed=0)
    router.fit(train, 4e-4)
    choice = router.route(train.embeddings[:7], 0.2)  # embeddings in, no outcomes
    assert choice.shape == (7,) and choice.dtype == np.int64 and router.interactions_ == 300


@pytest.mark.parametrize("name", BANDITS)
def test_bandit_finds_each_clusters_best_model_from_bandit_feedback(name: str) -> None:
    train, _ = cluster_table(1500, 0)
    test, cluster = cluster_table(600, 1)
    router = make_router(name, passes=10, seed=0)
    router.fit(train, scale=4e-4)
    assert float(np.mean(router.route(test.embeddings, 0.0) == cluster)) > 0.85  # chance: 1/3
    # all-cost preference: the cheapest model everywhere
    assert float(np.mean(router.route(test.embeddings, 1.0) == 0)) > 0.9


@pytest.mark.parametrize("name", BANDITS)
def test_bandit_switches_at_the_analytic_preference(name: str) -> None:
    train, test = two_model_table(800, 0), two_model_table(200, 1)
    router = make_router(name, passes=10, seed=0)
    router.fit(train, scale=0.01)
    assert float(np.mean(router.route(test.embeddings, 0.1) == 0)) > 0.9  # r_big 0.8 > r_small 0.45
    assert float(np.mean(router.route(test.embeddings, 0.6) == 1)) > 0.9  # r_big -0.2 < r_small 0.2


@pytest.mark.parametrize("name", BANDITS)
def test_bandit_fit_is_seeded(name: str) -> None:
    train, _ = cluster_table(400, 0)
    test, _ = cluster_table(100, 1)
    a, b = make_router(name, passes=2, seed=3), make_router(name, passes=2, seed=3)
    a.fit(train, 4e-4)
    b.fit(train, 4e-4)
    assert np.array_equal(a.route(test.embeddings, 0.3), b.route(test.embeddings, 0.3))
    assert a.observed_reward_ == b.observed_reward_


def test_max_interactions_caps_the_log() -> None:
    train, _ = cluster_table(400, 0)
    router = make_router("eps_greedy", passes=5, max_interactions=123, seed=0)
    router.fit(train, 4e-4)
    assert router.interactions_ == 123


def test_linear_features_make_the_reward_linear() -> None:
    x, w = np.array([[2.0, -1.0]], dtype=np.float32), np.array([0.25])
    z = linear_features(x, w)
    assert z.tolist() == [[2.0, -1.0, 1.0, 0.5, -0.25, 0.25]]


def test_build_baselines_uses_the_registry_with_options() -> None:
    train, _ = cluster_table(300, 0)
    test, _ = cluster_table(100, 1)
    routers = build_baselines(
        train,
        4e-4,
        seed=1,
        include=("single", "oracle", "linucb", "eps_greedy"),
        options={"linucb": {"passes": 1}, "eps_greedy": {"passes": 1}},
    )
    assert set(routers) == {"single:a", "single:b", "single:c", "oracle", "linucb", "eps_greedy"}
    assert routers["eps_greedy"].seed == 1 and routers["linucb"].interactions_ == 300
    result = evaluate_routers(routers, test)
    assert result.routers["linucb"].kind == "linucb" and result.routers["oracle"].aiq >= result.routers["linucb"].aiq
