"""Frozen sentence-encoder embeddings h(x), computed on Ray Data and cached by content hash."""

from barp_ray.embeddings.encoder import DEFAULT_ENCODER, encode, load_encoder, resolve_encoder
from barp_ray.embeddings.pipeline import EmbeddingCache, EmbedStats, embed_prompts_ray, embed_table

__all__ = [
    "DEFAULT_ENCODER",
    "EmbedStats",
    "EmbeddingCache",
    "embed_prompts_ray",
    "embed_table",
    "encode",
    "load_encoder",
    "resolve_encoder",
]
