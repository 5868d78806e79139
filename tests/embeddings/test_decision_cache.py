"""The replica's decision cache: byte bound, LRU eviction order, counts, and the encoder in front of it."""

from __future__ import annotations

import numpy as np
import pytest

from barp_ray.serving.decision_cache import ENTRY_OVERHEAD_BYTES, CachedEncoder, EmbeddingLRU

DIM = 384
ENTRY = DIM * 4 + 32 + ENTRY_OVERHEAD_BYTES  # float32 vector + sha256 key + overhead


def vec(i: int) -> np.ndarray:
    return np.full(DIM, i, dtype=np.float32)


def test_bound_in_bytes_and_lru_eviction_order():
    cache = EmbeddingLRU(max_bytes=3 * ENTRY, namespace="enc@onnx-int8:128")
    for i in range(3):
        cache.put(f"p{i}", vec(i))
    assert cache.stats.bytes == 3 * ENTRY and cache.stats.evictions == 0
    assert cache.get("p0") is not None  # p0 becomes the most recently used: p1 is now the oldest
    cache.put("p3", vec(3))
    assert cache.stats.evictions == 1 and cache.stats.bytes <= cache.max_bytes
    assert cache.get("p1") is None  # evicted first
    assert cache.keys() == [cache.key("p2"), cache.key("p0"), cache.key("p3")]  # least -> most recent
    cache.put("p4", vec(4))
    cache.put("p5", vec(5))
    assert cache.keys() == [cache.key("p3"), cache.key("p4"), cache.key("p5")]
    assert cache.stats.evictions == 3 and cache.stats.bytes == 3 * ENTRY
    np.testing.assert_array_equal(cache.get("p4"), vec(4))
    assert (cache.stats.hits, cache.stats.misses) == (2, 1)


def test_many_inserts_never_exceed_the_bound():
    cache = EmbeddingLRU(max_bytes=100_000, namespace="x")
    for i in range(1000):
        cache.put(f"prompt {i}", vec(i))
        assert cache.stats.bytes <= 100_000
    assert cache.stats.entries == 100_000 // ENTRY and cache.stats.evictions == 1000 - cache.stats.entries


def test_key_is_exact_text_and_encoder():
    a, b = EmbeddingLRU(10_000, "enc@onnx:128"), EmbeddingLRU(10_000, "enc@onnx:256")
    assert a.key("Hello") != a.key("hello") != a.key("hello ")
    assert a.key("hello") != b.key("hello")  # another token budget never reuses a vector


def test_stored_vectors_are_copies_and_replacing_keeps_the_count():
    cache = EmbeddingLRU(10 * ENTRY, "x")
    v = vec(1)
    cache.put("p", v)
    v[:] = 7
    assert cache.get("p")[0] == 1
    cache.put("p", vec(2))
    assert cache.stats.bytes == ENTRY and cache.get("p")[0] == 2
    with pytest.raises(ValueError, match=">= 0"):
        EmbeddingLRU(-1, "x")


class CountingEncoder:
    """A real-shaped encoder that counts the texts it embeds."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def get_sentence_embedding_dimension(self) -> int:
        return DIM

    def encode(self, texts, batch_size=32, normalize_embeddings=True, **_):
        self.seen.extend(texts)
        out = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=DIM) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def test_cached_encoder_skips_the_model_on_hits():
    inner = CountingEncoder()
    enc = CachedEncoder(inner, EmbeddingLRU(1_000_000, "x"))
    first = enc.encode(["a", "b", "a"])
    assert inner.seen == ["a", "b"]  # the repeated prompt is embedded once
    again = enc.encode(["b", "c", "a"])
    assert inner.seen == ["a", "b", "c"]
    np.testing.assert_array_equal(again[0], first[1])
    np.testing.assert_array_equal(again[2], first[0])
    assert (enc.cache.stats.hits, enc.cache.stats.misses) == (2, 4)  # a repeat within one batch is a miss


def test_cached_real_encoder_gives_the_encoder_output(encoders):
    from barp_ray.embeddings.encoder import encode

    enc = CachedEncoder(encoders["onnx-int8"], EmbeddingLRU(1_000_000, "minilm@onnx-int8:128"))
    texts = ["hello", "Write a python function to reverse a string."]
    miss = encode(enc, texts)
    hit = encode(enc, texts)
    np.testing.assert_array_equal(miss, hit)
    np.testing.assert_allclose(miss, encode(encoders["onnx-int8"], texts), atol=1e-6)
    assert enc.cache.stats.hits == 2
