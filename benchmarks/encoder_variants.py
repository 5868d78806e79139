"""Shared by the encoder benchmarks: the variants compared, and prepared shards embedded with each one.

Embeddings go through the same content-hash cache as `barp embed` (`EmbeddingCache`, one folder per
encoder id), so a rerun embeds nothing. Prompts whose token ids are identical after truncation to the
variant's budget get one encoder pass (identical input, identical embedding): RouterBench's ARC and
Winogrande prompts share few-shot prefixes longer than 256 tokens, so at 128/256 tokens each task collapses
to one input. Throughput figures come from `encoder_backends.py`'s interleaved measurement, not from here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from barp_ray.data.shards import read_shards
from barp_ray.data.table import RoutingTable
from barp_ray.embeddings.encoder import EncoderSpec, encode, load_encoder
from barp_ray.embeddings.pipeline import EmbeddingCache

# (label, backend, max_seq_length); the first is the reference every other variant is compared with
VARIANTS: list[tuple[str, str, int]] = [
    ("torch fp32 @256", "torch", 256),
    ("torch fp32 @128", "torch", 128),
    ("onnx fp32 @256", "onnx", 256),
    ("onnx fp32 @128", "onnx", 128),
    ("onnx-int8 @128", "onnx-int8", 128),
]


def spec_of(backend: str, max_len: int, truncation: str = "right") -> EncoderSpec:
    return EncoderSpec("minilm", backend, max_len, truncation).resolved()


def embedded_table(
    data: Path, spec: EncoderSpec, cache_dir: Path, threads: int = 1, batch_size: int = 64
) -> tuple[RoutingTable, dict]:
    """The prepared shards with `spec`'s embeddings (cached); info on how many were encoded and how fast."""
    table = read_shards(data)
    cache = EmbeddingCache(cache_dir, spec.id)
    cached = cache.load()
    first: dict[str, str] = {}
    for h, p in zip(table.content_hashes, table.prompts, strict=True):
        first.setdefault(h, p)
    missing = [h for h in first if h not in cached]
    info: dict = {"encoder_id": spec.id, "unique_prompts": len(first), "encoded_now": len(missing)}
    if missing:
        import torch

        torch.set_num_threads(threads)
        model = load_encoder(spec, device="cpu", threads=threads)
        groups = truncated_groups([first[h] for h in missing], spec)
        info["distinct_inputs"] = len(groups)
        start = time.perf_counter()
        reps = encode(model, [first[missing[members[0]]] for members in groups], batch_size=batch_size)
        info["encode_s"] = time.perf_counter() - start
        vectors = np.empty((len(missing), reps.shape[1]), dtype=np.float32)
        for rep, members in zip(reps, groups, strict=True):
            vectors[members] = rep
        cache.add(missing, vectors)
        cached.update(zip(missing, vectors, strict=True))
        (cache.dir / "encode_info.json").write_text(json.dumps(info))
    elif (cache.dir / "encode_info.json").exists():
        info["first_run"] = json.loads((cache.dir / "encode_info.json").read_text())
    table.embeddings = np.stack([cached[h] for h in table.content_hashes]).astype(np.float32)
    table.encoder = spec.id
    return table, info


def truncated_groups(texts: list[str], spec: EncoderSpec) -> list[list[int]]:
    """Indices of `texts` grouped by their token ids after truncation to `spec.max_seq_length`."""
    from tokenizers import Tokenizer

    from barp_ray.embeddings.encoder import resolve_encoder

    tok = Tokenizer.from_file(str(Path(resolve_encoder(spec.name)) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=int(spec.max_seq_length), direction=spec.truncation)
    groups: dict[tuple, list[int]] = {}
    for i, enc in enumerate(tok.encode_batch(texts)):
        groups.setdefault(tuple(enc.ids), []).append(i)
    return list(groups.values())


if __name__ == "__main__":  # pre-fill: python benchmarks/encoder_variants.py runs/h3/data .barp_cache/embeddings
    import sys

    for label, backend, max_len in VARIANTS:
        _, info = embedded_table(Path(sys.argv[1]), spec_of(backend, max_len), Path(sys.argv[2]))
        print(label, info, flush=True)
