"""The objective module: one reward, tau rules, largest-model rule, greedy curve (used by every consumer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from barp_ray.objective import (
    LARGEST_MODEL,
    CostScale,
    as_cost_scale,
    build_cost_scale,
    derive_cost_floor,
    derive_tau,
    greedy_choice,
    greedy_curve,
    largest_model,
    normalized_cost,
    reward,
    w_grid,
)
from barp_ray.policy.model import BarpPolicy, PolicySpec


def test_reward_same_on_tensors_and_arrays() -> None:
    q, c = np.array([1.0, 0.0, 0.5]), np.array([0.02, 0.0, 0.005])
    r_np = reward(q, c, 0.5, 0.01)
    r_t = reward(torch.tensor(q), torch.tensor(c), 0.5, 0.01)
    np.testing.assert_allclose(r_np, [0.5 * 1 - 0.5 * 1.0, 0.0, 0.25 - 0.25])  # c~ clipped at 1
    np.testing.assert_allclose(r_t.numpy(), r_np)
    assert float(normalized_cost(np.array([0.05]), 0.01)[0]) == 1.0


def test_log_cost_scale_weighs_cost_ratios_equally() -> None:
    scale = CostScale(tau=0.01, floor=1e-4)
    c = np.array([1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.0])
    np.testing.assert_allclose(scale.normalize(c), [0.0, 0.0, 0.5, 1.0, 1.0, 0.0], atol=1e-12)  # clipped both ends
    np.testing.assert_allclose(scale.normalize(torch.tensor(c)).numpy(), scale.normalize(c))
    # a 4x cheaper model gains the same c~ at the cheap end as at the dear end (linear: 100x less at the cheap end)
    np.testing.assert_allclose(
        np.diff(scale.normalize(np.array([1e-4, 4e-4]))), np.diff(scale.normalize(np.array([2.5e-3, 1e-2])))
    )
    assert reward(1.0, 1e-3, 0.5, scale) == pytest.approx(0.5 - 0.25)
    assert scale.kind == "log" and "floor" in scale.describe()


def test_linear_cost_scale_is_the_papers_and_a_bare_number_means_it() -> None:
    c = np.array([0.0, 0.005, 0.02])
    assert as_cost_scale(0.01) == CostScale(0.01) and CostScale(0.01).kind == "linear"
    np.testing.assert_allclose(normalized_cost(c, 0.01), np.minimum(c / 0.01, 1.0))
    np.testing.assert_allclose(normalized_cost(c, CostScale(0.01)), normalized_cost(c, 0.01))


def test_cost_scale_validation_and_floor_rule() -> None:
    with pytest.raises(ValueError, match="floor < tau"):
        CostScale(tau=0.01, floor=0.02)
    with pytest.raises(ValueError, match="positive finite"):
        CostScale(tau=float("inf"))
    cheap = np.linspace(1e-4, 2e-4, 101)  # the cheapest model by mean cost; its 1st percentile is the floor
    costs = np.stack([cheap, cheap * 50], axis=1)
    assert derive_cost_floor(costs, tau=0.01) == pytest.approx(np.quantile(cheap, 0.01))
    free = np.stack([np.zeros(5), np.full(5, 1e-3)], axis=1)  # a free model: the smallest positive cost
    assert derive_cost_floor(free, tau=0.01) == pytest.approx(1e-3)
    assert derive_cost_floor(np.full((3, 2), 0.02), tau=0.01) == pytest.approx(1e-5)  # floor >= tau: tau / 1000
    log_scale = build_cost_scale(costs, "log")
    assert log_scale.tau == pytest.approx(derive_tau(costs)) and log_scale.floor == pytest.approx(
        np.quantile(cheap, 0.01)
    )
    assert build_cost_scale(costs, "linear") == CostScale(derive_tau(costs))
    assert build_cost_scale(None, "log", tau=0.01, floor=1e-4) == CostScale(0.01, 1e-4)
    with pytest.raises(ValueError, match="needs `cost_floor`"):
        build_cost_scale(None, "log", tau=0.01)


def test_policy_spec_records_its_cost_scale() -> None:
    spec = PolicySpec(models=["a", "b"], tau=0.01, encoder="toy")  # a checkpoint from before cost_floor: linear
    assert spec.cost_scale == CostScale(0.01)
    spec = PolicySpec.model_validate({**spec.model_dump(), "cost_floor": 1e-4})
    assert spec.cost_scale == CostScale(0.01, 1e-4)


def test_tau_rules_and_errors() -> None:
    costs = np.array([[0.01, 0.001], [0.03, 0.002]])
    assert derive_tau(costs, "max_cost") == 0.03
    assert derive_tau(costs, "max_mean_cost") == pytest.approx(0.02)
    assert derive_tau(costs, "median_max_cost") == pytest.approx(0.02)
    with pytest.raises(ValueError, match="unknown tau rule"):
        derive_tau(costs, "nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not positive"):
        derive_tau(np.zeros((3, 2)))


def test_largest_model_rule() -> None:
    costs = np.array([[0.1, 0.5, 0.2]])
    assert largest_model(["a", "b", "c"], costs) == "b"
    assert largest_model(["a", LARGEST_MODEL, "c"], np.array([[9.0, 0.1, 0.2]])) == LARGEST_MODEL


def test_w_grid() -> None:
    np.testing.assert_allclose(w_grid(11), np.round(np.arange(11) / 10, 6))
    with pytest.raises(ValueError):
        w_grid(1)


def _policy_preferring(model_at_wc0: int, model_at_wc1: int) -> BarpPolicy:
    """A linear-head policy whose argmax is `model_at_wc0` at w_c = 0 and `model_at_wc1` at w_c = 1."""
    spec = PolicySpec(models=["a", "b", "c"], tau=0.01, encoder="toy", embed_dim=4, pref_dim=2, head="linear")
    policy = BarpPolicy(spec)
    with torch.no_grad():
        for p in policy.parameters():
            p.zero_()
        # phi(w) = relu(W2 relu(W1 w)): make phi = (w_q, w_c)
        policy.phi.net[0].weight.copy_(torch.eye(2))
        policy.phi.net[2].weight.copy_(torch.eye(2))
        policy.head.weight[model_at_wc0, 4] = 1.0  # logit from w_q
        policy.head.weight[model_at_wc1, 5] = 1.0  # logit from w_c
    return policy.train()


def test_greedy_choice_and_curve() -> None:
    policy = _policy_preferring(0, 2)
    emb = torch.randn(5, 4)
    assert greedy_choice(policy, emb, 0.0).tolist() == [0] * 5
    assert greedy_choice(policy, emb, np.array([0.0, 1.0, 0.0, 1.0, 0.2])).tolist() == [0, 2, 0, 2, 0]
    assert policy.training, "greedy_choice restores the module's mode"
    scores = np.tile([1.0, 0.5, 0.0], (5, 1))
    costs = np.tile([0.02, 0.01, 0.001], (5, 1))
    curve = greedy_curve(policy, emb.numpy(), scores, costs, [0.0, 1.0], scale=0.01)
    np.testing.assert_allclose(curve.score, [1.0, 0.0])
    np.testing.assert_allclose(curve.cost, [0.02, 0.001])
    np.testing.assert_allclose(curve.reward, [1.0, -0.1])
    np.testing.assert_allclose(curve.largest_share, [1.0, 0.0])  # model 0 is the dearest
    assert curve.choices.shape == (2, 5)


def test_consumers_share_the_objective() -> None:
    """Training, evaluation, calibration and off-policy compute the same numbers from the same helpers."""
    from barp_ray.evaluation.routers import normalised_cost, realised_reward
    from barp_ray.offpolicy.learner import greedy_probs
    from barp_ray.serving.calibration import calibrate
    from barp_ray.training.loop import PolicyData
    from barp_ray.training.loop import greedy_curve as train_curve

    policy = _policy_preferring(0, 2)
    emb = torch.randn(6, 4)
    scores = np.tile([1.0, 0.5, 0.0], (6, 1))
    costs = np.tile([0.02, 0.01, 0.001], (6, 1))
    data = PolicyData(
        embeddings=emb, scores=torch.tensor(scores, dtype=torch.float32), costs=torch.tensor(costs, dtype=torch.float32)
    )
    t = train_curve(policy, data, np.array([0.0, 1.0]))
    cal = calibrate(policy, emb.numpy(), scores, costs, ["a", "b", "c"], grid_points=2)
    assert [r.mean_score for r in cal.rows] == pytest.approx(list(t["score"]))
    assert [r.mean_cost for r in cal.rows] == pytest.approx(list(t["cost"]))
    assert cal.largest_model == "a"
    assert greedy_probs(policy, emb, 1.0)[:, 2].tolist() == [1.0] * 6
    np.testing.assert_allclose(normalised_cost(costs, 0.01), normalized_cost(costs, 0.01))

    from barp_ray.data.table import RoutingTable

    table = RoutingTable(
        prompt_ids=np.arange(6).astype(str),
        prompts=[""] * 6,
        tasks=np.full(6, "t"),
        models=["a", "b", "c"],
        scores=scores,
        costs=costs,
    )
    assert realised_reward(table, np.zeros(6, dtype=int), 0.0, 0.01) == pytest.approx(t["reward"][0])


def test_preference_sampling_distributions():
    import math

    import torch

    from barp_ray.objective import sample_preferences

    uniform = sample_preferences(100_000, torch.Generator().manual_seed(0))
    arcsine = sample_preferences(100_000, torch.Generator().manual_seed(0), distribution="arcsine")
    assert 0.0 <= float(arcsine.min()) and float(arcsine.max()) <= 1.0
    # Beta(1/2, 1/2): P(w_c > 0.9) = 1 - (2 / pi) asin(sqrt(0.9)) ~ 0.205, against 0.1 when uniform
    expected = 1 - 2 / math.pi * math.asin(math.sqrt(0.9))
    assert abs(float((arcsine > 0.9).float().mean()) - expected) < 0.01
    assert abs(float((uniform > 0.9).float().mean()) - 0.1) < 0.01
    assert abs(float(arcsine.mean()) - 0.5) < 0.01  # symmetric about the middle of the dial
