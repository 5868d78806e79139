"""The BaRP policy: pi(a | x, w) = softmax(g([h(x); phi(w)])).

h(x) is a frozen sentence embedding computed upstream (see ``barp_ray.embeddings``); this module holds
phi (a small MLP over the preference w = (w_q, w_c)) and the decision head g, which maps the joint
representation to K logits, one per candidate model.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from barp_ray.objective import CostScale
from barp_ray.policy.pooling import AttentionPooling, mean_pool

HeadType = Literal["mlp", "linear", "bilinear"]
Pooling = Literal["mean", "attention"]


class PolicySpec(BaseModel):
    """Everything needed to rebuild a policy, stored with every checkpoint."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=2, description="candidate model ids, the order of the logits")
    tau: float = Field(gt=0, description="cost scale in USD: c~ = 1 at tau (objective.CostScale)")
    cost_floor: float | None = Field(
        default=None,
        gt=0,
        description="log cost scale's floor in USD (c~ = 0 there); None: the paper's linear c~ = min(c / tau, 1)",
    )
    encoder: str = Field(description="sentence encoder that produced h(x) (name or path)")
    embed_dim: int = Field(default=384, gt=0)
    pref_dim: int = Field(default=32, gt=0, description="width of phi(w)")
    hidden_dim: int = Field(default=256, gt=0, description="hidden width of the decision head")
    head: HeadType = "mlp"
    dropout: float = Field(default=0.0, ge=0, lt=1)
    pooling: Pooling = Field(
        default="mean",
        description="mean: h(x) is the encoder's pooled embedding (B, D); attention: the policy pools the "
        "encoder's token states (B, T, D) with a learned query (policy/pooling.py)",
    )

    @property
    def num_models(self) -> int:
        return len(self.models)

    @property
    def cost_scale(self) -> CostScale:
        """The reward's cost map this policy was trained with."""
        return CostScale(self.tau, self.cost_floor)


class PreferenceEncoder(nn.Module):
    """phi(w): a two-layer MLP over w = (w_q, w_c)."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim), nn.ReLU())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.net(w)


class BarpPolicy(nn.Module):
    """Preference-conditioned routing policy over K models.

    ``head`` picks g: ``mlp`` (2 hidden layers over [h; phi]), ``linear`` (one affine map over [h; phi]),
    or ``bilinear`` (logits = h^T W_k phi + linear terms, an explicit prompt x preference interaction).
    """

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__()
        self.spec = spec
        d, p, hdim, k = spec.embed_dim, spec.pref_dim, spec.hidden_dim, spec.num_models
        self.phi = PreferenceEncoder(p)
        self.pool = AttentionPooling(d) if spec.pooling == "attention" else None
        self.norm = nn.LayerNorm(d)
        if spec.head == "mlp":
            self.head = nn.Sequential(
                nn.Linear(d + p, hdim),
                nn.ReLU(),
                nn.Dropout(spec.dropout),
                nn.Linear(hdim, hdim),
                nn.ReLU(),
                nn.Linear(hdim, k),
            )
        elif spec.head == "linear":
            self.head = nn.Linear(d + p, k)
        elif spec.head == "bilinear":
            self.proj = nn.Linear(d, hdim)
            self.bilinear = nn.Bilinear(hdim, p, k)
            self.head = nn.Linear(d + p, k)
        else:  # pragma: no cover - pydantic rejects it first
            raise ValueError(f"unknown head {spec.head!r}; use mlp, linear or bilinear")

    def forward(self, embedding: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) for embeddings (B, D), or token states (B, T, D), and preferences w (B, 2) = (w_q, w_c)."""
        h = self.norm(self.sentence_vector(embedding))
        z = self.phi(w)
        logits = self.head(torch.cat([h, z], dim=-1))
        if self.spec.head == "bilinear":
            logits = logits + self.bilinear(torch.tanh(self.proj(h)), z)
        return logits

    def sentence_vector(self, embedding: torch.Tensor) -> torch.Tensor:
        """h(x) (B, D): a pooled embedding as given, or token states (B, T, D) pooled as `spec.pooling` says."""
        if embedding.ndim == 3:
            return self.pool(embedding) if self.pool is not None else mean_pool(embedding)
        if self.pool is not None:
            raise ValueError(
                f"this policy pools token states (pooling: attention) and got pooled embeddings of shape "
                f"{tuple(embedding.shape)}: give it the encoder's token states (B, T, D) "
                "(OnnxEncoder.token_states), or train with pooling: mean"
            )
        return embedding

    @torch.no_grad()
    def probabilities(self, embedding: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(embedding, w), dim=-1)

    @torch.no_grad()
    def act(self, embedding: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Greedy routing decision (inference): argmax over models."""
        return self.forward(embedding, w).argmax(dim=-1)


def preference_tensor(
    w_cost: float | torch.Tensor, n: int | None = None, device: str | torch.device | None = None
) -> torch.Tensor:
    """w = (1 - w_c, w_c) as a (n, 2) float tensor, from a scalar or a (n,) tensor of w_c."""
    wc = torch.as_tensor(w_cost, dtype=torch.float32, device=device)
    if wc.ndim == 0:
        wc = wc.expand(n if n is not None else 1)
    if bool(((wc < 0) | (wc > 1)).any()):
        raise ValueError("preference w_cost must lie in [0, 1] (w_quality = 1 - w_cost)")
    return torch.stack([1.0 - wc, wc], dim=-1)


class PolicyEnsemble(nn.Module):
    """Mean logits of K policies trained on the same models (e.g. K seeds): argmax of the averaged logits.

    Exposes the members' `spec` so it routes wherever a `BarpPolicy` does (evaluation, greedy curves).
    """

    def __init__(self, policies: list[BarpPolicy]) -> None:
        super().__init__()
        if not policies:
            raise ValueError("an ensemble needs at least one policy")
        models = policies[0].spec.models
        if any(p.spec.models != models for p in policies):
            raise ValueError("every ensemble member must route over the same models, in the same order")
        self.members = nn.ModuleList(policies)
        self.spec = policies[0].spec

    def forward(self, embedding: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(embedding, w) for m in self.members]).mean(dim=0)

    @torch.no_grad()
    def act(self, embedding: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.forward(embedding, w).argmax(dim=-1)
