"""Pooling of an encoder's token states into h(x): the encoder's fixed mean pool, or a learned attention pool.

A policy with ``PolicySpec.pooling == "attention"`` takes the encoder's last hidden states (B, T, D), zero at
padding (`OnnxEncoder.token_states`), instead of pooled embeddings (B, D). Its query starts at zero, so the
untrained attention pool is exactly the mean pool the frozen-encoder policy sees; REINFORCE then learns which
tokens to weight (issue 14's encoder lever; `benchmarks/barp_defaults.py --token-states` measures it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def token_mask(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T) True where a token state is present (padding positions are all-zero vectors)."""
    return (tokens != 0).any(dim=-1)


def mean_pool(tokens: torch.Tensor) -> torch.Tensor:
    """Unit-norm mean of the present token states: the sentence-transformers embedding of (B, T, D) states."""
    count = token_mask(tokens).sum(dim=1, keepdim=True).clamp_min(1)
    pooled = tokens.float().sum(dim=1) / count  # padding is zero: the plain sum is the masked sum
    return F.normalize(pooled, dim=-1)


class AttentionPooling(nn.Module):
    """Unit-norm weighted mean of the token states, weights = softmax over present tokens of a learned query's
    scores (`heads` queries, their pooled vectors averaged). Zero-initialised: equal to `mean_pool` untrained."""

    def __init__(self, dim: int, heads: int = 1) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(heads, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, D) for token states (B, T, D) with all-zero padding."""
        mask = token_mask(tokens)
        tokens = tokens.float()
        scores = torch.einsum("btd,hd->bht", tokens, self.query)
        weights = torch.softmax(scores.masked_fill(~mask[:, None, :], -1e9), dim=-1)
        pooled = torch.einsum("bht,btd->bhd", weights, tokens).mean(dim=1)
        return F.normalize(pooled, dim=-1)
