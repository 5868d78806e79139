"""Synthetic routing logs (barp_ray.data.synth): deterministic, a known optimum, chunked, local or S3."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from s3_server import s3_server

from barp_ray.data.shards import read_shards
from barp_ray.data.synth import SynthConfig, optimal_rewards, policy_rewards, read_synth_split, synth_logs
from barp_ray.objective import w_grid


def _cfg(out, **kw) -> SynthConfig:
    return SynthConfig(
        **{"out": str(out), "rows": 3000, "rows_per_shard": 1000, "num_models": 5, "num_centres": 32, **kw}
    )


def test_same_seed_same_rows(tmp_path):
    a = synth_logs(_cfg(tmp_path / "a"), progress=False)
    b = synth_logs(_cfg(tmp_path / "b"), progress=False)
    assert a["ground_truth"] == b["ground_truth"] and a["per_split"] == b["per_split"]
    for entry in a["files"]:
        assert pq.read_table(tmp_path / "a" / entry["file"]).equals(pq.read_table(tmp_path / "b" / entry["file"]))
    c = synth_logs(_cfg(tmp_path / "c", seed=1), progress=False)
    assert c["ground_truth"]["prices"] != a["ground_truth"]["prices"]


def test_layout_is_a_prepared_directory(tmp_path):
    manifest = synth_logs(_cfg(tmp_path), progress=False)
    assert [f["file"] for f in manifest["files"]] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert sum(manifest["per_split"].values()) == 3000 and set(manifest["per_split"]) == {"train", "val", "test"}
    table = read_shards(tmp_path)  # the loader every stage uses reads it unchanged
    assert len(table) == 3000 and table.embeddings.shape == (3000, 384) and table.models == manifest["models"]
    assert set(np.unique(table.scores)) <= {0.0, 1.0}
    np.testing.assert_allclose(np.linalg.norm(table.embeddings, axis=1), 1.0, atol=1e-4)


def test_known_optimum_beats_every_single_model_and_logged_propensities_are_consistent(tmp_path):
    manifest = synth_logs(_cfg(tmp_path), progress=False)
    test = read_synth_split(str(tmp_path), "test")
    tau, grid = manifest["ground_truth"]["tau"], w_grid()
    optimum = optimal_rewards(test["expected_scores"], test["costs"], tau, grid)
    n, k = test["expected_scores"].shape
    for model in range(k):
        single = policy_rewards(np.full((len(grid), n), model), test["expected_scores"], test["costs"], tau, grid)
        assert np.all(optimum >= single - 1e-12)
    # The optimum's advantage over the best single model must be real, or the synthetic task is trivial.
    best_single = max(
        policy_rewards(np.full((len(grid), n), m), test["expected_scores"], test["costs"], tau, grid).mean()
        for m in range(k)
    )
    assert optimum.mean() > best_single + 0.02
    assert np.all((test["logged_propensity"] > 0) & (test["logged_propensity"] <= 1))
    assert set(np.unique(test["logged_model"])) <= set(range(k))


def test_float16_embeddings_halve_the_column(tmp_path):
    synth_logs(_cfg(tmp_path / "f32"), progress=False)
    synth_logs(_cfg(tmp_path / "f16", embedding_dtype="float16"), progress=False)
    f32 = pq.read_table(tmp_path / "f32" / "part-00000.parquet").column("embedding").combine_chunks().flatten()
    f16 = pq.read_table(tmp_path / "f16" / "part-00000.parquet").column("embedding").combine_chunks().flatten()
    assert str(f16.type) == "halffloat" and f16.nbytes * 2 == f32.nbytes
    np.testing.assert_allclose(f16.to_numpy(zero_copy_only=False), f32.to_numpy(), atol=1e-3)


def test_writes_to_s3():
    with s3_server() as env:
        root = f"s3://{env['BUCKET']}/synth"
        manifest = synth_logs(_cfg(root, rows=1500), progress=False)
        val = read_synth_split(root, "val", columns=["split", "expected_scores"])
        assert len(val["split"]) == manifest["per_split"]["val"] and set(val["split"]) == {"val"}


def test_rejects_bad_config(tmp_path):
    with pytest.raises(ValueError, match="embedding_dtype"):
        SynthConfig(out=str(tmp_path), embedding_dtype="int8")
