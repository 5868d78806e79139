"""The REINFORCE learner: one readable policy-gradient step on in-memory data (CleanRL style).

Ray Train workers and the bare single-process benchmark both run exactly this code; only the wiring
around it (DDP, data shards, checkpoints) differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from barp_ray.data.table import RoutingTable
from barp_ray.objective import (
    CostScale,
    as_cost_scale,
    normalized_cost,
    reward,
    sample_preferences,
    scalarized_reward,
    w_grid,
)
from barp_ray.objective import greedy_curve as objective_greedy_curve
from barp_ray.policy.model import BarpPolicy, PolicySpec, preference_tensor
from barp_ray.training.config import TrainConfig
from barp_ray.training.critic import CriticLearner, doubly_robust_loss
from barp_ray.training.optim import PolicyOptimizer

if TYPE_CHECKING:
    from barp_ray.training.ingest import StreamingPolicyData


@dataclass
class PolicyData:
    """A table's embeddings, scores and costs as tensors on one device."""

    embeddings: torch.Tensor  # (N, D)
    scores: torch.Tensor  # (N, K)
    costs: torch.Tensor  # (N, K)

    @classmethod
    def from_table(cls, table: RoutingTable, device: str | torch.device = "cpu") -> PolicyData:
        """Tensors of `table` in a canonical row order (sorted by prompt id, then prompt text): the same data
        gives the same tensors whatever order Ray Data delivered its blocks in, so a seed fixes the run."""
        if table.embeddings is None:
            raise ValueError("table has no embeddings: run `barp embed` on the prepared data first")
        order = canonical_order(table)
        # token ids stay integers; token states (N, T, D) stay float16 (the policy pools them in float32)
        if np.issubdtype(table.embeddings.dtype, np.integer):
            dtype = torch.long
        else:
            dtype = torch.float32 if table.embeddings.ndim == 2 else torch.float16
        return cls(
            embeddings=torch.as_tensor(table.embeddings[order], dtype=dtype, device=device),
            scores=torch.as_tensor(table.scores[order], dtype=torch.float32, device=device),
            costs=torch.as_tensor(table.costs[order], dtype=torch.float32, device=device),
        )

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """`n` rows drawn uniformly with replacement: (embeddings, scores, costs). The one call the REINFORCE
        step makes for its batch (`training.ingest.StreamingPolicyData` answers it for streamed shards)."""
        idx = torch.randint(len(self), (n,), generator=generator, device=self.embeddings.device)
        return self.embeddings[idx], self.scores[idx], self.costs[idx]


def canonical_order(table: RoutingTable) -> np.ndarray:
    """Row order by (prompt id, prompt text): independent of how the rows were read or sharded."""
    keys = [f"{pid}\x00{prompt}" for pid, prompt in zip(table.prompt_ids, table.prompts, strict=True)]
    return np.asarray(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)


