"""The REINFORCE learner: one readable policy-gradient step on in-memory data (CleanRL style).

Ray Train workers and the bare single-process benchmark both run exactly this code; only the wiring
around it (DDP, data shards, checkpoints) differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from barp_ray.data.table import RoutingTable
from barp_ray.policy.model import BarpPolicy, PolicySpec, preference_tensor
from barp_ray.training.config import TrainConfig
from barp_ray.training.reward import reward, sample_preferences


@dataclass
class PolicyData:
    """A table's embeddings, scores and costs as tensors on one device."""

    embeddings: torch.Tensor  # (N, D)
    scores: torch.Tensor  # (N, K)
    costs: torch.Tensor  # (N, K)

    @classmethod
    def from_table(cls, table: RoutingTable, device: str | torch.device = "cpu") -> PolicyData:
        if table.embeddings is None:
            raise ValueError("table has no embeddings: run `barp embed` on the prepared data first")
        return cls(
            embeddings=torch.as_tensor(table.embeddings, dtype=torch.float32, device=device),
            scores=torch.as_tensor(table.scores, dtype=torch.float32, device=device),
            costs=torch.as_tensor(table.costs, dtype=torch.float32, device=device),
        )

    def __len__(self) -> int:
        return self.embeddings.shape[0]


def policy_spec(cfg: TrainConfig, models: list[str], tau: float, encoder: str, embed_dim: int) -> PolicySpec:
    """The policy architecture a config asks for."""
    return PolicySpec(
        models=models, tau=tau, encoder=encoder, embed_dim=embed_dim, pref_dim=cfg.pref_dim,
        hidden_dim=cfg.hidden_dim, head=cfg.head, dropout=cfg.dropout,
    )


def entropy_coefficient(cfg: TrainConfig, step: int) -> float:
    """beta(t): linear decay from beta_start to beta_end over beta_decay_fraction of training."""
    horizon = max(1, int(cfg.beta_decay_fraction * cfg.total_steps))
    frac = min(1.0, step / horizon)
    return cfg.beta_start + (cfg.beta_end - cfg.beta_start) * frac


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Cosine decay from lr to lr * lr_final_fraction."""
    frac = min(1.0, step / max(1, cfg.total_steps))
    floor = cfg.lr * cfg.lr_final_fraction
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * frac))


def advantages(r: torch.Tensor, w_cost: torch.Tensor, bins: int, normalize: bool) -> torch.Tensor:
    """(r - b) with b the batch-mean baseline computed within `bins` equal-width bins of w_c.

    Rewards at different preferences live on different scales (r is about q at w_c ~ 0 and about -c~ at
    w_c ~ 1), so one batch mean mostly measures *which w was drawn*, not *which model was good*, and that
    variance drowns the action signal. Binning by w_c removes it; `normalize` also divides by each bin's
    std so that every preference region gets the same gradient scale. bins=1 is the plain batch mean.
    b never depends on the action, so the gradient stays unbiased.
    """
    n, m = r.shape
    bin_id = torch.clamp((w_cost * bins).long(), max=bins - 1) if bins > 1 else torch.zeros_like(w_cost).long()
    flat_bin = bin_id.repeat_interleave(m)
    flat_r = r.reshape(-1)
    counts = torch.zeros(bins, device=r.device).index_add_(0, flat_bin, torch.ones_like(flat_r)).clamp(min=1)
    mean = torch.zeros(bins, device=r.device).index_add_(0, flat_bin, flat_r) / counts
    centered = flat_r - mean[flat_bin]
    if normalize:
        var = torch.zeros(bins, device=r.device).index_add_(0, flat_bin, centered**2) / counts
        centered = centered / (var.sqrt()[flat_bin] + 1e-3)
    return centered.reshape(n, m)


class ReinforceLearner:
    """REINFORCE with a batch-mean baseline and an entropy bonus, on bandit feedback only.

    Each step draws a batch of prompts, a preference w per example (uniform on the simplex), samples a
    model a ~ pi(.|x, w), and reads *only that model's* score and cost from the log.
    """

    def __init__(self, policy: nn.Module, cfg: TrainConfig, tau: float, batch_size: int, seed: int) -> None:
        self.policy = policy
        self.cfg = cfg
        self.tau = tau
        self.batch_size = batch_size
        params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.device = next(policy.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.step_count = 0

    def step(self, data: PolicyData) -> dict[str, float]:
        cfg, n = self.cfg, self.batch_size
        idx = torch.randint(len(data), (n,), generator=self.generator, device=self.device)
        w_cost = sample_preferences(n, self.generator, self.device)
        logits = self.policy(data.embeddings[idx], preference_tensor(w_cost))
        log_probs = torch.log_softmax(logits, dim=-1)
        probs = log_probs.exp()

        m = cfg.samples_per_prompt
        actions = torch.multinomial(probs.detach(), m, replacement=True, generator=self.generator)  # (n, m)
        q = data.scores[idx].gather(1, actions)  # bandit feedback: only the chosen model's outcome
        c = data.costs[idx].gather(1, actions)
        r = reward(q, c, w_cost.unsqueeze(1), self.tau)
        advantage = advantages(r, w_cost, cfg.baseline_bins, cfg.normalize_advantage)
        chosen_log_prob = log_probs.gather(1, actions)
        entropy = -(probs * log_probs).sum(dim=-1).mean()
        beta = entropy_coefficient(cfg, self.step_count)
        loss = -(advantage.detach() * chosen_log_prob).mean() - beta * entropy
        self.apply(loss)
        return {"loss": loss.item(), "reward": r.mean().item(), "entropy": entropy.item(), "beta": beta}

    def apply(self, loss: torch.Tensor) -> None:
        """One optimizer step on `loss`: scheduled lr, clipped gradients, step counter."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, self.step_count)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.step_count += 1

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "step_count": self.step_count,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step_count"])
        self.generator.set_state(state["generator"].cpu())  # RNG state is a CPU ByteTensor


