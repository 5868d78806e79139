"""Importance-weighted REINFORCE on logged bandit rows (CleanRL style: one readable step).

The on-policy learner samples a ~ pi and sees that model's outcome. Here the action was taken by the
*logging* rule with propensity mu(a | x, w_log); the policy-gradient of E_pi[r] is re-weighted:

    grad J = E_mu[ rho * (r - b) * grad log pi(a | x, w) ],   rho = pi(a | x, w) / mu(a | x, w_log)

rho is clipped at `clip` (clipped IPS) or, for SNIPS, divided by its batch mean (self-normalised: the
gradient of the SNIPS estimate, which removes the weights' scale and most of their variance). b is the
per-w-bin batch-mean baseline of the on-policy learner; it does not depend on the action, so the gradient
stays unbiased (up to clipping).

With `dr` (doubly robust), a reward model's prediction r_hat(x, a, w) for *every* model gives the exact
gradient of sum_a pi(a) r_hat (the direct method), and the clipped IPS term
rho * (r - r_hat(x, a_logged, w)) * grad log pi(a_logged) corrects the model's error on the logged model.

The score and cost of model a on prompt x do not depend on the caller's preference, so with
`resample_preferences` each step draws a fresh w per row: one logged answer trains the policy at every w.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from barp_ray.objective import CostScale, greedy_choice, reward, sample_preferences, w_grid
from barp_ray.offpolicy.estimators import importance_weights, snips
from barp_ray.offpolicy.logged import LoggedBandit
from barp_ray.policy.model import preference_tensor
from barp_ray.training.loop import advantages
from barp_ray.training.optim import PolicyOptimizer


@dataclass
class LoggedTensors:
    """A `LoggedBandit`'s columns as tensors on one device."""

    embeddings: torch.Tensor
    w_cost: torch.Tensor
    actions: torch.Tensor
    propensities: torch.Tensor
    scores: torch.Tensor
    costs: torch.Tensor
    predicted_scores: torch.Tensor | None = None
    predicted_costs: torch.Tensor | None = None

    @classmethod
    def from_logged(cls, data: LoggedBandit, device: str | torch.device = "cpu") -> LoggedTensors:
        def t(a, dtype=torch.float32):  # a copy: rows from Ray's object store are read-only views
            return torch.tensor(np.asarray(a), dtype=dtype, device=device)

        return cls(
            embeddings=t(data.embeddings),
            w_cost=t(data.w_cost),
            actions=t(data.actions, torch.long),
            propensities=t(data.propensities),
            scores=t(data.scores),
            costs=t(data.costs),
            predicted_scores=None if data.predicted_scores is None else t(data.predicted_scores),
            predicted_costs=None if data.predicted_costs is None else t(data.predicted_costs),
        )

    def __len__(self) -> int:
        return self.actions.shape[0]


def offpolicy_step(
    policy: nn.Module, opt: PolicyOptimizer, data: LoggedTensors, cfg, tau: float | CostScale, batch_size: int
) -> dict[str, float]:
    """One importance-weighted REINFORCE step on a batch of logged rows (clipped IPS, SNIPS or DR)."""
    n, device = batch_size, opt.device
    idx = torch.randint(len(data), (n,), generator=opt.generator, device=device)
    if cfg.resample_preferences:
        w_cost = sample_preferences(n, opt.generator, device, cfg.preference_sampling)
    else:
        w_cost = data.w_cost[idx]
    log_probs = torch.log_softmax(policy(data.embeddings[idx], preference_tensor(w_cost)), dim=-1)
    probs = log_probs.exp()
    actions = data.actions[idx]
    chosen_log_prob = log_probs.gather(1, actions.unsqueeze(1)).squeeze(1)

    rho = (chosen_log_prob.detach().exp() / data.propensities[idx]).clamp(max=cfg.clip)
    if cfg.weighting == "snips":
        rho = rho / rho.mean().clamp(min=1e-8)
    r = reward(data.scores[idx], data.costs[idx], w_cost, tau)
    entropy = -(probs * log_probs).sum(dim=-1).mean()
    beta = opt.beta
    if cfg.weighting == "dr":
        if data.predicted_scores is None:
            raise ValueError("weighting=dr needs the reward model's predictions (load_training_rows adds them)")
        r_hat = reward(data.predicted_scores[idx], data.predicted_costs[idx], w_cost.unsqueeze(1), tau)
        correction = rho * (r - r_hat.gather(1, actions.unsqueeze(1)).squeeze(1))
        objective = (probs * r_hat).sum(dim=-1) + correction.detach() * chosen_log_prob
        loss = -objective.mean() - beta * entropy
    else:
        advantage = advantages(r.unsqueeze(1), w_cost, cfg.baseline_bins, cfg.normalize_advantage).squeeze(1)
        loss = -(rho * advantage.detach() * chosen_log_prob).mean() - beta * entropy
    opt.apply(loss)
    return {
        "loss": loss.item(),
        "logged_reward": r.mean().item(),
        "entropy": entropy.item(),
        "beta": beta,
        "weight_mean": rho.mean().item(),
        "weight_max": rho.max().item(),
    }


