"""Training throughput: Ray Train (1 and 2 CPU workers) vs a bare single-process PyTorch loop.

Same prepared shards, same TrainConfig, same in-memory REINFORCE step. Steady-state samples/s is what the
workers report per epoch (step time only); time to first epoch is from `fit()` to the first epoch's report
(worker start, shard read, the first epoch itself); wall time adds the rest. Target: Ray Train with 1 worker
>= 0.8x the bare loop's samples/s. Usage (after the main job):

    python benchmarks/train_throughput.py --data runs/demo/data --out runs/bench
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from serve_common import write_results

from barp_ray.data.shards import read_manifest, read_shards
from barp_ray.policy.model import BarpPolicy
from barp_ray.training.config import TrainConfig
from barp_ray.training.loop import PolicyData, ReinforceLearner, policy_spec
from barp_ray.training.trainer import resolve_cost_scale, train_policy


def bare_loop(cfg: TrainConfig, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    manifest = read_manifest(cfg.data)
    train = read_shards(cfg.data).where_split("train")
    tau = resolve_cost_scale(cfg)
    policy = BarpPolicy(policy_spec(cfg, manifest["models"], tau, manifest["encoder"], train.embeddings.shape[1]))
    learner = ReinforceLearner(policy, cfg, tau, cfg.batch_size, cfg.seed)
    data = PolicyData.from_table(train)
    learner.step(data)  # warm-up
    t0 = time.perf_counter()
    steps = cfg.total_steps
    for _ in range(steps):
        learner.step(data)
    seconds = time.perf_counter() - t0
    return {"samples_per_s": steps * cfg.batch_size / seconds, "seconds": seconds, "threads": threads}


def ray_run(cfg: TrainConfig, workers: int, cpus_per_worker: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = cfg.model_copy(
            update={
                "num_workers": workers,
                "cpus_per_worker": cpus_per_worker,
                "storage_path": tmp,
                "name": f"bench-{workers}",
            }
        )
        t0, started_at = time.perf_counter(), time.time()
        outcome = train_policy(run_cfg)
        wall = time.perf_counter() - t0
    history = sorted(outcome.history, key=lambda m: m["epoch"])
    rates = [m["train_samples_per_s"] for m in history]
    first = history[0].get("reported_at") if history else None
    return {
        "samples_per_s": float(np.median(rates[1:] if len(rates) > 1 else rates)),
        "wall_s": wall,
        "time_to_first_epoch_s": None if first is None else first - started_at,
        "workers": workers,
        "cpus_per_worker": cpus_per_worker,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="runs/demo/data")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=150)
    args = parser.parse_args()
    cfg = TrainConfig(data=args.data, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch)
    print(cfg.describe())
    results = {"config": cfg.model_dump(), "cpu_count": os.cpu_count(), "load_before": os.getloadavg()}
    results["bare_1_thread"] = bare_loop(cfg, 1)
    results["bare_2_threads"] = bare_loop(cfg, 2)

    import ray

    from barp_ray.ray_connect import connect

    connect(num_cpus=2)
    results["ray_1_worker"] = ray_run(cfg, 1, 1.0)
    results["ray_2_workers"] = ray_run(cfg, 2, 0.5)
    ray.shutdown()
    results["load_after"] = os.getloadavg()
    base = results["bare_1_thread"]["samples_per_s"]
    rows = [
        ("bare loop, 1 thread", results["bare_1_thread"]["samples_per_s"], results["bare_1_thread"]["seconds"]),
        ("bare loop, 2 threads", results["bare_2_threads"]["samples_per_s"], results["bare_2_threads"]["seconds"]),
        ("Ray Train, 1 worker (1 CPU)", results["ray_1_worker"]["samples_per_s"], results["ray_1_worker"]["wall_s"]),
        (
            "Ray Train, 2 workers (0.5 CPU, DDP)",
            results["ray_2_workers"]["samples_per_s"],
            results["ray_2_workers"]["wall_s"],
        ),
    ]
    first = {
        "Ray Train, 1 worker (1 CPU)": results["ray_1_worker"]["time_to_first_epoch_s"],
        "Ray Train, 2 workers (0.5 CPU, DDP)": results["ray_2_workers"]["time_to_first_epoch_s"],
    }
    md = [
        "| run | samples/s (steady) | vs bare 1-thread | time to first epoch (s) | seconds (bare: steps; "
        "Ray: wall incl. start) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    md += [
        f"| {name} | {rate:,.0f} | {rate / base:.2f}x | "
        f"{'-' if first.get(name) is None else f'{first[name]:.1f}'} | {sec:.1f} |"
        for name, rate, sec in rows
    ]
    ratio = results["ray_1_worker"]["samples_per_s"] / base
    md.append(
        f"\nRay Train 1 worker / bare loop (1 thread): {ratio:.2f}x (target >= 0.8x: "
        f"{'met' if ratio >= 0.8 else 'NOT met'}); load average before / after: "
        f"{results['load_before'][0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores."
    )
    results["ratio_1_worker_vs_bare"] = ratio
    text = "\n".join(md)
    print(text)
    _, md_path = write_results(Path(args.out), "train_throughput", results, text + "\n")
    print(f"wrote {md_path}")


if __name__ == "__main__":
    main()