def set_deterministic(num_threads: int = 1) -> None:
    """Deterministic CPU torch: fixed intra-op threads and deterministic kernels (same seed, same numbers)."""
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def policy_spec(
    cfg: TrainConfig, models: list[str], scale: float | CostScale, encoder: str, embed_dim: int
) -> PolicySpec:
    """The policy architecture a config asks for, with the reward's cost scale it is trained on."""
    scale = as_cost_scale(scale)
    return PolicySpec(
        models=models,
        tau=scale.tau,
        cost_floor=scale.floor,
        encoder=encoder,
        embed_dim=embed_dim,
        pref_dim=cfg.pref_dim,
        hidden_dim=cfg.hidden_dim,
        head=cfg.head,
        dropout=cfg.dropout,
        pooling=cfg.pooling,
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


def advantages(
    r: torch.Tensor, w_cost: torch.Tensor, bins: int, normalize: bool, leave_one_out: bool = False
) -> torch.Tensor:
    """(r - b) for rewards r (n, m) of m models sampled per (x, w), with b the batch-mean baseline computed
    within `bins` equal-width bins of w_c, or (`leave_one_out`, m >= 2) the mean of the row's other samples.

    Rewards at different preferences live on different scales (r is about q at w_c ~ 0 and about -c~ at
    w_c ~ 1), so one batch mean mostly measures *which w was drawn*, not *which model was good*, and that
    variance drowns the action signal. Binning by w_c removes it; `normalize` also divides by each bin's
    std so that every preference region gets the same gradient scale. bins=1 is the plain batch mean. The
    leave-one-out baseline also removes *which prompt was drawn* (one every model fails, one every model
    solves). b never depends on the action it centres, so the gradient stays unbiased.
    """
    n, m = r.shape
    bin_id = torch.clamp((w_cost * bins).long(), max=bins - 1) if bins > 1 else torch.zeros_like(w_cost).long()
    flat_bin = bin_id.repeat_interleave(m)
    flat_r = r.reshape(-1)
    counts = torch.zeros(bins, device=r.device).index_add_(0, flat_bin, torch.ones_like(flat_r)).clamp(min=1)
    if leave_one_out and m > 1:
        centered = (r - (r.sum(dim=1, keepdim=True) - r) / (m - 1)).reshape(-1)
    else:
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

    def __init__(
        self, policy: nn.Module, cfg: TrainConfig, scale: float | CostScale, batch_size: int, seed: int
    ) -> None:
        self.policy = policy
        self.cfg = cfg
        self.scale = as_cost_scale(scale)
        self.batch_size = batch_size
        # optimiser, lr / entropy schedules, RNG and step count: shared with the off-policy learner
        self.optim = PolicyOptimizer(policy, cfg, seed)
        self.device = self.optim.device
        self.critic = None
        if cfg.critic == "mlp":
            spec = getattr(policy, "module", policy).spec  # DDP wraps the policy
            self.critic = CriticLearner(
                spec.embed_dim,
                len(spec.models),
                cfg.critic_hidden_dim,
                cfg.critic_lr,
                cfg.critic_weight_decay,
                self.device,
                seed=cfg.seed,  # not the per-rank sampling seed: every DDP rank starts from the same critic
            )

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.optim.optimizer

    @property
    def generator(self) -> torch.Generator:
        return self.optim.generator

    @property
    def step_count(self) -> int:
        return self.optim.step_count

    @property
    def judged_policy(self) -> nn.Module:
        """What validation scores and checkpoints export (the weight average with `ema_epochs`)."""
        return self.optim.judged_policy

    def step(self, data: PolicyData | StreamingPolicyData) -> dict[str, float]:
        """One update from `batch_size` prompts x `samples_per_prompt` sampled models (bandit feedback).

        With ``w_samples = M > 1`` each observed (a, q, c) also trains the policy at M - 1 further preferences
        w' (free: q and c do not depend on w): the term is importance-weighted by pi(a|x,w') / pi(a|x,w),
        clipped at `ratio_clip`, since a was drawn under w.
        """
        cfg, n = self.cfg, self.batch_size
        x, q_all, c_all = data.sample(n, self.generator)
        w_cost = sample_preferences(n, self.generator, self.device, self.cfg.preference_sampling)
        logits = self.policy(x, preference_tensor(w_cost))
        log_probs = torch.log_softmax(logits, dim=-1)
        probs = log_probs.exp()

        m = cfg.samples_per_prompt
        actions = torch.multinomial(probs.detach(), m, replacement=True, generator=self.generator)  # (n, m)
        q = q_all.gather(1, actions)  # bandit feedback: only the chosen model's outcome
        c = c_all.gather(1, actions)
        c_scaled = normalized_cost(c, self.scale)
        r = scalarized_reward(q, c_scaled, w_cost.unsqueeze(1))
        advantage = advantages(r, w_cost, cfg.baseline_bins, cfg.normalize_advantage, cfg.leave_one_out)
        chosen_log_prob = log_probs.gather(1, actions)
        entropy = -(probs * log_probs).sum(dim=-1).mean()
        beta = entropy_coefficient(cfg, self.step_count)
        if self.critic is None:
            pg = -(advantage.detach() * chosen_log_prob).mean()
        else:
            pg = self._critic_loss(x, w_cost, probs, actions, q, c_scaled, r, chosen_log_prob)
        if cfg.w_samples > 1:
            pg = (pg + self._rescalarised_loss(x, actions, q, c, chosen_log_prob.detach())) / cfg.w_samples
        loss = pg - beta * entropy
        self.apply(loss)
        return {"loss": loss.item(), "reward": r.mean().item(), "entropy": entropy.item(), "beta": beta}

    def _critic_loss(self, x, w_cost, probs, actions, q, c_scaled, r, chosen_log_prob) -> torch.Tensor:
        """The policy-gradient loss with the critic (`critic_direct`: doubly robust; else the critic's value
        as the baseline); then one critic step on the observed outcomes (after scoring, so the batch's own
        outcomes never enter its r_hat)."""
        q_hat, c_hat = self.critic.predict(x)
        r_hat = scalarized_reward(q_hat, c_hat, w_cost.unsqueeze(1))  # (n, K): every model's, as predicted
        if self.cfg.critic_direct:
            loss = doubly_robust_loss(probs, chosen_log_prob, actions, r, r_hat)
        else:
            value = (probs.detach() * r_hat).sum(dim=-1, keepdim=True)
            loss = -((r - value) * chosen_log_prob).mean()
        self.critic.fit(x, actions, q, c_scaled)
        return loss

    def _rescalarised_loss(self, x, actions, q, c, behaviour_log_prob) -> torch.Tensor:
        """Sum over M - 1 fresh preferences of the clipped importance-weighted policy-gradient loss."""
        cfg, n = self.cfg, x.shape[0]
        extra = cfg.w_samples - 1
        w2 = sample_preferences(n * extra, self.generator, self.device, self.cfg.preference_sampling)  # (n * extra,)
        log_probs = torch.log_softmax(self.policy(x.repeat(extra, 1), preference_tensor(w2)), dim=-1)
        a2 = actions.repeat(extra, 1)
        lp = log_probs.gather(1, a2)
        ratio = torch.exp(lp.detach() - behaviour_log_prob.repeat(extra, 1)).clamp(max=cfg.ratio_clip)
        r2 = reward(q.repeat(extra, 1), c.repeat(extra, 1), w2.unsqueeze(1), self.scale)
        adv = advantages(r2, w2, cfg.baseline_bins, cfg.normalize_advantage, cfg.leave_one_out)
        return -(ratio * adv.detach() * lp).mean() * extra

    def apply(self, loss: torch.Tensor) -> None:
        """One optimizer step on `loss`: scheduled lr, clipped gradients, step counter."""
        self.optim.apply(loss)

    def state_dict(self) -> dict:
        state = self.optim.state_dict()
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optim.load_state_dict(state)
        if self.critic is not None and "critic" in state:
            self.critic.load_state_dict(state["critic"])


def greedy_curve(policy: BarpPolicy, data: PolicyData, grid: np.ndarray) -> dict[str, np.ndarray]:
    """Mean score, cost and reward of argmax routing at each w_c of the grid (`barp_ray.objective`)."""
    curve = objective_greedy_curve(policy, data.embeddings, data.scores, data.costs, grid, policy.spec.cost_scale)
    return {"w_cost": curve.w_cost, "score": curve.score, "cost": curve.cost, "reward": curve.reward}


def validation_metrics(policy: BarpPolicy, data: PolicyData, grid_points: int = 11) -> dict[str, float]:
    """`val_reward` (mean greedy reward over the w grid) and `val_aiq` on the validation split."""
    from barp_ray.evaluation.metrics import aiq

    curve = greedy_curve(policy, data, w_grid(grid_points))
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
