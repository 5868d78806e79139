"""Policy shapes, checkpoints, reward, and the REINFORCE update's direction on a toy problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from barp_ray.policy import BarpPolicy, PolicySpec, load_policy, preference_tensor, save_policy
from barp_ray.training.config import TrainConfig
from barp_ray.training.loop import PolicyData, ReinforceLearner, advantages, greedy_curve
from barp_ray.training.reward import derive_tau, normalized_cost, reward

MODELS = ["big", "small", "mid"]


def _spec(head="mlp", k=3, d=16) -> PolicySpec:
    return PolicySpec(models=MODELS[:k], tau=0.01, encoder="test", embed_dim=d, pref_dim=8, hidden_dim=32, head=head)


@pytest.mark.parametrize("head", ["mlp", "linear", "bilinear"])
def test_policy_shapes_and_probabilities(head):
    policy = BarpPolicy(_spec(head))
    x, w = torch.randn(5, 16), preference_tensor(torch.rand(5))
    logits = policy(x, w)
    assert logits.shape == (5, 3)
    probs = policy.probabilities(x, w)
    assert torch.allclose(probs.sum(-1), torch.ones(5))
    assert policy.act(x, w).shape == (5,)


def test_preference_tensor_is_on_the_simplex_and_rejects_bad_values():
    w = preference_tensor(0.25, 3)
    assert w.shape == (3, 2) and torch.allclose(w.sum(-1), torch.ones(3)) and float(w[0, 1]) == 0.25
    with pytest.raises(ValueError, match="w_cost"):
        preference_tensor(1.5, 2)


def test_checkpoint_round_trip_is_self_describing(tmp_path):
    policy = BarpPolicy(_spec("bilinear"))
    save_policy(policy, tmp_path / "ckpt", extra={"epoch": 3})
    loaded = load_policy(tmp_path / "ckpt")
    assert loaded.spec == policy.spec and loaded.spec.models == MODELS and loaded.spec.tau == 0.01
    x, w = torch.randn(4, 16), preference_tensor(0.5, 4)
    policy.eval()
    assert torch.allclose(policy(x, w), loaded(x, w))
    with pytest.raises(FileNotFoundError, match="policy.json"):
        load_policy(tmp_path)


def test_reward_and_tau():
    assert reward(1.0, 0.005, 0.0, 0.01) == 1.0
    assert reward(1.0, 0.005, 1.0, 0.01) == -0.5
    assert float(normalized_cost(np.array([0.05]), 0.01)[0]) == 1.0  # clipped at 1
    costs = np.array([[0.001, 0.01], [0.003, 0.03]])
    assert derive_tau(costs, "max_cost") == 0.03
    assert derive_tau(costs, "p99_top_model") == pytest.approx(np.quantile([0.01, 0.03], 0.99))
    assert derive_tau(costs, "max_mean_cost") == pytest.approx(0.02)
    with pytest.raises(ValueError, match="tau rule"):
        derive_tau(costs, "nope")


def test_binned_baseline_centres_each_preference_bin():
    r = torch.tensor([[1.0], [0.0], [-1.0], [-0.5]])
    w = torch.tensor([0.05, 0.05, 0.95, 0.95])
    adv = advantages(r, w, bins=10, normalize=False).squeeze(1)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.25, 0.25]))
    plain = advantages(r, w, bins=1, normalize=False).squeeze(1)
    assert torch.allclose(plain, r.squeeze(1) - r.mean())


def test_reinforce_learns_better_model_at_wc0_and_cheaper_at_wc1():
    """Two models: 'big' always right but costs tau; 'small' right half the time for free."""
    gen = torch.Generator().manual_seed(0)
    n, d = 256, 16
    data = PolicyData(
        embeddings=torch.randn(n, d, generator=gen),
        scores=torch.stack([torch.ones(n), (torch.rand(n, generator=gen) < 0.5).float()], dim=1),
        costs=torch.stack([torch.full((n,), 0.01), torch.zeros(n)], dim=1),
    )
    spec = PolicySpec(models=["big", "small"], tau=0.01, encoder="toy", embed_dim=d, pref_dim=8, hidden_dim=32)
    torch.manual_seed(0)
    policy = BarpPolicy(spec)
    cfg = TrainConfig(epochs=1, steps_per_epoch=300, batch_size=128, lr=3e-3, beta_start=0.1, beta_end=0.005)
    learner = ReinforceLearner(policy, cfg, tau=0.01, batch_size=128, seed=0)
    before = greedy_curve(policy, data, np.array([0.0, 1.0]))
    for _ in range(cfg.total_steps):
        learner.step(data)
    x = data.embeddings
    pick_wc0 = policy.act(x, preference_tensor(0.0, n))
    pick_wc1 = policy.act(x, preference_tensor(1.0, n))
    # r_big = 1 - 2 w_c, r_small = 0.5 (1 - w_c): big is better below w_c = 1/3, small above.
    assert (pick_wc0 == 0).float().mean() > 0.95, "quality-only preference must pick the better model"
    assert (pick_wc1 == 1).float().mean() > 0.95, "cost-only preference must pick the cheaper model"
    after = greedy_curve(policy, data, np.array([0.0, 1.0]))
    assert after["reward"][0] >= before["reward"][0] and after["reward"][1] >= before["reward"][1]