class OffPolicyLearner:
    """Importance-weighted REINFORCE on logged rows: a `PolicyOptimizer` (shared with the on-policy learner:
    optimiser, schedules, RNG, checkpoint state) plus `offpolicy_step`."""

    def __init__(self, policy: nn.Module, cfg, tau: float | CostScale, batch_size: int, seed: int) -> None:
        self.policy, self.cfg, self.tau, self.batch_size = policy, cfg, tau, batch_size
        self.optim = PolicyOptimizer(policy, cfg, seed)

    @property
    def step_count(self) -> int:
        return self.optim.step_count

    @property
    def judged_policy(self) -> nn.Module:
        """What validation scores and checkpoints export (the weight average with `ema_epochs`)."""
        return self.optim.judged_policy

    def step(self, data: LoggedTensors) -> dict[str, float]:
        return offpolicy_step(self.policy, self.optim, data, self.cfg, self.tau, self.batch_size)

    def state_dict(self) -> dict:
        return self.optim.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optim.load_state_dict(state)


def greedy_probs(policy: nn.Module, embeddings: torch.Tensor, w_cost: float | np.ndarray) -> np.ndarray:
    """One-hot (N, K) of the policy's argmax at preference w_c (one value, or one per row): the served
    (greedy) rule (`barp_ray.objective.greedy_choice`) as probabilities."""
    choice = greedy_choice(policy, embeddings, w_cost).cpu().numpy()
    k = int(getattr(getattr(policy, "spec", None), "num_models", 0)) or int(choice.max()) + 1
    out = np.zeros((len(choice), k), dtype=np.float64)
    out[np.arange(len(choice)), choice] = 1.0
    return out


def heldout_metrics(
    policy: nn.Module, data: LoggedTensors, tau: float | CostScale, grid_points: int = 11
) -> dict[str, float]:
    """SNIPS estimates, on held-out logged rows, of the greedy policy's reward / score / cost over a w grid.

    `val_ope_reward` (mean over the grid) selects checkpoints: logs only, no full-information data.
    """
    actions = data.actions.cpu().numpy()
    mu = data.propensities.cpu().numpy()
    q = data.scores.cpu().numpy().astype(np.float64)
    c = data.costs.cpu().numpy().astype(np.float64)
    rewards, scores, costs = [], [], []
    for wc in w_grid(grid_points):
        rho = importance_weights(greedy_probs(policy, data.embeddings, wc), actions, mu)
        rewards.append(snips(reward(q, c, wc, tau), rho))
        if wc in (0.0, 1.0):
            scores.append(snips(q, rho))
            costs.append(snips(c, rho))
    return {
        "val_ope_reward": float(np.nanmean(rewards)),
        "val_ope_score_wc0": scores[0],
        "val_ope_cost_wc0": costs[0],
        "val_ope_score_wc1": scores[1],
        "val_ope_cost_wc1": costs[1],
    }
