"""Embedding pipeline: a Ray Data actor pool over prompts, cached by content hash.

The cache is a folder of parquet files (`prompt_hash`, `embedding`) per encoder id (model, backend and token
budget: see `EncoderSpec`). A prompt whose hash is already cached is never embedded again, so a second run
over the same data embeds nothing. Actors put the encoder on CUDA when Ray gave them a GPU.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from barp_ray.data.table import RoutingTable, prompt_hash
from barp_ray.embeddings.encoder import DEFAULT_ENCODER, EncoderSpec, encode, load_encoder

log = logging.getLogger(__name__)


@dataclass
class EmbedStats:
    """What one embedding run did."""

    rows: int
    unique_prompts: int
    cache_hits: int
    embedded: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"{self.rows} rows, {self.unique_prompts} unique prompts: {self.cache_hits} from cache, "
            f"{self.embedded} embedded in {self.seconds:.1f}s"
        )


class EmbeddingCache:
    """Content-hash -> embedding store, one folder of parquet parts per encoder."""

    def __init__(self, root: str | Path, encoder: str) -> None:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder).strip("_")[-80:]
        self.dir = Path(root) / slug
        self.dir.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, np.ndarray]:
        cached: dict[str, np.ndarray] = {}
        for part in sorted(self.dir.glob("part-*.parquet")):
            t = pq.read_table(part)
            emb = t.column("embedding").combine_chunks()
            vectors = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(t), emb.type.list_size)
            cached.update(zip(t.column("prompt_hash").to_pylist(), vectors.astype(np.float32), strict=True))
        return cached

    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        if not hashes:
            return
        flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1), pa.float32())
        table = pa.table(
            {
                "prompt_hash": pa.array(hashes, pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
            }
        )
        tmp = self.dir / f".tmp-{uuid.uuid4().hex}.parquet"
        pq.write_table(table, tmp)
        tmp.rename(self.dir / f"part-{time.time_ns()}-{uuid.uuid4().hex[:6]}.parquet")  # atomic publish


class PromptEmbedder:
    """Ray Data actor: loads the encoder (an encoder id) once, embeds batches of `prompt` into `embedding`."""

    def __init__(self, encoder: str, batch_size: int = 64, device: str | None = "auto") -> None:
        self.model = load_encoder(encoder, device=device)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = encode(self.model, [str(p) for p in batch["prompt"]], self.batch_size)
        return {"prompt_hash": batch["prompt_hash"], "embedding": vectors}


def embed_prompts_ray(
    prompts: list[str],
    encoder: str = DEFAULT_ENCODER,
    batch_size: int = 64,
    num_actors: int = 1,
    use_gpu: bool = False,
    cpus_per_actor: float = 1.0,
) -> np.ndarray:
    """Embed prompts with a Ray Data `map_batches` actor pool; returns (N, D) in input order.

    `encoder` is an encoder id (`EncoderSpec.id`); `use_gpu` asks Ray for one GPU per actor, and an actor
    that got one runs the encoder on CUDA (`device="auto"`)."""
    import ray

    hashes = [prompt_hash(p) for p in prompts]
    # longest first, as in-process `encode` batches: a batch holds prompts of similar length (little padding)
    # and prompts whose truncated tokens are identical (few-shot prefixes) meet in one batch, where the ONNX
    # encoder runs them once; the output is reassembled by hash, so the order is free
    by_length = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    ds = ray.data.from_items([{"prompt_hash": hashes[i], "prompt": prompts[i]} for i in by_length])
    with warnings.catch_warnings():
        # max_restarts has no named map_batches parameter in Ray 2.60 (only the deprecated **ray_remote_args)
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            PromptEmbedder,
            fn_constructor_kwargs={"encoder": encoder, "batch_size": batch_size, "device": "auto"},
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=num_actors),
            num_cpus=cpus_per_actor,
            num_gpus=1 if use_gpu else 0,
            batch_format="numpy",
            # Ray Data keeps the actors' constructor arguments in the object store; with restarts on, Ray logs a
            # core_worker error per actor (a restart could not rebuild them: ray-project/ray#53727). A failed
            # embed job is rerun instead, and the content-hash cache keeps what was already embedded.
            max_restarts=0,
        )
    by_hash: dict[str, np.ndarray] = {}
    from tqdm.auto import tqdm

    # our own bar (prompts/s, ETA): Ray Data's bars are off in scripts/main.sh and tests
    with tqdm(total=len(prompts), desc="embed", unit="prompt", mininterval=2.0, dynamic_ncols=True) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            by_hash.update(zip(batch["prompt_hash"].tolist(), np.asarray(list(batch["embedding"])), strict=True))
            bar.update(len(batch["prompt_hash"]))
    return np.stack([by_hash[h] for h in hashes]).astype(np.float32)


def embed_table(
    table: RoutingTable,
    encoder: str | EncoderSpec = DEFAULT_ENCODER,
    cache_dir: str | Path = ".barp_cache/embeddings",
    batch_size: int = 64,
    num_actors: int = 1,
    use_gpu: bool = False,
    cpus_per_actor: float = 1.0,
) -> tuple[RoutingTable, EmbedStats]:
    """Fill `table.embeddings`, embedding only prompts missing from the content-hash cache.

    `table.encoder` becomes the encoder id (backend and token budget included), which the shards record."""
    start = time.perf_counter()
    encoder = (encoder if isinstance(encoder, EncoderSpec) else EncoderSpec.parse(encoder)).id
    cache = EmbeddingCache(cache_dir, encoder)
    cached = cache.load()
    hashes = table.content_hashes
    first_prompt: dict[str, str] = {}
    for h, p in zip(hashes, table.prompts, strict=True):
        first_prompt.setdefault(h, p)
    missing = [h for h in first_prompt if h not in cached]
    if missing:
        log.info("embedding %d new prompts with %s", len(missing), encoder)
        vectors = embed_prompts_ray(
            [first_prompt[h] for h in missing], encoder, batch_size, num_actors, use_gpu, cpus_per_actor
        )
        cache.add(missing, vectors)
        cached.update(zip(missing, vectors, strict=True))
    table.embeddings = np.stack([cached[h] for h in hashes]).astype(np.float32)
    table.encoder = encoder
    stats = EmbedStats(
        rows=len(table),
        unique_prompts=len(first_prompt),
        cache_hits=len(first_prompt) - len(missing),
        embedded=len(missing),
        seconds=time.perf_counter() - start,
    )
    return table, stats
