"""`barp embed`: add frozen-encoder embeddings to prepared shards (cached, so a rerun embeds nothing)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from barp_ray.config import JobConfig
from barp_ray.data.shards import read_manifest, read_shards, write_shards
from barp_ray.embeddings.encoder import DEFAULT_ENCODER
from barp_ray.embeddings.pipeline import EmbedStats, embed_table


class EmbedConfig(JobConfig):
    """Config of `barp embed`."""

    data: Path = Field(default=Path("runs/demo/data"), description="prepared shard directory (rewritten)")
    encoder: str = Field(default=DEFAULT_ENCODER, description="sentence-transformers name or local path")
    cache_dir: Path = Field(default=Path(".barp_cache/embeddings"), description="content-hash cache")
    batch_size: int = Field(default=64, ge=1)
    num_actors: int = Field(default=1, ge=1, description="Ray Data actor-pool size")
    cpus_per_actor: float = Field(default=1.0, gt=0)
    use_gpu: bool = False


def run_embed(cfg: EmbedConfig) -> EmbedStats:
    """Embed every prompt of the prepared shards and rewrite them with the `embedding` column."""
    manifest = read_manifest(cfg.data)
    table = read_shards(cfg.data)
    table, stats = embed_table(
        table,
        encoder=cfg.encoder,
        cache_dir=cfg.cache_dir,
        batch_size=cfg.batch_size,
        num_actors=cfg.num_actors,
        use_gpu=cfg.use_gpu,
        cpus_per_actor=cfg.cpus_per_actor,
    )
    keep = {k: v for k, v in manifest.items() if k in ("prepare", "validation")}
    write_shards(table, cfg.data, num_shards=len(manifest["files"]), extra_manifest=keep)
    return stats
