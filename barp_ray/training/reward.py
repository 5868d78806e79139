"""The BaRP reward and the preference distribution used in training."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

TauRule = Literal["p99_top_model", "max_cost", "max_mean_cost", "median_max_cost", "p90_cost"]


def normalized_cost(cost: torch.Tensor | np.ndarray, tau: float):
    """c~ = min(c / tau, 1): the cost on the reward's [0, 1] scale."""
    if isinstance(cost, torch.Tensor):
        return torch.clamp(cost / tau, max=1.0)
    return np.minimum(np.asarray(cost) / tau, 1.0)


def reward(score, cost, w_cost, tau: float):
    """r = w_q * q - w_c * min(c / tau, 1), with w_q = 1 - w_c (works on tensors and arrays)."""
    return (1.0 - w_cost) * score - w_cost * normalized_cost(cost, tau)


def derive_tau(train_costs: np.ndarray, rule: TauRule = "p99_top_model") -> float:
    """The cost scale tau from the training costs (N, K).

    - ``p99_top_model`` (default): the 99th percentile of the training costs of the most expensive model
      (by mean cost). c~ is then linear in dollars for 99% of even the priciest model's answers (only its
      outliers clip), so the quality/cost trade-off spreads over the w_c range instead of switching near
      w_c ~ 0, which is what a tau at that model's *mean* cost does (see README, "Why a naive run collapses").
    - ``max_cost``: the most expensive single answer in training (never clips).
    - ``max_mean_cost``: the mean cost of the most expensive model, so that model's typical
      query maps to c~ ~ 1 and every cheaper model keeps its cost ratio to it; only its outliers clip.
    - ``median_max_cost``: the median over prompts of the per-prompt most expensive answer.
    - ``p90_cost``: the 90th percentile of all (prompt, model) costs.
    """
    costs = np.asarray(train_costs, dtype=np.float64)
    if costs.size == 0:
        raise ValueError("cannot derive tau from an empty training table")
    if rule == "p99_top_model":
        tau = float(np.quantile(costs[:, costs.mean(axis=0).argmax()], 0.99))
    elif rule == "max_cost":
        tau = float(costs.max())
    elif rule == "max_mean_cost":
        tau = float(costs.mean(axis=0).max())
    elif rule == "median_max_cost":
        tau = float(np.median(costs.max(axis=1)))
    elif rule == "p90_cost":
        tau = float(np.quantile(costs, 0.9))
    else:
        raise ValueError(f"unknown tau rule {rule!r}; use max_mean_cost, median_max_cost or p90_cost")
    if not tau > 0:
        raise ValueError(f"derived tau={tau} is not positive: are all training costs zero?")
    return tau


def sample_preferences(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """w_c for n examples, uniform on the 1-simplex (so w_c ~ U(0, 1) and w_q = 1 - w_c)."""
    return torch.rand(n, generator=generator, device=device)
