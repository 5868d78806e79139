"""A bounded LRU of prompt embeddings in front of the encoder of a router replica.

Key: sha256 of (encoder id, exact prompt text); the encoder id names the model, backend and token budget,
so a cached vector is only ever reused by the encoder that made it. Bound: bytes, counted per entry as the
vector's bytes + the key's bytes + `ENTRY_OVERHEAD_BYTES` (dict slot, ndarray header); the least recently
used entries are evicted past it. Repeated prompts (retries, system-prompt-only calls, evaluation traffic)
skip the encoder: a hit costs a hash and a dict lookup.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

ENTRY_OVERHEAD_BYTES = 200


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


class EmbeddingLRU:
    """text -> embedding, least recently used out first, at most `max_bytes` (thread-safe)."""

    def __init__(self, max_bytes: int, namespace: str, metrics: CacheMetrics | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"decision cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.namespace = namespace.encode()
        self.metrics = metrics
        self.stats = CacheStats()
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, text: str) -> bytes:
        return hashlib.sha256(self.namespace + b"\0" + text.encode("utf-8", "surrogatepass")).digest()

    @staticmethod
    def entry_bytes(key: bytes, vector: np.ndarray) -> int:
        return int(vector.nbytes) + len(key) + ENTRY_OVERHEAD_BYTES

    def get(self, text: str) -> np.ndarray | None:
        """The cached vector (marked most recently used) or None; counts a hit or a miss."""
        k = self.key(text)
        with self._lock:
            vec = self._items.get(k)
            if vec is None:
                self.stats.misses += 1
            else:
                self._items.move_to_end(k)
                self.stats.hits += 1
        if self.metrics is not None:
            self.metrics.count(hit=vec is not None)
        return vec

    def put(self, text: str, vector: np.ndarray) -> None:
        """Store a copy of `vector`; evicts least recently used entries until the bound holds."""
        k = self.key(text)
        vec = np.array(vector, dtype=np.float32, copy=True)
        size = self.entry_bytes(k, vec)
        if size > self.max_bytes:
            return
        evicted = 0
        with self._lock:
            old = self._items.pop(k, None)
            if old is not None:
                self.stats.bytes -= self.entry_bytes(k, old)
            self._items[k] = vec
            self.stats.bytes += size
            while self.stats.bytes > self.max_bytes:
                old_key, old_vec = self._items.popitem(last=False)
                self.stats.bytes -= self.entry_bytes(old_key, old_vec)
                evicted += 1
            self.stats.evictions += evicted
            self.stats.entries = len(self._items)
            current = self.stats.bytes
        if self.metrics is not None:
            self.metrics.stored(evicted, current)

    def keys(self) -> list[bytes]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._items)


class CacheMetrics:
    """Ray Serve metrics of the decision cache: hits, misses, evictions (counters) and its size (gauge)."""

    def __init__(self, encoder_id: str) -> None:
        from ray.serve.metrics import Counter, Gauge

        tags = ("encoder",)
        self.tags = {"encoder": encoder_id}
        self.hits = Counter(
            "barp_router_decision_cache_hits_total",
            "Prompts whose embedding came from the decision cache.",
            tag_keys=tags,
        )
        self.misses = Counter(
            "barp_router_decision_cache_misses_total", "Prompts the encoder had to embed.", tag_keys=tags
        )
        self.evictions = Counter(
            "barp_router_decision_cache_evictions_total",
            "Entries evicted (LRU) to keep the cache within its byte bound.",
            tag_keys=tags,
        )
        self.size = Gauge("barp_router_decision_cache_bytes", "Bytes held by the decision cache.", tag_keys=tags)

    def count(self, hit: bool) -> None:
        (self.hits if hit else self.misses).inc(1, tags=self.tags)

    def stored(self, evicted: int, current_bytes: int) -> None:
        if evicted:
            self.evictions.inc(evicted, tags=self.tags)
        self.size.set(current_bytes, tags=self.tags)


class CachedEncoder:
    """An encoder with an `EmbeddingLRU` in front: hits skip the model, misses are embedded in one call.

    Offers the encoder interface the engine uses (`encode`, the embedding dimension, `barp_spec`); the
    cache lives as long as the encoder, so a policy rollout that keeps the encoder keeps the cache too.
    """

    def __init__(self, encoder, cache: EmbeddingLRU) -> None:
        self.encoder = encoder
        self.cache = cache
        self.barp_spec = getattr(encoder, "barp_spec", None)

    def get_sentence_embedding_dimension(self) -> int:
        from barp_ray.embeddings.encoder import embedding_dim

        return embedding_dim(self.encoder)

    get_embedding_dimension = get_sentence_embedding_dimension

    def encode(
        self, sentences: list[str], batch_size: int = 32, normalize_embeddings: bool = True, **kwargs
    ) -> np.ndarray:
        """Normalised float32 embeddings, from the cache where possible (only normalised ones are cached)."""
        texts = [str(s) for s in sentences]
        if not normalize_embeddings:
            return np.asarray(
                self.encoder.encode(texts, batch_size=batch_size, normalize_embeddings=False, **kwargs),
                dtype=np.float32,
            )
        found = [self.cache.get(t) for t in texts]
        missing = [i for i, v in enumerate(found) if v is None]
        if missing:
            unique = list(dict.fromkeys(texts[i] for i in missing))
            fresh = np.asarray(
                self.encoder.encode(unique, batch_size=max(1, len(unique)), normalize_embeddings=True, **kwargs),
                dtype=np.float32,
            )
            by_text = dict(zip(unique, fresh, strict=True))
            for text, vec in by_text.items():
                self.cache.put(text, vec)
            for i in missing:
                found[i] = by_text[texts[i]]
        return np.stack(found).astype(np.float32, copy=False)