@torch.no_grad()
def greedy_curve(policy: BarpPolicy, data: PolicyData, w_grid: np.ndarray) -> dict[str, np.ndarray]:
    """Mean score, cost and reward of argmax routing at each w_c of the grid."""
    was_training = policy.training
    policy.eval()
    tau = policy.spec.tau
    scores, costs, rewards = [], [], []
    rows = torch.arange(len(data), device=data.embeddings.device)
    for wc in w_grid:
        w = preference_tensor(float(wc), len(data), device=data.embeddings.device)
        choice = policy(data.embeddings, w).argmax(dim=-1)
        q, c = data.scores[rows, choice], data.costs[rows, choice]
        scores.append(float(q.mean()))
        costs.append(float(c.mean()))
        rewards.append(float(reward(q, c, float(wc), tau).mean()))
    policy.train(was_training)
    return {"w_cost": np.asarray(w_grid), "score": np.array(scores), "cost": np.array(costs),
            "reward": np.array(rewards)}


def validation_metrics(policy: BarpPolicy, data: PolicyData, grid_points: int = 11) -> dict[str, float]:
    """`val_reward` (mean greedy reward over the w grid) and `val_aiq` on the validation split."""
    from barp_ray.evaluation.metrics import aiq

    curve = greedy_curve(policy, data, np.linspace(0.0, 1.0, grid_points))
    single_costs = data.costs.mean(dim=0).cpu().numpy()
    out = {
        "val_reward": float(curve["reward"].mean()),
        "val_aiq": float(aiq(curve["cost"], curve["score"], float(single_costs.min()), float(single_costs.max()))),
        "val_score_wc0": float(curve["score"][0]),
        "val_cost_wc0": float(curve["cost"][0]),
        "val_score_wc1": float(curve["score"][-1]),
        "val_cost_wc1": float(curve["cost"][-1]),
    }
    return out
