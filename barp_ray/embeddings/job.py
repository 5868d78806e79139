"""`barp embed`: add frozen-encoder embeddings to prepared shards (cached, so a rerun embeds nothing)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from barp_ray.config import JobConfig, LocalPath
from barp_ray.data.shards import read_manifest, read_shards, write_shards
from barp_ray.embeddings.encoder import DEFAULT_ENCODER, Backend, EncoderSpec, Truncation
from barp_ray.embeddings.pipeline import EmbedStats, embed_table

# the default variant, chosen from the benchmark table (docs/serving.md, "Encoder backends")
DEFAULT_BACKEND = "onnx-int8"
DEFAULT_MAX_SEQ_LENGTH = 128


class EmbedConfig(JobConfig):
    """Config of `barp embed`."""

    data: LocalPath = Field(default=Path("runs/demo/data"), description="prepared shard directory (rewritten)")
    encoder: str = Field(default=DEFAULT_ENCODER, description="sentence-transformers name or local path")
    encoder_backend: Backend = Field(
        default=DEFAULT_BACKEND,
        description="torch (sentence-transformers), onnx (ONNX Runtime fp32) or onnx-int8 "
        "(dynamic int8); the ONNX file is exported once into $BARP_ONNX_CACHE. Chosen from "
        "benchmarks/encoder_backends.py (docs/serving.md)",
    )
    max_seq_length: int = Field(
        default=DEFAULT_MAX_SEQ_LENGTH,
        ge=8,
        le=512,
        description="token budget per prompt (longer prompts are "
        "truncated); chosen on the validation split (docs/serving.md)",
    )
    truncation: Truncation = Field(
        default="right",
        description="which end of a prompt longer than max_seq_length is cut: right keeps the "
        "start (sentence-transformers' default), left keeps the end (few-shot prompts end with the question)",
    )
    cache_dir: LocalPath = Field(default=Path(".barp_cache/embeddings"), description="content-hash cache")
    batch_size: int = Field(default=64, ge=1, description="prompts per encoder forward")
    num_actors: int = Field(default=1, ge=1, description="Ray Data actor-pool size")
    cpus_per_actor: float = Field(default=1.0, gt=0, description="CPUs reserved by each encoder actor")
    use_gpu: bool = Field(default=False, description="one GPU per actor; an actor with a GPU encodes on CUDA")

    def encoder_spec(self) -> EncoderSpec:
        """The encoder this job embeds with (its id goes into the shards and from there into checkpoints)."""
        return EncoderSpec(self.encoder, self.encoder_backend, self.max_seq_length, self.truncation).resolved()


def run_embed(cfg: EmbedConfig) -> EmbedStats:
    """Embed every prompt of the prepared shards and rewrite them with the `embedding` column."""
    manifest = read_manifest(cfg.data)
    table = read_shards(cfg.data)
    table, stats = embed_table(
        table,
        encoder=cfg.encoder_spec(),
        cache_dir=cfg.cache_dir,
        batch_size=cfg.batch_size,
        num_actors=cfg.num_actors,
        use_gpu=cfg.use_gpu,
        cpus_per_actor=cfg.cpus_per_actor,
    )
    keep = {k: v for k, v in manifest.items() if k in ("prepare", "validation")}
    keep["encoder_spec"] = cfg.encoder_spec().as_dict()  # backend and token budget, also encoded in the id
    write_shards(table, cfg.data, num_shards=len(manifest["files"]), extra_manifest=keep)
    return stats
