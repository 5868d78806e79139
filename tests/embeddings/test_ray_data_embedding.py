"""The Ray Data embedding path gives, row for row, what in-process `encode` gives (real MiniLM, real cluster)."""

from __future__ import annotations

import numpy as np

from barp_ray.embeddings.encoder import encode
from barp_ray.embeddings.pipeline import embed_prompts_ray


def test_ray_data_rows_come_back_in_input_order_equal_to_in_process(ray_cluster, encoders):
    """Prompts of mixed lengths in a shuffled order, duplicates included: the pipeline batches them longest
    first (as `encode` does) yet returns each prompt's own embedding at its input position. fp32 ONNX is
    batch-invariant, so the two paths agree to float precision."""
    rng = np.random.default_rng(0)
    words = ["route", "cost", "quality", "model", "prompt", "answer", "cheap", "large"]
    prompts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 120, size=150)]
    prompts += prompts[:10]  # the same text twice
    order = rng.permutation(len(prompts))
    prompts = [prompts[i] for i in order]
    encoder = encoders["onnx"]
    via_ray = embed_prompts_ray(prompts, encoder.barp_spec.id, batch_size=16, num_actors=1, cpus_per_actor=1)
    plain = encode(encoder, prompts, 16)
    assert via_ray.shape == plain.shape == (len(prompts), 384)
    np.testing.assert_allclose(via_ray, plain, atol=1e-5)
    assert len({tuple(np.round(v, 5)) for v in via_ray}) == len(set(prompts))  # distinct prompts, distinct rows
