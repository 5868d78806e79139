"""Parquet shards of a RoutingTable (the schema in docs/ARCHITECTURE.md) and their read-back.

A prepared directory holds ``part-00000.parquet`` ... (row chunks of ``RoutingTable.to_arrow()``, each
with the ``barp.models`` / ``barp.encoder`` schema metadata) and ``manifest.json`` (models, encoder, files,
row counts per split and task, the validation report). ``read_shards`` reads it back with pyarrow
(drivers, tests); ``read_shards_ray`` as a Ray Dataset, which ``dataset_to_table`` turns back into
a RoutingTable.
The one-call ``prepare`` (raw files -> shards) lives in ``barp_ray.data.prepare``.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from barp_ray import storage
from barp_ray.data.table import RoutingTable

if TYPE_CHECKING:
    import ray.data

    from barp_ray.data.validation import ValidationReport

MANIFEST = "manifest.json"
SHARD_PATTERN = "part-{:05d}.parquet"
SHARD_GLOB = "part-*.parquet"


def _counts(table: RoutingTable) -> dict[str, Any]:
    split = table.split if table.split is not None else np.full(len(table), None, dtype=object)
    per_task_split: dict[str, Counter] = {}
    for task, name in zip(table.tasks.tolist(), split.tolist(), strict=True):
        per_task_split.setdefault(str(task), Counter())[str(name)] += 1
    return {
        "num_rows": len(table),
        "per_split": dict(sorted(Counter(str(s) for s in split.tolist()).items())),
        "per_task": dict(sorted(Counter(str(t) for t in table.tasks.tolist()).items())),
        "per_task_split": {t: dict(sorted(c.items())) for t, c in sorted(per_task_split.items())},
    }


def write_shards(
    table: RoutingTable,
    out_dir: str | os.PathLike,
    num_shards: int = 4,
    extra_manifest: dict | None = None,
    validation_report: ValidationReport | dict | None = None,
) -> Path:
    """Write ``table`` as ``num_shards`` parquet files plus ``manifest.json``; returns the manifest path.

    Rows keep their order and are cut into contiguous, near-equal chunks (fewer shards when there are fewer
    rows). The folder is built next to ``out_dir`` and published with one rename (`storage.replace_dir`):
    a reader, or a crash half-way, never sees old and new shards mixed. Other files already in ``out_dir``
    are carried over. ``extra_manifest`` entries are merged into the manifest (e.g. the prepare config).
    """
    import shutil
    import uuid

    from barp_ray.storage import replace_dir

    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        if out_dir.is_dir():
            for other in out_dir.iterdir():  # keep files that are not ours (e.g. a README)
                if other.name != MANIFEST and not other.match(SHARD_GLOB):
                    (shutil.copytree if other.is_dir() else shutil.copy2)(other, tmp / other.name)
        arrow = table.to_arrow()
        bounds = np.linspace(0, len(table), min(num_shards, max(len(table), 1)) + 1).astype(int)
        files = []
        for i, (start, stop) in enumerate(itertools.pairwise(bounds)):
            name = SHARD_PATTERN.format(i)
            pq.write_table(arrow.slice(start, stop - start), tmp / name)
            files.append({"file": name, "num_rows": int(stop - start)})
        manifest: dict[str, Any] = {
            "format": "barp-ray routing shards v1",
            "models": list(table.models),
            "encoder": table.encoder,
            "embedding_dim": None if table.embeddings is None else int(table.embeddings.shape[1]),
            "columns": arrow.column_names,
            "files": files,
            **_counts(table),
        }
        if validation_report is not None:
            report = validation_report if isinstance(validation_report, dict) else validation_report.to_dict()
            manifest["validation"] = report
        if extra_manifest:
            manifest.update(extra_manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / MANIFEST


def read_manifest(shard_dir: str | os.PathLike) -> dict:
    """The ``manifest.json`` of a prepared directory, local or a URI (clear error if it is not one)."""
    try:
        raw = storage.read_bytes(storage.join(shard_dir, MANIFEST))
    except FileNotFoundError:
        raise ValueError(
            f"{shard_dir}: no {MANIFEST}; this is not a prepared directory, run `barp prepare` first"
        ) from None
    return json.loads(raw)


def shard_files(shard_dir: str | os.PathLike) -> list[str]:
    """The shard files listed in the manifest, in order (each must exist): local paths or URIs."""
    files = [storage.join(storage.absolute(shard_dir), entry["file"]) for entry in read_manifest(shard_dir)["files"]]
    missing = [f for f in files if not storage.exists(f)]
    if missing:
        raise ValueError(f"{shard_dir}: shard files {missing} listed in {MANIFEST} are missing; re-run `barp prepare`")
    return files


def _read_file(location: str, columns: list[str] | None = None, filters=None) -> pa.Table:
    fs, path = storage.resolve(location)
    return pq.read_table(path, filesystem=fs, columns=columns, filters=filters)


def read_shards(shard_dir: str | os.PathLike) -> RoutingTable:
    """All shards of a prepared directory as one RoutingTable, in the written row order (pyarrow)."""
    manifest = read_manifest(shard_dir)
    tables = [_read_file(f) for f in shard_files(shard_dir)]
    arrow = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return RoutingTable.from_arrow(arrow, models=manifest["models"])


def iter_shard_columns(
    shard_dir: str | os.PathLike, columns: list[str], split: str | None = None, exclude_tasks: Sequence[str] = ()
) -> Iterator[pa.Table]:
    """Only `columns` of the rows of one split (minus `exclude_tasks`), one shard file at a time: a streaming
    pass for driver-side statistics (tau, counts) that never holds the embeddings or the whole table."""
    filters = []
    if split is not None:
        filters.append(("split", "=", split))
    if exclude_tasks:
        filters.append(("task", "not in", list(exclude_tasks)))
    for location in shard_files(shard_dir):
        yield _read_file(location, columns=columns, filters=filters or None)


def read_split_columns(
    shard_dir: str | os.PathLike,
    columns: list[str],
    split: str | None = None,
    exclude_tasks: Sequence[str] = (),
    max_rows: int | None = None,
    seed: int = 0,
    part: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """`columns` of one split's rows (minus `exclude_tasks`) as numpy columns (2-D for list columns), read with
    pyarrow one shard file at a time: the rows a process needs (a training worker's share of the train split,
    its validation rows) without starting a Ray Data pipeline for them. Rows keep the shard order.

    With `max_rows`, a split larger than that yields a uniform random subset of `max_rows` rows (seeded, the
    same on every process). With `part=(index, count)`, only every `count`-th row from position `index` on (a
    training worker's disjoint share: rank, world size). Memory stays bounded by the rows kept plus one shard."""
    keep = _row_subset(shard_dir, split, exclude_tasks, max_rows, seed) if max_rows is not None else None
    if part is not None and not 0 <= part[0] < part[1]:
        raise ValueError(f"part must be (index, count) with 0 <= index < count, got {part}")
    tables, start = [], 0
    for table in iter_shard_columns(shard_dir, columns, split=split, exclude_tasks=exclude_tasks):
        end = start + table.num_rows  # this shard's rows are positions [start, end) of the split
        if keep is not None or part is not None:
            positions = keep[(keep >= start) & (keep < end)] if keep is not None else np.arange(start, end)
            if part is not None:
                positions = positions[positions % part[1] == part[0]]
            table = table.take(pa.array(positions - start, type=pa.int64()))
        tables.append(table)
        start = end
    arrow = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return _numpy_columns(arrow)


def _row_subset(
    shard_dir: str | os.PathLike, split: str | None, exclude_tasks: Sequence[str], max_rows: int, seed: int
) -> np.ndarray | None:
    """Sorted row positions (over the split's rows in shard order) of a seeded `max_rows` subset; None when the
    split has no more rows than that. Counts rows from one small column."""
    total = sum(t.num_rows for t in iter_shard_columns(shard_dir, ["split"], split=split, exclude_tasks=exclude_tasks))
    if total <= max_rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(total, size=max_rows, replace=False))


