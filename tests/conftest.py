"""Shared pytest fixtures: one small local Ray cluster per test session, the real data checked once.

Lanes: `pytest -m "not slow"` is the fast lane (no Ray cluster, no real MiniLM training loop); every test
that needs the session cluster is marked `ray` and `slow` here automatically, so it never leaks into the
fast lane unmarked.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Quiet, deterministic Ray for tests (set before ray is imported anywhere in the session).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

#: Fixtures that start (or need) the session's Ray cluster.
RAY_FIXTURES = {"ray_cluster"}


def pytest_collection_modifyitems(config, items):
    """A test that uses the Ray cluster (directly or through another fixture) is `ray` and `slow`."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread in the test process: on a shared 2-core machine two OpenMP threads make the small
    policy MLPs many times slower (Ray workers already default to one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance started once per session (never joins a `ray start` cluster or $RAY_ADDRESS):
    4 logical CPUs (fractional train / serve / tune actors oversubscribe 2 real cores), the dashboard on a
    free loopback port (Serve's REST API for `barp rollout`, the State API for Ray Train), 512 MiB store."""
    import ray

    from barp_ray.ray_connect import connect

    started = False
    if not ray.is_initialized():
        os.environ.pop("RAY_ADDRESS", None)
        connect(num_cpus=4, object_store_memory=512 * 1024**2)
        started = True
    yield ray
    if started:
        ray.shutdown()


def routerbench_path() -> Path | None:
    """The real RouterBench CSVs ($BARP_DATA_DIR or ../shared/data/routerbench), or None when absent."""
    from barp_ray.config import default_data_dir

    path = default_data_dir()
    return path if path.is_dir() and any(path.glob("*_test.csv")) else None


@pytest.fixture(scope="session")
def routerbench_dir() -> Path:
    """The real RouterBench rows; the test is skipped (with the fix) when they are absent."""
    path = routerbench_path()
    if path is None:
        from barp_ray.config import default_data_dir

        pytest.skip(f"RouterBench data not found at {default_data_dir()}: set BARP_DATA_DIR to the routerbench folder")
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
