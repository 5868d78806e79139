"""Learned attention pooling over the encoder's token states (issue 14's encoder lever): it starts as the mean
pool, it finds the token that decides the route where the mean pool drowns it, and nothing serves it silently."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from barp_ray.data.table import RoutingTable
from barp_ray.policy.model import BarpPolicy, PolicySpec, preference_tensor
from barp_ray.policy.pooling import AttentionPooling, mean_pool
from barp_ray.training.config import TrainConfig


def _padded_states(rng: np.random.Generator, n: int, t: int, d: int) -> torch.Tensor:
    states = rng.normal(size=(n, t, d)).astype(np.float32)
    for i, length in enumerate(rng.integers(2, t + 1, size=n)):
        states[i, length:] = 0.0  # padding is all-zero
    return torch.as_tensor(states)


def test_untrained_attention_pool_is_the_mean_pool_and_ignores_padding():
    states = _padded_states(np.random.default_rng(0), 6, 10, 8)
    manual = torch.stack([s[s.any(-1)].mean(0) for s in states])
    manual = manual / manual.norm(dim=-1, keepdim=True)
    assert torch.allclose(mean_pool(states), manual, atol=1e-6)
    assert torch.allclose(AttentionPooling(8)(states), manual, atol=1e-6)
    more_padding = torch.cat([states, torch.zeros(6, 5, 8)], dim=1)
    pool = AttentionPooling(8)
    with torch.no_grad():
        pool.query.normal_()
    assert torch.allclose(pool(more_padding), pool(states), atol=1e-6)


def test_policy_pools_token_states_as_its_spec_says():
    torch.manual_seed(0)
    states = _padded_states(np.random.default_rng(1), 5, 7, 16)
    w = preference_tensor(0.3, 5)
    spec = dict(models=["a", "b", "c"], tau=0.01, encoder="e", embed_dim=16, pref_dim=4, hidden_dim=8)
    mean_policy = BarpPolicy(PolicySpec(**spec))
    assert torch.allclose(mean_policy(states, w), mean_policy(mean_pool(states), w), atol=1e-6)
    attention = BarpPolicy(PolicySpec(**spec, pooling="attention"))
    attention.load_state_dict(mean_policy.state_dict(), strict=False)  # same head, untrained query
    assert torch.allclose(attention(states, w), mean_policy(states, w), atol=1e-6)
    with pytest.raises(ValueError, match="token states"):
        attention(mean_pool(states), w)


def _marker_tables(seed: int = 0, n: int = 600, t: int = 24, d: int = 16):
    """The route is decided by ONE token per prompt (flagged in dim 0, its sign in dim 1 says which model
    answers); the other tokens are noise. The mean pool dilutes the marker ~1/t; attention can pick it out."""
    rng = np.random.default_rng(seed)

    def table(m: int, tag: str) -> RoutingTable:
        states = rng.normal(size=(m, t, d)).astype(np.float32)
        states[:, :, 0] = 0.0
        label = rng.integers(0, 2, size=m)
        where = rng.integers(0, t, size=m)
        states[np.arange(m), where] = 0.0
        states[np.arange(m), where, 0] = 4.0
        states[np.arange(m), where, 1] = np.where(label == 0, 1.0, -1.0)
        scores = np.stack([label == 0, label == 1], axis=1).astype(np.float32)
        return RoutingTable(
            prompt_ids=[f"{tag}{i}" for i in range(m)],
            prompts=[f"{tag} {i}" for i in range(m)],
            tasks=np.full(m, "t", dtype=object),
            models=["a", "b"],
            scores=scores,
            costs=np.full((m, 2), 0.001),
            embeddings=states,
        )

    return table(n, "tr"), table(n // 3, "va")


def test_attention_pooling_finds_the_deciding_token_where_the_mean_pool_cannot():
    from barp_ray.training.bare import train_in_process

    train, val = _marker_tables()
    base = dict(passes=60, epochs=4, batch_size=64, lr=3e-3, hidden_dim=32, pref_dim=8, seed=0, patience=4)
    mean = train_in_process(TrainConfig(**base), train, val, scale=0.01)
    attention = train_in_process(TrainConfig(**base, pooling="attention"), train, val, scale=0.01)
    # quality alone (w_c = 0): the right model answers every prompt, a coin flip half of them
    assert attention.best["val_score_wc0"] > 0.9
    assert mean.best["val_score_wc0"] < 0.75
    assert attention.best["val_reward"] > mean.best["val_reward"]


def test_serving_refuses_a_policy_that_pools_token_states(tmp_path):
    from barp_ray.policy.checkpoint import save_policy
    from barp_ray.serving.engine import EncodingConfig, RoutingEngine

    spec = PolicySpec(models=["a", "b"], tau=0.01, encoder="minilm@onnx-int8:128", pref_dim=4, hidden_dim=8)
    path = save_policy(BarpPolicy(spec.model_copy(update={"pooling": "attention"})), tmp_path / "policy")
    with pytest.raises(ValueError, match="pooling: mean"):
        RoutingEngine(str(path), options=EncodingConfig(device="cpu", threads=1))


def _text_tables(encoder: str):
    """Arithmetic prompts are answered by model `a` only, poems by `b` only (equal costs)."""
    rng = np.random.default_rng(0)

    def table(m: int, tag: str) -> RoutingTable:
        kind = rng.integers(0, 2, size=m)
        prompts = [
            f"Compute {rng.integers(10, 99)} + {rng.integers(10, 99)}." if k == 0 else f"Write a poem about {w}."
            for k, w in zip(kind, rng.choice(["rain", "the sea", "autumn", "a cat", "mountains"], size=m), strict=True)
        ]
        return RoutingTable(
            prompt_ids=[f"{tag}{i}" for i in range(m)],
            prompts=prompts,
            tasks=np.full(m, "t", dtype=object),
            models=["a", "b"],
            scores=np.stack([kind == 0, kind == 1], axis=1).astype(np.float32),
            costs=np.full((m, 2), 0.001),
            embeddings=np.zeros((m, 1), dtype=np.float32),
            encoder=encoder,
        )

    return table(40, "tr"), table(16, "va")


def test_lora_policy_starts_at_the_frozen_encoder_and_learns_the_route_end_to_end():
    """encoder_finetune: lora on a tiny subset on CPU: the untrained adapters leave the frozen encoder's
    embedding unchanged, training moves only the adapters and the head, and the policy learns the route."""
    from barp_ray.embeddings.encoder import DEFAULT_ENCODER, encode, load_encoder
    from barp_ray.embeddings.token_states import token_id_table
    from barp_ray.training.bare import seeded_learner, train_in_process

    encoder = f"{DEFAULT_ENCODER}@torch:16"
    train, val = _text_tables(encoder)
    train_ids, pad_id = token_id_table(train)
    val_ids, _ = token_id_table(val)
    assert train_ids.embeddings.shape == (40, 16) and train_ids.embeddings.dtype == np.int64
    cfg = TrainConfig(
        passes=16, epochs=2, batch_size=8, lr=3e-3, hidden_dim=16, pref_dim=4, seed=0, encoder_finetune="lora"
    )
    policy, _ = seeded_learner(cfg, train_ids, 0.01, pad_id)
    ids = torch.as_tensor(val_ids.embeddings)
    frozen = torch.as_tensor(encode(load_encoder(encoder, device="cpu"), val.prompts))
    with torch.no_grad():
        assert torch.allclose(mean_pool(policy.token_states(ids)), frozen, atol=1e-5)
    base = {k: v.clone() for k, v in policy.encoder.named_parameters() if "lora_" not in k}

    outcome = train_in_process(cfg, train_ids, val_ids, scale=0.01, pad_id=pad_id)
    trained = outcome.policy
    moved = [k for k, v in trained.encoder.named_parameters() if "lora_B" in k and v.abs().sum() > 0]
    assert moved, "the LoRA adapters did not train"
    assert all(torch.equal(v, base[k]) for k, v in trained.encoder.named_parameters() if "lora_" not in k)
    assert outcome.best["val_score_wc0"] > 0.9


def test_ray_train_job_refuses_the_per_token_levers():
    from barp_ray.training.trainer import build_trainer

    for lever in ({"pooling": "attention"}, {"encoder_finetune": "lora"}):
        with pytest.raises(ValueError, match="per-token inputs"):
            build_trainer(TrainConfig(data="/nonexistent", **lever))
