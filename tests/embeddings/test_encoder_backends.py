"""Encoder backends (torch / onnx / onnx-int8) on the real packaged MiniLM, ids, export cache, device choice."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest

from barp_ray.embeddings.encoder import DEFAULT_ENCODER, EncoderSpec, encode, resolve_encoder, select_device
from barp_ray.embeddings.onnx_encoder import onnx_providers
from barp_ray.embeddings.onnx_export import META_FILE, publish_atomically

PROMPTS = [
    "hello",
    "Write a python function to reverse a string.",
    "Which gas do plants absorb? A) oxygen B) carbon dioxide C) nitrogen Answer:",
    "Solve for x: 3x + 7 = 22. Show your work step by step.",
    "The trophy doesn't fit into the suitcase because _ is too large.",
    "Ünïcödé, emoji 🚀 and   extra   spaces\n\nacross lines",
    "word " * 400,  # longer than every token budget: truncated the same way by every backend
]


def test_each_backend_matches_torch(encoders):
    ref = encode(encoders["torch"], PROMPTS)
    assert ref.shape == (len(PROMPTS), 384)
    # int8: dynamic quantisation moves a vector more on very short prompts ("hello": about 0.979)
    for backend, bound, mean_bound in (("onnx", 0.9999, 0.9999), ("onnx-int8", 0.97, 0.99)):
        emb = encode(encoders[backend], PROMPTS)
        assert emb.shape == ref.shape and emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
        cosine = (emb * ref).sum(axis=1)
        assert cosine.min() > bound and cosine.mean() > mean_bound, (backend, cosine)
    # batches are formed by length inside the ONNX encoder; output order is the input order
    one_by_one = np.stack([encode(encoders["onnx"], [p])[0] for p in PROMPTS])
    np.testing.assert_allclose(one_by_one, encode(encoders["onnx"], PROMPTS), atol=1e-5)


def test_onnx_tokenization_is_sentence_transformers(encoders):
    st_tokenizer = encoders["torch"][0].tokenizer
    for prompt in PROMPTS:
        want = st_tokenizer([prompt], truncation=True, max_length=128)["input_ids"][0]
        assert encoders["onnx"].tokenizer.encode(prompt).ids == want


def test_encoder_ids_carry_backend_and_token_budget():
    legacy = EncoderSpec.parse(DEFAULT_ENCODER)
    assert (legacy.backend, legacy.max_seq_length) == ("torch", 256)  # what pre-backend checkpoints used
    assert legacy.id == DEFAULT_ENCODER  # so old shards, caches and checkpoints keep their id
    fast = EncoderSpec("minilm", "onnx-int8", 128)
    assert fast.id == f"{DEFAULT_ENCODER}@onnx-int8:128"
    assert EncoderSpec.parse(fast.id) == fast.resolved()
    assert EncoderSpec("all-MiniLM-L6-v2", "torch", 256).id == DEFAULT_ENCODER  # aliases are one model
    by_path = EncoderSpec(resolve_encoder("minilm"), "onnx-int8", 128)
    assert by_path.same_encoder(fast) and not fast.same_encoder(fast.with_overrides(max_seq_length=256))
    assert not fast.same_encoder(fast.with_overrides(backend="onnx"))
    with pytest.raises(ValueError, match="backend"):
        EncoderSpec("minilm", "tensorrt", 128)


def test_onnx_export_is_cached_and_reused(onnx_export, monkeypatch):
    from barp_ray.embeddings import onnx_export as export_module
    from barp_ray.embeddings.encoder import load_encoder

    meta = onnx_export / META_FILE
    before = meta.stat().st_mtime_ns

    def no_export(*_args, **_kwargs):
        raise AssertionError("the ONNX export ran again although it is cached")

    monkeypatch.setattr(export_module, "export_onnx", no_export)
    for backend in ("onnx", "onnx-int8"):
        enc = load_encoder("minilm", device="cpu", backend=backend, max_seq_length=64, threads=1)
        assert enc.export_dir == onnx_export
    assert meta.stat().st_mtime_ns == before
    assert not list(onnx_export.parent.glob(f".{onnx_export.name}.tmp-*"))  # no leftover build folders


def _slow_build(final: str, marker: str, delay: float, out) -> None:
    def build(tmp: Path) -> None:
        (tmp / "model.onnx").write_text(marker)
        time.sleep(delay)  # both processes are inside the build at the same time
        (tmp / META_FILE).write_text("{}")

    out.put((marker, publish_atomically(Path(final), build)))


def test_two_processes_building_at_once_publish_one_complete_copy(tmp_path):
    final = tmp_path / "cache" / "minilm-abc"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_slow_build, args=(str(final), name, 1.5, queue)) for name in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    results = dict(queue.get(timeout=10) for _ in procs)
    assert sorted(results.values()) == [False, True]  # exactly one published, the other kept its copy
    winner = next(name for name, won in results.items() if won)
    assert (final / "model.onnx").read_text() == winner and (final / META_FILE).exists()
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]  # the loser's temp folder is gone
    assert publish_atomically(final, lambda tmp: pytest.fail("rebuilt a complete export")) is False


def test_failed_build_leaves_nothing_behind(tmp_path):
    final = tmp_path / "cache" / "broken"

    def build(tmp: Path) -> None:
        (tmp / "model.onnx").write_text("half")
        raise RuntimeError("export crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        publish_atomically(final, build)
    assert not final.exists() and list(final.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("requested", "ray_gpu_ids", "cuda", "want"),
    [
        ("auto", None, False, "cpu"),  # outside Ray, no CUDA
        ("auto", None, True, "cuda"),  # outside Ray, CUDA available
        ("auto", [], True, "cpu"),  # Ray actor without a GPU on a GPU node: stay off the GPU
        ("auto", ["0"], True, "cuda"),  # Ray gave this actor a GPU
        ("auto", ["0"], False, "cpu"),  # a GPU id but no CUDA runtime for this backend
        (None, [0], True, "cuda"),
        ("cpu", [0], True, "cpu"),  # an explicit device wins
        ("cuda:1", [], False, "cuda:1"),
    ],
)
def test_device_selection(requested, ray_gpu_ids, cuda, want):
    assert select_device(requested, ray_gpu_ids, cuda) == want


def test_onnx_providers_follow_the_device():
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("cuda", both) == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert onnx_providers("cuda:2", both)[0] == ("CUDAExecutionProvider", {"device_id": 2})
    assert onnx_providers("cuda", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert onnx_providers("cpu", both) == ["CPUExecutionProvider"]


def test_embed_config_names_the_encoder_it_records():
    from barp_ray.embeddings.job import EmbedConfig

    cfg = EmbedConfig(encoder_backend="onnx", max_seq_length=200)
    assert cfg.encoder_spec().id == f"{DEFAULT_ENCODER}@onnx:200"
    with pytest.raises(ValueError, match="encoder_backend"):
        EmbedConfig(encoder_backend="tensorrt")


def test_identical_truncated_inputs_run_once_with_the_same_result(encoders):
    enc = encoders["onnx-int8"]
    prefix = "Please answer with the letter of the correct answer. " * 20  # > 128 tokens: the tail is cut off
    texts = [prefix + f"Question {i}?" for i in range(6)] + PROMPTS
    enc.dedupe_inputs = False
    every_row = encode(enc, texts)
    enc.dedupe_inputs = True
    deduped = encode(enc, texts)
    np.testing.assert_allclose(deduped, every_row, atol=1e-5)
    assert np.allclose(deduped[0], deduped[5])  # same first 128 tokens: the same input, the same embedding


def test_left_truncation_keeps_the_end_on_every_backend(encoders):
    from barp_ray.embeddings.encoder import load_encoder

    left = EncoderSpec("minilm", "onnx", 64, "left")
    assert left.id == f"{DEFAULT_ENCODER}@onnx:64:left" and EncoderSpec.parse(left.id) == left.resolved()
    assert not left.same_encoder(EncoderSpec("minilm", "onnx", 64))
    prefix = "Please answer with the letter of the correct answer. " * 20
    texts = [prefix + "Which planet is red? A) Mars B) Venus", prefix + "Which gas do plants absorb? A) CO2 B) O2"]
    torch_left = load_encoder("minilm", device="cpu", max_seq_length=64, truncation="left")
    onnx_left = load_encoder(left, device="cpu", threads=1)
    want = torch_left[0].tokenizer(texts[:1], truncation=True, max_length=64)["input_ids"][0]
    assert onnx_left.tokenizer.encode(texts[0]).ids == want and want[-2] != want[1]
    a, b = encode(torch_left, texts), encode(onnx_left, texts)
    assert (a * b).sum(axis=1).min() > 0.9999
    assert float(a[0] @ a[1]) < 0.999  # the questions differ once the end is kept
    right = encode(encoders["onnx"], texts)
    assert float(right[0] @ right[1]) > 0.9999  # with the start kept both are the shared prefix


def test_token_states_mean_pool_to_the_embedding_and_make_a_token_state_table(encoders, tmp_path):
    from dataclasses import replace

    import torch

    from barp_ray.data.table import RoutingTable
    from barp_ray.embeddings.token_states import token_state_table
    from barp_ray.policy.pooling import mean_pool

    enc = encoders["onnx"]
    states = enc.token_states(PROMPTS, batch_size=2)
    assert states.shape == (len(PROMPTS), 128, enc.get_sentence_embedding_dimension()) and states.dtype == np.float16
    lengths = [len(enc.tokenizer.encode(p).ids) for p in PROMPTS]
    assert [int(s.any(-1).sum()) for s in states] == lengths  # zero exactly at padding
    pooled = mean_pool(torch.as_tensor(states)).numpy()
    assert (pooled * encode(enc, PROMPTS)).sum(axis=1).min() > 0.9999  # float16 states, the same embedding

    n = len(PROMPTS)
    table = RoutingTable(
        prompt_ids=[str(i) for i in range(n)],
        prompts=PROMPTS,
        tasks=["t"] * n,
        models=["a", "b"],
        scores=np.ones((n, 2)),
        costs=np.ones((n, 2)),
        embeddings=encode(enc, PROMPTS),
        encoder=f"{DEFAULT_ENCODER}@onnx:128",
    )
    left = token_state_table(table, "left", tmp_path)
    assert left.encoder == f"{DEFAULT_ENCODER}@onnx:128:left" and left.embeddings.shape == states.shape
    assert len(list(tmp_path.glob("token-states-*.npy"))) == 1
    np.testing.assert_array_equal(token_state_table(table, "left", tmp_path).embeddings, left.embeddings)
    with pytest.raises(ValueError, match="ONNX"):
        token_state_table(replace(table, encoder="minilm@torch:128"))
