"""Evaluation: AIQ, cost_to_reach, baseline routers, evaluate_routers layout, report files (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from barp_ray.data.table import RoutingTable
from barp_ray.evaluation import (
    DEFAULT_W_GRID,
    ROUTERS,
    KNNRouter,
    OfflineMLPRouter,
    OracleRouter,
    RandomRouter,
    Router,
    SingleModelRouter,
    aiq,
    build_baselines,
    cost_to_reach,
    evaluate_routers,
    make_router,
    register,
    spearman,
    utility_argmax,
    write_loto_report,
    write_report,
)

MODELS = ["cheap/small", "mid/medium", "gpt-4-1106-preview"]
BASE_COST = np.array([1e-4, 5e-4, 5e-3])


def synthetic_table(n: int = 900, dim: int = 384, seed: int = 0) -> RoutingTable:
    """Three embedding clusters; model j is much better on cluster j; costs rise with the model index."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, dim)).astype(np.float32)
    cluster = rng.integers(0, 3, size=n)
    emb = centers[cluster] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    p = np.full((n, 3), 0.15)
    p[np.arange(n), cluster] = 0.95
    scores = (rng.random((n, 3)) < p).astype(np.float32)
    costs = BASE_COST * rng.uniform(0.5, 1.5, size=(n, 3))
    table = RoutingTable(
        prompt_ids=[f"p{i}" for i in range(n)],
        prompts=[f"prompt {i}" for i in range(n)],
        tasks=np.where(cluster == 0, "task-a", "task-b"),
        models=list(MODELS),
        scores=scores,
        costs=costs,
        embeddings=emb,
    )
    table.extra["cluster"] = cluster
    return table


@pytest.fixture(scope="module")
def split_tables() -> tuple[RoutingTable, RoutingTable, np.ndarray, float]:
    table = synthetic_table()
    cluster = table.extra["cluster"]
    train, test = table.take(np.arange(600)), table.take(np.arange(600, 900))
    tau = float(train.costs[:, 2].mean())
    return train, test, cluster[600:], tau


# ---- AIQ -------------------------------------------------------------------------------------------------
def test_aiq_single_point_matches_formula() -> None:
    assert aiq([0.5], [0.8], 0.0, 1.0) == pytest.approx(0.8 * 0.5)
    c_min, c_max, c_i, s_i = 1e-4, 5e-3, 1e-3, 0.7
    assert aiq([c_i], [s_i], c_min, c_max) == pytest.approx(s_i * (c_max - c_i) / (c_max - c_min))
    assert aiq([c_min], [s_i], c_min, c_max) == pytest.approx(s_i)
    assert aiq([c_max], [s_i], c_min, c_max) == pytest.approx(0.0)


def test_aiq_two_points() -> None:
    # trapezoid 0.2..0.6 = (0.4 + 0.8) / 2 * 0.4 = 0.24, then flat 0.8 over 0.6..1.0 = 0.32
    assert aiq([0.2, 0.6], [0.4, 0.8], 0.0, 1.0) == pytest.approx(0.56)
    # order of the points does not matter
    assert aiq([0.6, 0.2], [0.8, 0.4], 0.0, 1.0) == pytest.approx(0.56)


def test_aiq_hull_and_non_decreasing() -> None:
    # (0.4, 0.5) lies under the chord (0.2, 0.4)-(0.6, 0.8) -> no effect; (0.8, 0.7) is past the peak -> flat
    assert aiq([0.2, 0.4, 0.6, 0.8], [0.4, 0.5, 0.8, 0.7], 0.0, 1.0) == pytest.approx(0.56)
    # a point above the chord lifts the area: 0.2..0.4 -> 0.115, 0.4..0.6 -> 0.155, then flat 0.32
    assert aiq([0.2, 0.4, 0.6], [0.4, 0.75, 0.8], 0.0, 1.0) == pytest.approx(0.115 + 0.155 + 0.32)
    # duplicates at one cost keep the best score
    assert aiq([0.5, 0.5], [0.2, 0.8], 0.0, 1.0) == pytest.approx(0.4)


def test_aiq_points_outside_window() -> None:
    # cheaper than c_min: moved to c_min
    assert aiq([0.5], [0.6], 1.0, 2.0) == pytest.approx(0.6)
    # dearer than c_max alone: no operating point inside -> 0
    assert aiq([3.0], [0.9], 1.0, 2.0) == pytest.approx(0.0)
    # dearer than c_max: counts through the hull segment up to c_max. Segment (1, 0.4)-(3, 0.8) is 0.6 at 2.
    assert aiq([1.0, 3.0], [0.4, 0.8], 1.0, 2.0) == pytest.approx((0.4 + 0.6) / 2)
    # empty / degenerate window
    assert aiq([], [], 0.0, 1.0) == 0.0
    assert aiq([1.0, 2.0], [0.3, 0.9], 1.0, 1.0) == pytest.approx(0.3)


