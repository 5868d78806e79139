"""Per-token tables for the encoder levers: a routing table whose `embeddings` are not pooled vectors.

- `token_state_table`: the encoder's last hidden states (N, T, D) float16, zero at padding, T = the token
  budget: the input of a policy with learned attention pooling (`PolicySpec.pooling == "attention"`;
  benchmarks/barp_defaults.py --token-states). Cached as one .npy per (encoder id, prompts).
- `token_id_table`: the token ids (N, T) int64, padded: the input of `policy.lora.EncoderPolicy`, which runs
  the encoder itself (`encoder_finetune: lora`; benchmarks/lora_finetune.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from barp_ray.data.table import RoutingTable
from barp_ray.embeddings.encoder import EncoderSpec, load_encoder
from barp_ray.embeddings.onnx_encoder import encoder_tokenizer


def table_encoder(table: RoutingTable, truncation: str | None = None) -> EncoderSpec:
    """The encoder `table` was embedded with, cut on `truncation`'s side (default: the encoder's own)."""
    if not table.encoder:
        raise ValueError("the table names no encoder: embed it first (`barp embed`)")
    return EncoderSpec.parse(table.encoder).with_overrides(truncation=truncation).resolved()


def token_state_table(
    table: RoutingTable, truncation: str = "right", cache_dir: str | Path | None = None, batch_size: int = 32
) -> RoutingTable:
    """`table` with `embeddings` replaced by token states of its own encoder (backend, token budget) cut on
    the `truncation` side; needs an ONNX backend (`onnx` or `onnx-int8`)."""
    spec = table_encoder(table, truncation)
    if spec.backend not in ("onnx", "onnx-int8"):
        raise ValueError(f"token states need an ONNX encoder backend (onnx, onnx-int8), the table's is {spec.backend}")
    digest = hashlib.sha256("\x00".join([spec.id, *table.prompts]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"token-states-{digest}.npy" if cache_dir else None
    if path is not None and path.exists():
        states = np.load(path)
    else:
        states = load_encoder(spec).token_states(list(table.prompts), batch_size=batch_size)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, states)
    return replace(table, embeddings=states, encoder=spec.id)


def token_id_table(table: RoutingTable, truncation: str | None = None) -> tuple[RoutingTable, int]:
    """`table` with `embeddings` replaced by its prompts' token ids (N, T) under its encoder's token budget
    (cut on `truncation`'s side, default the encoder's), and the padding id."""
    spec = table_encoder(table, truncation)
    tokenizer, pad_id = encoder_tokenizer(spec, fixed_length=True)
    ids = np.asarray([e.ids for e in tokenizer.encode_batch([str(p) for p in table.prompts])], dtype=np.int64)
    return replace(table, embeddings=ids, encoder=spec.id), pad_id