def read_shards_ray(
    shard_dir: str | os.PathLike, split: str | None = None, columns: list[str] | None = None
) -> ray.data.Dataset:
    """The shards as a Ray Dataset (``ray.data.read_parquet``), optionally only one split's rows.

    All columns are kept unless ``columns`` names a subset. Ray Data drops the schema metadata, so take the
    model list from ``read_manifest(shard_dir)["models"]`` when converting back (``dataset_to_table``).
    Object-store folders (s3://, gs://) are read directly by Ray Data's pyarrow filesystem.
    """
    import ray.data
    from ray.data.expressions import col

    ds = ray.data.read_parquet(shard_files(shard_dir))
    if split is not None:
        ds = ds.filter(expr=col("split") == split)
    if columns is not None:
        if split is not None and "split" not in columns:
            columns = [*columns, "split"]
        ds = ds.select_columns(columns)
    return ds


def _numpy_columns(table: pa.Table) -> dict[str, Any]:
    """Arrow columns -> numpy (2-D for fixed-size-list and tensor columns, object arrays otherwise)."""
    out: dict[str, Any] = {}
    for name in table.column_names:
        column = table.column(name)
        chunk = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if pa.types.is_fixed_size_list(chunk.type):
            flat = chunk.flatten().to_numpy(zero_copy_only=False)
            out[name] = flat.reshape(len(chunk), chunk.type.list_size)
        elif isinstance(chunk.type, pa.ExtensionType) and hasattr(chunk, "to_numpy"):
            out[name] = np.asarray(chunk.to_numpy())  # Ray's tensor extension type
        else:
            out[name] = np.asarray(chunk.to_pylist(), dtype=object)
    return out


def dataset_to_table(ds: ray.data.Dataset, models: list[str], encoder: str | None = None) -> RoutingTable:
    """Materialise a Ray Dataset in the shard schema into a RoutingTable (block order is kept)."""
    import ray

    blocks = [b for b in ray.get(ds.to_arrow_refs()) if b.num_rows]
    if not blocks:
        empty = {
            "prompt_id": [],
            "prompt": [],
            "task": [],
            "split": [],
            "scores": np.zeros((0, len(models))),
            "costs": np.zeros((0, len(models))),
        }
        return RoutingTable.from_columns(empty, models, encoder)
    arrow = pa.concat_tables(blocks, promote_options="default") if len(blocks) > 1 else blocks[0]
    if encoder is None:
        encoder = ((arrow.schema.metadata or {}).get(b"barp.encoder", b"").decode()) or None
    return RoutingTable.from_columns(_numpy_columns(arrow), models, encoder)
