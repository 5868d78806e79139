"""Fixtures of the encoder tests: the ONNX export of the packaged MiniLM, built once and reused.

The export lives in the stable cache (`$BARP_ONNX_CACHE`, else ~/.cache/barp-ray/onnx), so only the first
session on a machine pays for it (about 40 s on 2 cores); every later session and test loads the files.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def onnx_export():
    """The export folder of the packaged MiniLM (fp32 + int8)."""
    from barp_ray.embeddings.encoder import DEFAULT_ENCODER
    from barp_ray.embeddings.onnx_export import ensure_onnx_export

    return ensure_onnx_export(DEFAULT_ENCODER)


@pytest.fixture(scope="session")
def encoders(onnx_export):
    """The three backends at one token budget (128), loaded once: {backend: encoder}."""
    from barp_ray.embeddings.encoder import load_encoder

    return {
        b: load_encoder("minilm", device="cpu", backend=b, max_seq_length=128, threads=1)
        for b in ("torch", "onnx", "onnx-int8")
    }
