"""The trained BaRP policy behind the common Router interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from barp_ray.data.table import RoutingTable
from barp_ray.evaluation.routers import Router, register
from barp_ray.objective import CostScale, greedy_choice
from barp_ray.policy.checkpoint import load_policy
from barp_ray.policy.model import BarpPolicy


@register("barp")
class BarpRouter(Router):
    """Greedy (argmax) routing with a trained BaRP policy checkpoint; `fit` only checks compatibility."""

    preference_aware = True

    def __init__(self, policy: BarpPolicy | str | Path, name: str = "barp") -> None:
        super().__init__()
        self.policy = load_policy(policy) if isinstance(policy, str | Path) else policy.eval()
        self.name = name

    def fit(self, train: RoutingTable, scale: float | CostScale) -> None:
        if list(train.models) != list(self.policy.spec.models):
            raise ValueError(f"policy was trained on models {self.policy.spec.models}, table has {train.models}")
        check_same_encoder(self.policy.spec.encoder, train.encoder)
        self._remember(train, self.policy.spec.cost_scale)

    @torch.no_grad()
    def route(self, embeddings: np.ndarray, w_cost: float) -> np.ndarray:
        self._check_fitted(w_cost)
        # tables from the object store are read-only: copy only then (torch refuses to wrap those silently)
        emb = torch.from_numpy(np.require(embeddings, dtype=np.float32, requirements=["W"]))
        return greedy_choice(self.policy, emb, w_cost).numpy().astype(np.int64)


def check_same_encoder(policy_encoder: str | None, table_encoder: str | None) -> None:
    """Refuse to evaluate a policy on embeddings of another encoder (backend / token budget included)."""
    from barp_ray.embeddings.encoder import EncoderSpec

    if policy_encoder and table_encoder and EncoderSpec.parse(policy_encoder).id != EncoderSpec.parse(table_encoder).id:
        raise ValueError(
            f"the policy was trained on embeddings from {policy_encoder!r} but the table was embedded "
            f"with {table_encoder!r}: re-embed it with the policy's encoder (`barp embed "
            "--encoder-backend ... --max-seq-length ...`) or evaluate a policy trained on these"
        )
