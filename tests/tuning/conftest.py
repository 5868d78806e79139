"""Fixtures for the Tune / Jobs tests: the session's small real prepared + embedded shard dir."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tuning_data(small_shards) -> Path:
    """The session's `small_shards` data (real RouterBench rows, real MiniLM embeddings)."""
    return Path(small_shards["data"])
