"""The learned control variate (`training/critic.py`): an unbiased doubly robust gradient, a critic that learns
each model's outcome from bandit feedback alone, and a learner state that carries the critic."""

from __future__ import annotations

import pytest
import torch

from barp_ray.policy import BarpPolicy, PolicySpec, preference_tensor
from barp_ray.training.config import TrainConfig
from barp_ray.training.critic import doubly_robust_loss
from barp_ray.training.loop import PolicyData, ReinforceLearner


def test_doubly_robust_gradient_is_the_full_information_gradient_in_expectation():
    """E_{a ~ pi}[grad of the DR loss for a] == -grad sum_a pi(a) r(a), for any critic r_hat."""
    torch.manual_seed(0)
    k = 4
    theta = torch.randn(2, k, requires_grad=True)  # two prompts' logits
    r_true = torch.rand(2, k)
    r_hat = torch.rand(2, k)  # deliberately wrong critic

    def grad_of(loss: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad(loss, theta)
        return g

    probs = torch.softmax(theta, dim=-1)
    expected = torch.zeros_like(theta)
    for a in range(k):  # enumerate the sampled model instead of sampling it
        actions = torch.full((2, 1), a)
        log_probs = torch.log_softmax(theta, dim=-1)
        loss = doubly_robust_loss(
            torch.softmax(theta, dim=-1), log_probs.gather(1, actions), actions, r_true.gather(1, actions), r_hat
        )
        # weight each prompt's term by the probability that a was sampled for it (loss is a batch mean)
        expected += probs[:, a].detach().unsqueeze(1) * grad_of(loss)
    full_information = grad_of(-(torch.softmax(theta, dim=-1) * r_true).sum(dim=-1).mean())
    assert torch.allclose(expected, full_information, atol=1e-6)
    # and a perfect critic makes the correction term vanish: the gradient no longer depends on the sample
    perfect = [
        grad_of(
            doubly_robust_loss(
                torch.softmax(theta, dim=-1),
                torch.log_softmax(theta, dim=-1)[:, [a]],
                torch.full((2, 1), a),
                r_true[:, [a]],
                r_true,
            )
        )
        for a in range(k)
    ]
    assert all(torch.allclose(g, full_information, atol=1e-6) for g in perfect)


def _toy_data(n: int = 256, d: int = 16) -> PolicyData:
    """'big' always right at cost tau; 'small' right half the time, free (as in tests/test_policy.py)."""
    gen = torch.Generator().manual_seed(0)
    return PolicyData(
        embeddings=torch.randn(n, d, generator=gen),
        scores=torch.stack([torch.ones(n), (torch.rand(n, generator=gen) < 0.5).float()], dim=1),
        costs=torch.stack([torch.full((n,), 0.01), torch.zeros(n)], dim=1),
    )


def _learner(cfg: TrainConfig, d: int = 16) -> ReinforceLearner:
    torch.manual_seed(0)
    spec = PolicySpec(models=["big", "small"], tau=0.01, encoder="toy", embed_dim=d, pref_dim=8, hidden_dim=32)
    return ReinforceLearner(BarpPolicy(spec), cfg, scale=0.01, batch_size=128, seed=0)


@pytest.mark.parametrize("direct", [True, False])
def test_critic_learns_each_models_outcome_from_bandit_feedback_and_the_policy_the_switch(direct):
    data = _toy_data()
    cfg = TrainConfig(epochs=1, steps_per_epoch=300, batch_size=128, lr=3e-3, critic="mlp", critic_direct=direct)
    learner = _learner(cfg)
    for _ in range(cfg.total_steps):
        learner.step(data)
    x = data.embeddings
    assert (learner.policy.act(x, preference_tensor(0.0, len(x))) == 0).float().mean() > 0.95
    assert (learner.policy.act(x, preference_tensor(1.0, len(x))) == 1).float().mean() > 0.95
    q_hat, c_hat = learner.critic.predict(x)
    # big: always right, c~ = 0.01 / tau = 1; small: right half the time (per prompt 0 or 1), free
    assert q_hat[:, 0].mean() > 0.9 and c_hat[:, 0].mean() > 0.9
    assert abs(q_hat[:, 1].mean().item() - data.scores[:, 1].mean().item()) < 0.15 and c_hat[:, 1].mean() < 0.1


def test_learner_state_carries_the_critic():
    data = _toy_data()
    cfg = TrainConfig(epochs=1, steps_per_epoch=20, batch_size=128, critic="mlp")
    first = _learner(cfg)
    for _ in range(20):
        first.step(data)
    state = first.state_dict()
    assert "critic" in state
    second = _learner(cfg)
    second.policy.load_state_dict(first.policy.state_dict())
    second.load_state_dict(state)
    x = data.embeddings[:8]
    assert all(torch.equal(a, b) for a, b in zip(first.critic.predict(x), second.critic.predict(x), strict=True))
    # both continue identically (same policy, optimiser, critic and RNG state)
    assert first.step(data)["loss"] == second.step(data)["loss"]
    # without a critic the state has none, and the plain learner ignores one it is given
    plain = _learner(TrainConfig(epochs=1, steps_per_epoch=1, batch_size=128))
    assert plain.critic is None and "critic" not in plain.state_dict()
    plain.load_state_dict(state)


def test_in_process_training_with_the_critic_is_deterministic():
    """Same seed, same policy: the critic's initial weights come from the config's seed, not from whatever
    state the process's global RNG is in."""
    from test_policy import _toy_tables

    from barp_ray.training.bare import train_in_process

    train, val = _toy_tables()
    cfg = TrainConfig(passes=50, epochs=3, batch_size=64, hidden_dim=32, pref_dim=8, seed=3, critic="mlp")
    a = train_in_process(cfg, train, val, scale=0.01)
    torch.rand(7)  # move the global RNG on between the two runs
    b = train_in_process(cfg, train, val, scale=0.01)
    assert [h["val_reward"] for h in a.history] == [h["val_reward"] for h in b.history]
    for (ka, va), (kb, vb) in zip(a.policy.state_dict().items(), b.policy.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
