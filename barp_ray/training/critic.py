"""A learned control variate for the policy gradient: predicted score and scaled cost of every model.

REINFORCE sees one model's outcome per interaction, so its gradient is noisy. The critic is fitted, step by
step, to the same bandit feedback (only the sampled model's score q and scaled cost c~; never the other
models'), and the learner uses it in the doubly robust form of the gradient:

    grad = sum_a r_hat(x, w, a) * grad pi(a | x, w)  +  (r - r_hat(x, w, a_sampled)) * grad log pi(a_sampled | x, w)

with r_hat = (1 - w_c) * q_hat - w_c * c~_hat. The first term is exact for the critic; the second corrects the
critic's error with the observed reward, so the gradient stays unbiased whatever the critic predicts (it is
fitted before seeing the batch it scores) and its variance shrinks as the critic improves. The critic is
training-only: the exported policy and the serving path do not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def doubly_robust_loss(
    probs: torch.Tensor, chosen_log_prob: torch.Tensor, actions: torch.Tensor, r: torch.Tensor, r_hat: torch.Tensor
) -> torch.Tensor:
    """The negated doubly robust objective: -[sum_a pi(a) r_hat(a) + (r - r_hat(a_s)) log pi(a_s)], batch mean.

    `probs` (N, K) and `chosen_log_prob` (N, M) carry the policy's gradient; `actions`, `r` (N, M) are the
    sampled models and their observed rewards; `r_hat` (N, K) the critic's reward of every model (no gradient).
    Its expected gradient over a ~ pi is the full-information gradient -sum_a r(a) grad pi(a), whatever r_hat is.
    """
    r_hat = r_hat.detach()
    correction = r - r_hat.gather(1, actions)
    return -(probs * r_hat).sum(dim=-1).mean() - (correction * chosen_log_prob).mean()


class RewardCritic(nn.Module):
    """MLP over the prompt embedding -> (q_hat, c~_hat), each (N, K) in [0, 1]."""

    def __init__(self, embed_dim: int, num_models: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.num_models = num_models
        self.net = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 2 * num_models))

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        return out[:, : self.num_models], out[:, self.num_models :]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q_logits, c_logits = self.logits(x)
        return torch.sigmoid(q_logits), torch.sigmoid(c_logits)


class CriticLearner:
    """Fits a `RewardCritic` to observed (prompt, model, q, c~) with AdamW; checkpointable."""

    def __init__(
        self, embed_dim: int, num_models: int, hidden_dim: int, lr: float, weight_decay: float, device, seed: int
    ) -> None:
        # initial weights from `seed` alone (not the caller's global RNG state): the same critic on every rank
        # and in every run with that seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.critic = RewardCritic(embed_dim, num_models, hidden_dim).to(device)
        self.optimizer = torch.optim.AdamW(self.critic.parameters(), lr=lr, weight_decay=weight_decay)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.critic(x)

    def fit(self, x: torch.Tensor, actions: torch.Tensor, q: torch.Tensor, c_scaled: torch.Tensor) -> None:
        """One step on the observed outcomes: `actions`, `q`, `c_scaled` are (N, M) (M sampled models per
        prompt). Cross-entropy on both targets (both lie in [0, 1]; scores may be 0/1 or continuous)."""
        q_logits, c_logits = self.critic.logits(x)
        loss = F.binary_cross_entropy_with_logits(q_logits.gather(1, actions), q) + F.binary_cross_entropy_with_logits(
            c_logits.gather(1, actions), c_scaled.clamp(0.0, 1.0)
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _average_gradients_across_ranks(self.critic)
        self.optimizer.step()  # no loss.item(): a device sync per learner step for a value nobody reads

    def state_dict(self) -> dict:
        return {"critic": self.critic.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])


def _average_gradients_across_ranks(module: nn.Module) -> None:
    """Under DDP (Ray Train with several workers) every rank keeps the same critic: average its gradients."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world
