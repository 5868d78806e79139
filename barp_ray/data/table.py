"""The in-memory routing table every stage passes around.

A ``RoutingTable`` holds N prompts and, for each of K candidate models, the score (in [0, 1]) and the USD
cost of that model's answer. Embeddings and the split label are filled in by later stages. It converts
to and from a pyarrow table with the documented shard schema (see ``barp_ray.data.shards``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

SPLITS = ("train", "val", "test")

# Schema metadata keys: a shard is self-describing.
META_MODELS = b"barp.models"
META_ENCODER = b"barp.encoder"


def prompt_hash(prompt: str) -> str:
    """Stable content id of a prompt: sha256 of its UTF-8 text, first 16 hex digits."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


@dataclass
class RoutingTable:
    """N prompts x K models of scores and costs, plus optional embeddings and split labels."""

    prompt_ids: np.ndarray  # (N,) str, source sample id (unique after validation)
    prompts: list[str]  # (N,)
    tasks: np.ndarray  # (N,) str, e.g. "arc-challenge"
    models: list[str]  # (K,)
    scores: np.ndarray  # (N, K) float32 in [0, 1]
    costs: np.ndarray  # (N, K) float64, USD per query
    split: np.ndarray | None = None  # (N,) str in SPLITS
    embeddings: np.ndarray | None = None  # (N, D) float32
    encoder: str | None = None  # name of the encoder that made `embeddings`
    responses: np.ndarray | None = None  # (N, K) object: recorded answer text, when the source has it
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, k = len(self.prompts), len(self.models)
        self.prompt_ids = np.asarray(self.prompt_ids, dtype=object)
        self.tasks = np.asarray(self.tasks, dtype=object)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(n, k)
        self.costs = np.asarray(self.costs, dtype=np.float64).reshape(n, k)
        if self.split is not None:
            self.split = np.asarray(self.split, dtype=object)
        for name in ("prompt_ids", "tasks", "split", "embeddings", "responses"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"RoutingTable.{name} has {len(value)} rows, expected {n} (one per prompt)")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_models(self) -> int:
        return len(self.models)

    @property
    def content_hashes(self) -> list[str]:
        """Per-prompt content hash (the embedding cache key)."""
        return [prompt_hash(p) for p in self.prompts]

    def take(self, index: np.ndarray | list[int]) -> RoutingTable:
        """Rows selected by an integer index or boolean mask, as a new table."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)

        def pick(a):
            return None if a is None else a[index]

        return replace(
            self,
            prompt_ids=self.prompt_ids[index],
            prompts=[self.prompts[i] for i in index],
            tasks=self.tasks[index],
            scores=self.scores[index],
            costs=self.costs[index],
            split=pick(self.split),
            embeddings=pick(self.embeddings),
            responses=pick(self.responses),
            extra=dict(self.extra),
        )

    def where_split(self, name: str) -> RoutingTable:
        """Rows of one split ("train", "val" or "test")."""
        if self.split is None:
            raise ValueError("table has no split column; run `barp prepare` first")
        return self.take(self.split == name)

    def where_tasks(self, tasks: list[str] | set[str], keep: bool = True) -> RoutingTable:
        """Rows whose task is (keep=True) or is not (keep=False) in `tasks`."""
        mask = np.isin(self.tasks, list(tasks))
        return self.take(mask if keep else ~mask)

    @property
    def task_names(self) -> list[str]:
        return sorted(set(self.tasks.tolist()))

    # ---- arrow ---------------------------------------------------------------------------------
    def to_arrow(self) -> pa.Table:
        """The shard schema: one row per prompt; list columns hold per-model values in `models` order."""
        n, k = len(self), self.num_models
        cols = {
            "prompt_id": pa.array(self.prompt_ids.tolist(), pa.string()),
            "prompt_hash": pa.array(self.content_hashes, pa.string()),
            "task": pa.array(self.tasks.tolist(), pa.string()),
            "split": pa.array(
                (self.split if self.split is not None else np.full(n, None, object)).tolist(), pa.string()
            ),
            "prompt": pa.array(self.prompts, pa.string()),
            "scores": pa.FixedSizeListArray.from_arrays(pa.array(self.scores.reshape(-1), pa.float32()), k),
            "costs": pa.FixedSizeListArray.from_arrays(pa.array(self.costs.reshape(-1), pa.float64()), k),
        }
        if self.embeddings is not None:
            d = self.embeddings.shape[1]
            flat = pa.array(np.ascontiguousarray(self.embeddings, np.float32).reshape(-1), pa.float32())
            cols["embedding"] = pa.FixedSizeListArray.from_arrays(flat, d)
        meta = {META_MODELS: json.dumps(self.models).encode()}
        if self.encoder:
            meta[META_ENCODER] = self.encoder.encode()
        return pa.table(cols).replace_schema_metadata(meta)

    @classmethod
    def from_arrow(cls, table: pa.Table, models: list[str] | None = None) -> RoutingTable:
        """Inverse of `to_arrow`. `models` is needed when the schema metadata was lost (e.g. Ray Data)."""
        meta = table.schema.metadata or {}
        if models is None:
            if META_MODELS not in meta:
                raise ValueError("shard has no model list in its schema metadata; pass models=[...]")
            models = json.loads(meta[META_MODELS])
        encoder = meta.get(META_ENCODER, b"").decode() or None
        return cls.from_columns(_columns(table), models, encoder)

    @classmethod
    def from_columns(cls, cols: dict, models: list[str], encoder: str | None = None) -> RoutingTable:
        """Build from a dict of numpy-like columns in the shard schema (e.g. a Ray Data numpy batch)."""
        k = len(models)
        n = len(cols["prompt_id"])
        emb = cols.get("embedding")
        split = cols.get("split")
        if split is not None and all(s is None for s in split):
            split = None
        return cls(
            prompt_ids=np.asarray(cols["prompt_id"], dtype=object),
            prompts=[str(p) for p in cols["prompt"]],
            tasks=np.asarray(cols["task"], dtype=object),
            models=list(models),
            scores=_stack(cols["scores"], np.float32).reshape(n, k),
            costs=_stack(cols["costs"], np.float64).reshape(n, k),
            split=None if split is None else np.asarray(split, dtype=object),
            embeddings=None if emb is None else _stack(emb, np.float32).reshape(n, -1),
            encoder=encoder,
        )

    @staticmethod
    def concat(tables: list[RoutingTable]) -> RoutingTable:
        """Row-wise concatenation of tables over the same models."""
        if not tables:
            raise ValueError("nothing to concatenate")
        first = tables[0]
        for t in tables[1:]:
            if t.models != first.models:
                raise ValueError(f"model lists differ: {first.models} vs {t.models}")

        def cat(name):
            parts = [getattr(t, name) for t in tables]
            return None if any(p is None for p in parts) else np.concatenate(parts)

        return RoutingTable(
            prompt_ids=np.concatenate([t.prompt_ids for t in tables]),
            prompts=[p for t in tables for p in t.prompts],
            tasks=np.concatenate([t.tasks for t in tables]),
            models=list(first.models),
            scores=np.concatenate([t.scores for t in tables]),
            costs=np.concatenate([t.costs for t in tables]),
            split=cat("split"),
            embeddings=cat("embeddings"),
            encoder=first.encoder,
            responses=cat("responses"),
        )


def _columns(table: pa.Table) -> dict:
    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            width = col.type.list_size
            out[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        else:
            out[name] = np.asarray(col.to_pylist(), dtype=object)
    return out


def _stack(values, dtype) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == object:
        arr = np.stack([np.asarray(v, dtype=dtype) for v in values]) if len(values) else np.zeros((0,))
    return arr.astype(dtype, copy=False)
