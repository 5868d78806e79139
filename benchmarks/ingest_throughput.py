"""Per-worker ingestion throughput: rows/s a training worker gets from its data, in memory vs streamed.

The REINFORCE step asks its data for `batch` rows at a time (`PolicyData.sample` in memory,
`StreamingPolicyData.sample` streamed). This measures those calls alone, on one prepared or synthetic shard
folder, for a fixed number of rows: (a) in memory, after reading the split as a one-worker run does
(`worker.read_train_table`, pyarrow; the time to read is reported separately: it is a worker's time to first
step), (b) streamed from Ray Data with the local shuffle
buffer, first chunk included. It is the input to the cluster projection in docs/cluster.md.

    barp synth-logs --rows 100000 --out runs/bench/synth-100k
    python benchmarks/ingest_throughput.py --data runs/bench/synth-100k --rows 200000 --batch 128
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from barp_ray.data.shards import read_manifest, read_shards_ray
from barp_ray.ray_connect import connect
from barp_ray.training.config import TrainConfig
from barp_ray.training.ingest import TRAIN_COLUMNS, StreamingPolicyData
from barp_ray.training.loop import PolicyData
from barp_ray.training.worker import read_train_table


def measure(data: str, rows: int, batch: int, buffer_rows: int, chunk_rows: int) -> dict:
    manifest = read_manifest(data)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    table = read_train_table(TrainConfig(data=data), manifest["models"], manifest.get("encoder"), rank=0, world=1)
    memory = PolicyData.from_table(table)
    materialise_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(rows // batch):
        memory.sample(batch, gen)
    memory_rows_s = rows / (time.perf_counter() - t0)
    del memory, table

    stream = StreamingPolicyData(
        read_shards_ray(data, split="train", columns=TRAIN_COLUMNS).iterator(),
        shuffle_buffer_rows=buffer_rows,
        chunk_rows=chunk_rows,
    )
    t0 = time.perf_counter()
    stream.sample(batch)
    first_batch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(rows // batch - 1):
        stream.sample(batch)
    stream_rows_s = (rows - batch) / (time.perf_counter() - t0)
    return {
        "data": data,
        "train_rows": int(manifest.get("per_split", {}).get("train", 0)) or None,
        "rows_sampled": rows,
        "batch": batch,
        "memory_materialise_s": round(materialise_s, 2),
        "memory_rows_per_s": round(memory_rows_s),
        "stream_first_batch_s": round(first_batch_s, 2),
        "stream_rows_per_s": round(stream_rows_s),
        "stream_passes": stream.passes,
        "stream_vs_memory": round(stream_rows_s / memory_rows_s, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="prepared (or `barp synth-logs`) shard folder, path or URI")
    p.add_argument("--rows", type=int, default=200_000, help="rows to draw in each mode")
    p.add_argument("--batch", type=int, default=128, help="rows per sample() call (a worker's batch)")
    p.add_argument("--buffer-rows", type=int, default=65_536, help="local shuffle buffer (TrainConfig default)")
    p.add_argument("--chunk-rows", type=int, default=8192, help="rows per Ray Data batch when streaming")
    args = p.parse_args()
    connect(num_cpus=2, quiet=True)
    print(json.dumps(measure(args.data, args.rows, args.batch, args.buffer_rows, args.chunk_rows), indent=2))


if __name__ == "__main__":
    main()
