"""Shared pytest fixtures: one small local Ray cluster per test session."""

from __future__ import annotations

import os

import pytest

# Quiet, deterministic Ray for tests (set before ray is imported anywhere in the session).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local 2-CPU Ray instance started once per session (never connects to a `ray start` cluster)."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=4,  # logical: fractional train/serve/tune actors oversubscribe 2 real cores
            include_dashboard=False,
            object_store_memory=512 * 1024**2,
        )
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def routerbench_dir():
    """The real RouterBench rows ($BARP_DATA_DIR or ../shared/data/routerbench); skip if absent."""
    from barp_ray.config import default_data_dir

    path = default_data_dir()
    if not path.exists():
        pytest.skip(f"RouterBench data not found at {path}: set BARP_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def small_shards(routerbench_dir, ray_cluster, tmp_path_factory):
    """A real prepared + embedded shard directory: 12 rows per task and split, real MiniLM on Ray Data."""
    from barp_ray.data.prepare import prepare
    from barp_ray.embeddings.job import EmbedConfig, run_embed
    from barp_ray.pipeline import _subsample

    root = tmp_path_factory.mktemp("small_shards")
    data = root / "data"
    prepare(routerbench_dir, data, num_shards=2)
    _subsample(data, 12)
    stats = run_embed(EmbedConfig(data=data, cache_dir=root / "cache"))
    return {"data": data, "cache": root / "cache", "embed_stats": stats}