def test_cost_to_reach_and_spearman() -> None:
    pts = [(0.3, 0.5), (0.1, 0.4), (0.6, 0.9), (0.8, 0.95)]
    assert cost_to_reach(pts, 0.9) == pytest.approx(0.6)
    assert cost_to_reach(pts, 0.4) == pytest.approx(0.1)
    assert cost_to_reach(pts, 0.99) is None
    assert spearman([0, 0.5, 1], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([0, 0.5, 1], [2, 2, 2]) is None


def test_utility_argmax_ties_go_cheaper() -> None:
    q = np.array([[1.0, 1.0, 0.0]])
    c = np.array([[0.5, 0.1, 0.0]])
    assert utility_argmax(q, c, 0.0, 1.0).tolist() == [1]
    assert utility_argmax(q, c, 1.0, 1.0).tolist() == [2]


# ---- registry & routers --------------------------------------------------------------------------------
def test_registry() -> None:
    assert {"single", "random", "oracle", "offline_mlp", "knn"} <= set(ROUTERS)
    assert isinstance(make_router("knn", k=5), KNNRouter)
    with pytest.raises(ValueError):

        @register("knn")
        class Other(Router):
            def fit(self, train, tau):  # pragma: no cover
                pass

            def route(self, table, w_cost):  # pragma: no cover
                return np.zeros(len(table), dtype=np.int64)


def test_oracle_beats_every_single_model(split_tables) -> None:
    train, test, _, tau = split_tables
    oracle = OracleRouter()
    oracle.fit(train, tau)
    result = evaluate_routers({"oracle": oracle}, test)
    o = result.routers["oracle"]
    best_single = max(d["score"] for d in result.single_models.values())
    assert o.point_at(0.0).score > best_single
    assert o.aiq > max(d["aiq"] for d in result.single_models.values())
    assert o.point_at(1.0).cost <= min(d["cost"] for d in result.single_models.values())
    assert o.spearman_cost_vs_wc is not None and o.spearman_cost_vs_wc < -0.8


@pytest.mark.parametrize("router", [OfflineMLPRouter(seed=0, max_epochs=60), KNNRouter(k=15)], ids=str)
def test_learned_routers_find_cluster_best_model(split_tables, router) -> None:
    train, test, cluster, tau = split_tables
    router.fit(train, tau)
    acc = float(np.mean(router.route_table(test, 0.0) == cluster))
    assert acc > 0.85  # chance is 1/3
    # heavy cost weight: mostly the cheap model
    assert np.mean(router.route_table(test, 1.0) == 0) > 0.9


def test_offline_mlp_is_seeded_and_reports_cost_model(split_tables) -> None:
    train, test, _, tau = split_tables
    a, b = OfflineMLPRouter(seed=3, max_epochs=20), OfflineMLPRouter(seed=3, max_epochs=20)
    a.fit(train, tau)
    b.fit(train, tau)
    assert np.array_equal(a.route_table(test, 0.4), b.route_table(test, 0.4))
    assert a.cost_model_ in ("mean", "head")
    assert {"val_reward_mean", "val_reward_head", "cost_model"} <= set(a.val_report_)


def test_random_and_single(split_tables) -> None:
    train, test, _, tau = split_tables
    r = RandomRouter(seed=1)
    r.fit(train, tau)
    assert np.array_equal(r.route_table(test, 0.0), r.route_table(test, 1.0))
    s = SingleModelRouter("mid/medium")
    s.fit(train, tau)
    assert set(s.route_table(test, 0.3).tolist()) == {1}
    with pytest.raises(ValueError):
        SingleModelRouter("nope").fit(train, tau)


# ---- evaluate & report ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluation(split_tables):
    train, test, _, tau = split_tables
    routers = build_baselines(train, tau, include=("single", "random", "oracle", "knn"), knn_k=15)
    return evaluate_routers(routers, test, extra={"tau": tau})


def test_evaluate_json_layout(evaluation) -> None:
    d = json.loads(json.dumps(evaluation.to_json_dict(), allow_nan=False))
    assert d["w_grid"] == list(DEFAULT_W_GRID)
    assert d["largest_model"] == "gpt-4-1106-preview"
    assert d["cheapest_model"] == "cheap/small"
    assert {"oracle", "knn", "random", "single:cheap/small"} <= set(d["routers"])
    for r in d["routers"].values():
        assert {"aiq", "cost_to_reach_largest", "spearman_cost_vs_wc", "points"} <= set(r)
        assert list(r["points"]) == [f"{w:.1f}" for w in DEFAULT_W_GRID]
        for p in r["points"].values():
            assert {"score", "cost", "per_task", "choices"} <= set(p)
            assert set(p["per_task"]) == {"task-a", "task-b"}
            assert sum(p["choices"].values()) == evaluation.n_rows
    assert d["routers"]["random"]["spearman_cost_vs_wc"] is None
    single = d["routers"]["single:gpt-4-1106-preview"]
    assert single["cost_to_reach_largest"] == pytest.approx(single["points"]["0.0"]["cost"])
    assert d["routers"]["oracle"]["cost_to_reach_largest"] < single["cost_to_reach_largest"]


def test_report_files(evaluation, tmp_path) -> None:
    paths = write_report(
        evaluation,
        tmp_path,
        "synthetic",
        extra_sections={"Validation": "all rows kept"},
        loto={"task-a": evaluation, "task-b": evaluation},
    )
    png = paths["figure"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    md = paths["report"].read_text()
    assert "AIQ" in md and "`oracle`" in md and "## Validation" in md and "Leave-one-task-out" in md
    assert json.loads(paths["metrics"].read_text())["routers"]["oracle"]["aiq"] == pytest.approx(
        evaluation.routers["oracle"].aiq
    )
    loto = json.loads(paths["loto_metrics"].read_text())
    assert loto["mean_aiq"]["knn"] == pytest.approx(evaluation.routers["knn"].aiq)

    loto_paths = write_loto_report({"task-a": evaluation}, tmp_path / "loto")
    assert loto_paths["loto_metrics"].exists() and loto_paths["loto_report"].exists()
