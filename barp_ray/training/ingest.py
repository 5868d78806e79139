"""How a training worker gets its rows: in memory below a per-worker budget, streamed above it.

In memory (the fast path for logs that fit): the worker reads its share of the rows once, straight from the
shard files with pyarrow (`worker.read_train_table`, no Ray Data pipeline to start), into tensors, and every
step indexes random rows. Streamed (logs larger than a worker's memory): the worker pulls batches from its Ray
Data shard with `iter_batches(local_shuffle_buffer_size=...)`, one pass after another, so memory holds one
shuffle buffer and a few blocks whatever the number of rows. Both expose `sample(n, generator)`, the one call
the REINFORCE step makes for its batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pyarrow as pa
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


def _to_tensor(column: pa.ChunkedArray | pa.Array, dtype: torch.dtype) -> torch.Tensor:
    """An Arrow column as a tensor; a column of lists (one row per list) becomes (rows, width), flattened in
    one call instead of stacked row by row."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        array = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
    else:
        array = column.to_numpy(zero_copy_only=False)
    return torch.as_tensor(array).to(dtype)


class StreamingPolicyData:
    """Rows streamed from a Ray Data iterator (a worker's shard), pass after pass, with a local shuffle.

    Rows arrive in chunks of `chunk_rows` (Ray Data's per-batch cost is paid once per chunk, not once per
    optimiser step), each chunk permuted once more and then served `n` rows at a time. `sample(n, generator)`
    returns the next `n` rows as (embeddings, scores, costs) tensors; the shuffle buffer, a pass's order and
    the in-chunk permutation are seeded (`seed`), so a run is repeatable for a fixed sharding.
    """

    def __init__(
        self,
        iterator,
        shuffle_buffer_rows: int = 65_536,
        device: str | torch.device = "cpu",
        seed: int = 0,
        prefetch_batches: int = 2,
        chunk_rows: int = 8192,
    ) -> None:
        self.iterator = iterator
        self.shuffle_buffer_rows = shuffle_buffer_rows
        self.device = torch.device(device)
        self.seed = seed
        self.prefetch_batches = prefetch_batches
        self.chunk_rows = chunk_rows
        self.passes = 0
        self.rows_seen = 0
        self._chunks: Iterator[pa.Table] | None = None
        self._chunk: tuple[torch.Tensor, ...] = ()
        self._pos = 0
        self._permute = torch.Generator().manual_seed(seed)

    def _new_pass(self) -> Iterator[pa.Table]:
        self.passes += 1
        return iter(
            self.iterator.iter_batches(
                batch_size=self.chunk_rows,
                batch_format="pyarrow",  # list columns flatten in one call (numpy gives arrays of arrays)
                prefetch_batches=self.prefetch_batches,
                local_shuffle_buffer_size=self.shuffle_buffer_rows,
                local_shuffle_seed=self.seed + self.passes,
            )
        )

    def _next_chunk(self, n: int) -> None:
        """Load the next chunk with at least `n` rows (starting a new pass at the end of one)."""
        fresh_pass = False
        while True:
            chunk = next(self._chunks, None) if self._chunks is not None else None
            if chunk is None:
                if fresh_pass:  # a whole pass without one chunk of n rows
                    raise ValueError(
                        f"this worker's shard has fewer than {n} rows: use a smaller batch or fewer workers"
                    )
                self._chunks, fresh_pass = self._new_pass(), True
                continue
            if chunk.num_rows >= n:
                break
        order = torch.randperm(chunk.num_rows, generator=self._permute)
        self._chunk = tuple(
            _to_tensor(chunk.column(name), torch.float32)[order].to(self.device) for name in TRAIN_COLUMNS
        )
        self._pos = 0

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """The next `n` rows (embeddings (n, D), scores (n, K), costs (n, K)); `generator` is unused here."""
        del generator  # order comes from the seeded shuffle buffer and chunk permutation
        if not self._chunk or self._pos + n > len(self._chunk[0]):
            self._next_chunk(n)  # the < n rows left at a chunk's end are skipped
        rows = tuple(t[self._pos : self._pos + n] for t in self._chunk)
        self._pos += n
        self.rows_seen += n
        return rows
