"""How a training worker gets its rows: in memory below a per-worker budget, streamed above it.

In memory (the fast path for logs that fit): the worker's shard is read once into tensors and every step
indexes random rows. Streamed (logs larger than a worker's memory): the worker pulls batches from its Ray
Data shard with `iter_batches(local_shuffle_buffer_size=...)`, one pass after another, so memory holds one
shuffle buffer and a few blocks whatever the number of rows. Both expose `sample(n, generator)`, the one call
the REINFORCE step makes for its batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

IngestMode = Literal["auto", "memory", "stream"]

#: Columns the REINFORCE step reads; streaming reads nothing else.
TRAIN_COLUMNS = ["embedding", "scores", "costs"]


def row_bytes(embedding_dim: int, num_models: int, embedding_bytes: int = 4) -> int:
    """In-memory bytes of one training row (embedding + float32 scores + float32 costs as tensors)."""
    return embedding_dim * embedding_bytes + num_models * 4 * 2


def worker_bytes(manifest: dict, num_workers: int, split: str = "train") -> int:
    """Estimated bytes one worker holds for its share of `split` when it materialises it."""
    rows = int(manifest.get("per_split", {}).get(split, manifest.get("num_rows", 0)))
    per_row = row_bytes(int(manifest.get("embedding_dim") or 384), len(manifest["models"]))
    return (rows * per_row) // max(1, num_workers)


def choose_mode(mode: IngestMode, manifest: dict, num_workers: int, budget_mb: float) -> Literal["memory", "stream"]:
    """`mode` unless it is `auto`; then stream when a worker's share exceeds `budget_mb`."""
    if mode != "auto":
        return mode
    return "stream" if worker_bytes(manifest, num_workers) > budget_mb * 2**20 else "memory"


def _to_tensor(values, dtype: torch.dtype, device) -> torch.Tensor:
    array = np.asarray(values)
    if array.dtype == object:  # a list column Ray handed over as an array of arrays
        array = np.stack([np.asarray(v) for v in array])
    return torch.as_tensor(array, device=device).to(dtype)


class StreamingPolicyData:
    """Batches streamed from a Ray Data iterator (a worker's shard), pass after pass, with a local shuffle.

    `sample(n, generator)` returns the next `n` rows as (embeddings, scores, costs) tensors; the shuffle
    buffer and a pass's order are seeded (`seed`), so a run is repeatable for a fixed sharding.
    """

    def __init__(
        self,
        iterator,
        shuffle_buffer_rows: int = 65_536,
        device: str | torch.device = "cpu",
        seed: int = 0,
        prefetch_batches: int = 2,
    ) -> None:
        self.iterator = iterator
        self.shuffle_buffer_rows = shuffle_buffer_rows
        self.device = torch.device(device)
        self.seed = seed
        self.prefetch_batches = prefetch_batches
        self.passes = 0
        self.rows_seen = 0
        self._batch_size: int | None = None
        self._batches: Iterator[dict] | None = None

    def _new_pass(self, batch_size: int) -> Iterator[dict]:
        self.passes += 1
        return iter(
            self.iterator.iter_batches(
                batch_size=batch_size,
                batch_format="numpy",
                drop_last=True,
                prefetch_batches=self.prefetch_batches,
                local_shuffle_buffer_size=self.shuffle_buffer_rows,
                local_shuffle_seed=self.seed + self.passes,
            )
        )

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """The next `n` rows (embeddings (n, D), scores (n, K), costs (n, K)); `generator` is unused here."""
        del generator  # order comes from the seeded shuffle buffer
        if self._batches is None or self._batch_size != n:
            self._batch_size, self._batches = n, self._new_pass(n)
        batch = next(self._batches, None)
        if batch is None:  # end of a pass over this worker's shard: start the next one
            self._batches = self._new_pass(n)
            batch = next(self._batches, None)
            if batch is None:
                raise ValueError(f"this worker's shard has fewer than {n} rows: use a smaller batch or fewer workers")
        self.rows_seen += n
        return (
            _to_tensor(batch["embedding"], torch.float32, self.device),
            _to_tensor(batch["scores"], torch.float32, self.device),
            _to_tensor(batch["costs"], torch.float32, self.device),
        )
