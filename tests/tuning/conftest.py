"""Fixtures for the Tune / Jobs tests: a small real prepared + embedded shard dir, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tuning_data(request, ray_cluster, tmp_path_factory) -> Path:
    """The session's shared `small_shards` data when tests/conftest.py has it, else the same pipeline here:
    real RouterBench rows -> prepare -> subsample -> embed (MiniLM on Ray Data, content-hash cache)."""
    try:
        return Path(request.getfixturevalue("small_shards")["data"])
    except pytest.FixtureLookupError:
        pass
    from barp_ray.config import default_data_dir
    from barp_ray.data.prepare import prepare
    from barp_ray.embeddings.job import EmbedConfig, run_embed
    from barp_ray.pipeline import _subsample

    raw = default_data_dir()
    if not raw.exists():
        pytest.skip(f"RouterBench data not found at {raw} (set BARP_DATA_DIR)")
    out = tmp_path_factory.mktemp("tuning") / "data"
    prepare(raw, out, num_shards=2)
    _subsample(out, 12)
    run_embed(EmbedConfig(data=out, cache_dir=out.parent / "cache"))
    return out
