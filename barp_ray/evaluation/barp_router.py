"""The trained BaRP policy behind the common Router interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from barp_ray.data.table import RoutingTable
from barp_ray.evaluation.routers import Router, register
from barp_ray.policy.checkpoint import load_policy
from barp_ray.policy.model import BarpPolicy, preference_tensor


@register("barp")
class BarpRouter(Router):
    """Greedy (argmax) routing with a trained BaRP policy checkpoint; `fit` only checks compatibility."""

    preference_aware = True

    def __init__(self, policy: BarpPolicy | str | Path, name: str = "barp") -> None:
        super().__init__()
        self.policy = load_policy(policy) if isinstance(policy, str | Path) else policy.eval()
        self.name = name

    def fit(self, train: RoutingTable, tau: float) -> None:
        if list(train.models) != list(self.policy.spec.models):
            raise ValueError(
                f"policy was trained on models {self.policy.spec.models}, table has {train.models}"
            )
        self._remember(train, self.policy.spec.tau)

    @torch.no_grad()
    def route(self, table: RoutingTable, w_cost: float) -> np.ndarray:
        self._check(table, w_cost)
        if table.embeddings is None:
            raise ValueError("BaRP routes on embeddings: run `barp embed` on this table first")
        emb = torch.as_tensor(table.embeddings, dtype=torch.float32)
        return self.policy.act(emb, preference_tensor(w_cost, len(table))).numpy().astype(np.int64)
