"""A sentence encoder on ONNX Runtime: the Rust tokenizer, the exported transformer, mean pooling, L2 norm.

It computes what sentence-transformers computes for a (Transformer, mean Pooling, Normalize) model, without
loading torch: the `onnx` backend gives the same embeddings up to float rounding, `onnx-int8` (dynamically
quantised weights and activations) close ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from barp_ray.embeddings.encoder import EncoderSpec, native_embedding_dim, resolve_encoder
from barp_ray.embeddings.onnx_export import FP32_FILE, INT8_FILE, ensure_onnx_export


def onnx_providers(device: str, available: list[str]) -> list:
    """ONNX Runtime execution providers for `device`: CUDA first when asked for and available, else CPU."""
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def default_threads() -> int:
    """Intra-op threads: `OMP_NUM_THREADS` (Ray sets it from the actor's CPUs), else all cores."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


def encoder_tokenizer(spec: EncoderSpec, fixed_length: bool = False):
    """The encoder's own (Rust) tokenizer, cut at the spec's token budget on its truncation side and padded
    to the longest row of a batch, or to exactly the budget with `fixed_length`; and its padding id:
    (tokenizer, pad_id)."""
    from tokenizers import Tokenizer

    spec = spec.resolved()
    source = Path(resolve_encoder(spec.name)) / "tokenizer.json"
    pad = json.loads(source.read_text()).get("padding") or {}
    pad_id, budget = int(pad.get("pad_id", 0)), int(spec.max_seq_length or 512)
    tokenizer = Tokenizer.from_file(str(source))
    tokenizer.enable_truncation(max_length=budget, direction=spec.truncation)
    tokenizer.enable_padding(
        pad_id=pad_id, pad_token=pad.get("pad_token", "[PAD]"), length=budget if fixed_length else None
    )
    return tokenizer, pad_id


class OnnxEncoder:
    """Encoder with the sentence-transformers `encode` interface on ONNX Runtime (`onnx` / `onnx-int8`)."""

    def __init__(
        self, spec: EncoderSpec, device: str = "cpu", threads: int | None = None, cache_root: str | Path | None = None
    ) -> None:
        import onnxruntime as ort

        spec = spec.resolved()
        if spec.backend not in ("onnx", "onnx-int8"):
            raise ValueError(f"OnnxEncoder runs the onnx backends, not {spec.backend!r}")
        self.barp_spec = spec
        self.export_dir = ensure_onnx_export(spec.name, cache_root)
        self.max_seq_length = int(spec.max_seq_length or 512)
        self.tokenizer, _ = encoder_tokenizer(spec)
        self._dim = native_embedding_dim(spec.name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model_file = self.export_dir / (INT8_FILE if spec.backend == "onnx-int8" else FP32_FILE)
        self.providers = onnx_providers(device, ort.get_available_providers())
        self.session = ort.InferenceSession(str(model_file), options, providers=self.providers)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.device = device
        self.dedupe_inputs = True  # identical token ids in one batch run once (exact); off to time raw work

    def get_sentence_embedding_dimension(self) -> int:
        return self._dim

    get_embedding_dimension = get_sentence_embedding_dimension

    def _forward(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled token embeddings; rows whose truncated token ids are identical run once (exact:
        prompts sharing a prefix longer than the token budget, e.g. few-shot templates, are one input)."""
        batch = self.tokenizer.encode_batch(texts)
        if not self.dedupe_inputs:
            return self._run(
                np.asarray([e.ids for e in batch], dtype=np.int64),
                np.asarray([e.attention_mask for e in batch], dtype=np.int64),
            )
        rows: dict[tuple[int, ...], int] = {}
        where = np.asarray([rows.setdefault(tuple(e.ids), len(rows)) for e in batch], dtype=np.int64)
        firsts = np.unique(where, return_index=True)[1]
        ids = np.asarray([batch[i].ids for i in firsts], dtype=np.int64)
        mask = np.asarray([batch[i].attention_mask for i in firsts], dtype=np.int64)
        return self._run(ids, mask)[where]

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        tokens = self._tokens(ids, mask)
        weights = mask[..., None].astype(np.float32)
        return (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)

    def _tokens(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The transformer's last hidden states (B, T, D) for token ids and their attention mask."""
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})[0]

    def token_states(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(N, max_seq_length, D) float16 last hidden states before pooling, zero at padding (the mask is
        `states.any(-1)`): the input of a policy with learned attention pooling (`PolicySpec.pooling`)."""
        out = np.zeros((len(texts), self.max_seq_length, self._dim), dtype=np.float16)
        for start in range(0, len(texts), max(1, batch_size)):
            batch = self.tokenizer.encode_batch([str(t) for t in texts[start : start + batch_size]])
            ids = np.asarray([e.ids for e in batch], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in batch], dtype=np.int64)
            states = self._tokens(ids, mask) * mask[..., None]
            out[start : start + len(batch), : ids.shape[1]] = states
        return out

    def encode(
        self,
        sentences: str | list[str],
        batch_size: int = 32,
        normalize_embeddings: bool = False,
        convert_to_numpy: bool = True,
        show_progress_bar: bool | None = None,
        **_: object,
    ) -> np.ndarray:
        """(N, D) float32 embeddings; batches are formed by length (less padding), output in input order."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else [str(s) for s in sentences]
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for start in range(0, len(texts), max(1, batch_size)):
            idx = order[start : start + batch_size]
            out[idx] = self._forward([texts[i] for i in idx])
        if normalize_embeddings:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[0] if single else out
