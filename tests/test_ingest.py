"""Training ingestion (barp_ray.training.ingest): the memory/stream choice and streamed batches from Ray Data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from barp_ray.data.synth import SynthConfig, synth_logs
from barp_ray.training.ingest import TRAIN_COLUMNS, StreamingPolicyData, choose_mode, worker_bytes


def test_choose_mode_by_budget():
    manifest = {"models": ["a", "b"], "embedding_dim": 384, "per_split": {"train": 100_000}}
    per_worker = worker_bytes(manifest, num_workers=2)
    assert per_worker == 50_000 * (384 * 4 + 2 * 8)
    assert choose_mode("auto", manifest, 2, budget_mb=per_worker / 2**20 + 1) == "memory"
    assert choose_mode("auto", manifest, 2, budget_mb=per_worker / 2**20 - 1) == "stream"
    assert choose_mode("memory", manifest, 2, budget_mb=0) == "memory"


@pytest.mark.ray
def test_streaming_covers_the_shard_pass_after_pass(ray_cluster, tmp_path):
    import ray.data

    manifest = synth_logs(
        SynthConfig(
            out=str(tmp_path),
            rows=2000,
            rows_per_shard=500,
            num_models=4,
            num_centres=16,
            val_fraction=0.0,
            test_fraction=0.0,
        ),
        progress=False,
    )
    files = [str(tmp_path / f["file"]) for f in manifest["files"]]
    ds = ray.data.read_parquet(files).select_columns([*TRAIN_COLUMNS, "prompt_id"])
    data = StreamingPolicyData(ds.iterator(), shuffle_buffer_rows=256, seed=3)
    x, q, c = data.sample(100)
    assert x.shape == (100, 384) and q.shape == (100, 4) and c.shape == (100, 4)
    assert x.dtype == q.dtype == c.dtype == torch.float32
    for _ in range(40):  # 2000 rows: 2 full passes of 20 batches, then into a third
        data.sample(100)
    assert data.passes == 3 and data.rows_seen == 4100
    norms = torch.linalg.norm(x, dim=1).numpy()
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)  # real rows, not padding
