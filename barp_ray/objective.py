"""The BaRP objective, written once: reward, tau rules, preference sampling, greedy routing over a w grid,
and the "largest model" reference.

Training (`training/loop.py`), evaluation (`evaluation/`), budget calibration (`serving/calibration.py`)
and off-policy learning (`offpolicy/`) all import these; none of them re-implements the formulas.

    r = w_q * q - w_c * c~,   w = (w_q, w_c) on the simplex, w_q = 1 - w_c
    c~ = min(c / tau, 1)                                   cost_scale "linear" (the paper's)
    c~ = clip(log(c / floor) / log(tau / floor), 0, 1)     cost_scale "log" (the default; see `CostScale`)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

TauRule = Literal["p99_top_model", "max_cost", "max_mean_cost", "median_max_cost", "p90_cost"]
CostScaleKind = Literal["linear", "log"]
TAU_RULES: tuple[str, ...] = ("p99_top_model", "max_cost", "max_mean_cost", "median_max_cost", "p90_cost")

#: The reference model of the RouterBench targets ("reach its score at a share of its cost").
LARGEST_MODEL = "gpt-4-1106-preview"


# ---- reward ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostScale:
    """How a USD cost becomes the reward's cost term c~ in [0, 1].

    - linear (``floor is None``, the paper's): ``c~ = min(c / tau, 1)``.
    - log (``floor`` set): ``c~ = clip(log(c / floor) / log(tau / floor), 0, 1)``: equal cost *ratios* weigh
      the same, so a 4x cheaper model is worth as much at the cheap end of the pool as at the dear end. With
      the linear map, models an order of magnitude cheaper than tau differ by ~0.01 in c~, below REINFORCE's
      noise, and the policy never learns the cheapest model even at w_c = 1 (README, "The cost scale").
    """

    tau: float
    floor: float | None = None

    def __post_init__(self) -> None:
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise ValueError(f"tau must be a positive finite USD amount, got {self.tau!r}")
        if self.floor is not None and not 0 < self.floor < self.tau:
            raise ValueError(f"a log cost scale needs 0 < floor < tau, got floor={self.floor}, tau={self.tau}")

    @property
    def kind(self) -> CostScaleKind:
        return "linear" if self.floor is None else "log"

    def normalize(self, cost):
        """c~ for `cost` (tensor in, tensor out; else float64 numpy)."""
        if isinstance(cost, torch.Tensor):
            if self.floor is None:
                return torch.clamp(cost / self.tau, max=1.0)
            ratio = torch.log(torch.clamp(cost, min=self.floor) / self.floor) / math.log(self.tau / self.floor)
            return torch.clamp(ratio, 0.0, 1.0)
        cost = np.asarray(cost, dtype=np.float64)
        if self.floor is None:
            return np.minimum(cost / self.tau, 1.0)
        ratio = np.log(np.maximum(cost, self.floor) / self.floor) / math.log(self.tau / self.floor)
        return np.clip(ratio, 0.0, 1.0)

    def describe(self) -> str:
        if self.floor is None:
            return f"linear, tau=${self.tau:.6g}"
        return f"log, floor=${self.floor:.6g}, tau=${self.tau:.6g}"


def as_cost_scale(scale: float | CostScale) -> CostScale:
    """A `CostScale`; a bare number is the paper's linear scale with that tau."""
    return scale if isinstance(scale, CostScale) else CostScale(float(scale))


def normalized_cost(cost, scale: float | CostScale):
    """c~ in [0, 1] (tensor in, tensor out; else numpy); a number `scale` is tau of the linear map."""
    return as_cost_scale(scale).normalize(cost)


def reward(score, cost, w_cost, scale: float | CostScale):
    """r = (1 - w_c) * q - w_c * c~ (tensors or arrays; broadcasts); `scale` as in `normalized_cost`."""
    return scalarized_reward(score, normalized_cost(cost, scale), w_cost)


def scalarized_reward(score, scaled_cost, w_cost):
    """r = (1 - w_c) * q - w_c * c~ for a cost already on the reward's scale (c~ in [0, 1], e.g. a critic's)."""
    return (1.0 - w_cost) * score - w_cost * scaled_cost


def derive_tau(train_costs: np.ndarray, rule: TauRule = "p99_top_model") -> float:
    """The cost scale tau (USD) from the training costs (N, K).

    - ``p99_top_model`` (default): the 99th percentile of the training costs of the most expensive model
      (by mean cost). c~ is then linear in dollars for 99% of even the priciest model's answers, so the
      quality/cost trade-off spreads over the w_c range instead of switching near w_c ~ 0 (README, "Why a
      naive run collapses").
    - ``max_cost``: the most expensive single answer in training (never clips).
    - ``max_mean_cost``: the mean cost of the most expensive model.
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
        raise ValueError(f"unknown tau rule {rule!r}; use one of {', '.join(TAU_RULES)}")
    if not tau > 0:
        raise ValueError(f"derived tau={tau} is not positive: are all training costs zero?")
    return tau


def derive_cost_floor(train_costs: np.ndarray, tau: float) -> float:
    """The log scale's floor (USD): the 1st percentile of the cheapest model's (by mean) positive training
    costs, so c~ ~ 0 for the cheapest model and 1 at tau. Falls back to the smallest positive cost, and to
    tau / 1000 when no cost is positive or the floor would not lie below tau."""
    costs = np.asarray(train_costs, dtype=np.float64)
    cheapest = costs[:, costs.mean(axis=0).argmin()] if costs.ndim == 2 and costs.size else costs.ravel()
    positive = cheapest[cheapest > 0]
    if not positive.size:
        positive = costs[costs > 0]
    floor = float(np.quantile(positive, 0.01)) if positive.size else tau / 1000.0
    return floor if 0 < floor < tau else tau / 1000.0


def build_cost_scale(
    train_costs: np.ndarray | None,
    kind: CostScaleKind = "log",
    tau: float | None = None,
    floor: float | None = None,
    tau_rule: TauRule = "p99_top_model",
) -> CostScale:
    """The cost scale of a run: `tau` and `floor` as given, else derived from the training costs (N, K)."""
    if tau is None:
        if train_costs is None:
            raise ValueError("tau is not given and there are no training costs to derive it from")
        tau = derive_tau(train_costs, tau_rule)
    if kind == "linear":
        return CostScale(tau)
    if floor is None:
        if train_costs is None:
            raise ValueError("a log cost scale needs `cost_floor` or the training costs to derive it from")
        floor = derive_cost_floor(train_costs, tau)
    return CostScale(tau, floor)


PreferenceSampling = Literal["uniform", "arcsine"]


def sample_preferences(
    n: int, generator: torch.Generator | None = None, device=None, distribution: PreferenceSampling = "uniform"
) -> torch.Tensor:
    """w_c for n examples: uniform on the 1-simplex (w_c ~ U(0, 1), w_q = 1 - w_c), or `arcsine`
    (Beta(1/2, 1/2), more mass near both ends of the dial, where the reward is dominated by one term)."""
    u = torch.rand(n, generator=generator, device=device)
    if distribution == "arcsine":
        return torch.sin(0.5 * math.pi * u) ** 2
    return u


# ---- reference models ------------------------------------------------------------------------------------
def largest_model(models: Sequence[str], costs: np.ndarray) -> str:
    """`LARGEST_MODEL` if it is a candidate, else the model with the highest mean cost in `costs` (N, K)."""
    if LARGEST_MODEL in models:
        return LARGEST_MODEL
    return list(models)[int(np.argmax(np.asarray(costs, dtype=np.float64).mean(axis=0)))]


def w_grid(points: int = 11) -> np.ndarray:
    """`points` evenly spaced values of w_c in [0, 1] (11 -> 0, 0.1, ..., 1)."""
    if points < 2:
        raise ValueError(f"a w grid needs at least 2 points, got {points}")
    return np.round(np.linspace(0.0, 1.0, points), 6)


# ---- greedy routing --------------------------------------------------------------------------------------
def preference_batch(w_cost, n: int, device=None) -> torch.Tensor:
    """w = (1 - w_c, w_c) as an (n, 2) tensor from one w_c or one per row."""
    from barp_ray.policy.model import preference_tensor

    if np.ndim(w_cost) == 0 and not isinstance(w_cost, torch.Tensor):
        return preference_tensor(float(w_cost), n, device=device)
    if not isinstance(w_cost, torch.Tensor):  # read-only arrays (object store) are copied, not wrapped
        w_cost = np.require(w_cost, dtype=np.float32, requirements=["W"])
    return preference_tensor(torch.as_tensor(w_cost, dtype=torch.float32, device=device))


@torch.no_grad()
def greedy_choice(policy: nn.Module, embeddings: torch.Tensor, w_cost) -> torch.Tensor:
    """The served rule: argmax_a pi(a | x, w) per row, in eval mode (the module's mode is restored).

    `w_cost` is one value for every row or one per row.
    """
    was_training = policy.training
    policy.eval()
    try:
        logits = policy(embeddings, preference_batch(w_cost, embeddings.shape[0], embeddings.device))
    finally:
        policy.train(was_training)
    return logits.argmax(dim=-1)


@dataclass
class GreedyCurve:
    """Greedy routing at each w_c of a grid: mean score, cost, reward and the largest model's share."""

    w_cost: np.ndarray
    score: np.ndarray
    cost: np.ndarray
    reward: np.ndarray
    largest_share: np.ndarray
    choices: np.ndarray  # (G, N) model index per grid point and row


def greedy_curve(
    policy: nn.Module,
    embeddings,
    scores,
    costs,
    grid: Sequence[float] | np.ndarray,
    scale: float | CostScale,
    largest_index: int | None = None,
) -> GreedyCurve:
    """Argmax routing of `policy` at every w_c of `grid`, scored with the recorded `scores` / `costs` (N, K).

    Inputs may be numpy arrays or tensors (tensors stay on their device); the policy's inputs are pooled
    embeddings (N, D), or what its per-token levers take. `largest_index` defaults to the most expensive model
    by mean cost.
    """
    emb = torch.as_tensor(embeddings)
    if emb.is_floating_point() and emb.ndim == 2:  # pooled embeddings; token states / ids keep their dtype
        emb = emb.float()
    q_all = torch.as_tensor(scores, dtype=torch.float64, device=emb.device)
    c_all = torch.as_tensor(costs, dtype=torch.float64, device=emb.device)
    if largest_index is None:
        largest_index = int(c_all.mean(dim=0).argmax()) if len(c_all) else 0
    rows = torch.arange(emb.shape[0], device=emb.device)
    out: dict[str, list] = {"score": [], "cost": [], "reward": [], "largest_share": [], "choices": []}
    for wc in np.asarray(grid, dtype=np.float64):
        choice = greedy_choice(policy, emb, float(wc))
        q, c = q_all[rows, choice], c_all[rows, choice]
        out["score"].append(float(q.mean()))
        out["cost"].append(float(c.mean()))
        out["reward"].append(float(reward(q, c, float(wc), scale).mean()))
        out["largest_share"].append(float((choice == largest_index).double().mean()))
        out["choices"].append(choice.cpu().numpy())
    return GreedyCurve(
        w_cost=np.asarray(grid, dtype=np.float64),
        score=np.array(out["score"]),
        cost=np.array(out["cost"]),
        reward=np.array(out["reward"]),
        largest_share=np.array(out["largest_share"]),
        choices=np.stack(out["choices"]) if out["choices"] else np.zeros((0, 0), dtype=np.int64),
    )


__all__ = [
    "LARGEST_MODEL",
    "TAU_RULES",
    "CostScale",
    "CostScaleKind",
    "GreedyCurve",
    "PreferenceSampling",
    "TauRule",
    "as_cost_scale",
    "build_cost_scale",
    "derive_cost_floor",
    "derive_tau",
    "greedy_choice",
    "greedy_curve",
    "largest_model",
    "normalized_cost",
    "preference_batch",
    "reward",
    "sample_preferences",
    "w_grid",
]
