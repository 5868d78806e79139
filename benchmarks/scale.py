"""Training at log scale: rows vs wall time and memory, streaming vs in-memory, and recovery of the known optimum.

For each size in --rows, synthetic logged decisions (`barp synth-logs`, real MiniLM embeddings of the prepared
data as centres when --source is given) are written once (cached under --out), then BaRP is trained on Ray
Train with the ingestion mode asked for. Each run reports: wall time, time to the first optimiser step,
samples/s, peak RSS of a training worker and of the driver, and the greedy policy's expected reward on the
test split against the ground-truth optimum (the synthetic data knows q_k(x) exactly).

    python benchmarks/scale.py --rows 100000 500000 2000000 --modes stream --out runs/bench/scale
    python benchmarks/scale.py --rows 200000 --modes memory stream --out runs/bench/scale   # same-data ratio

Writes `scale.json` and `scale.md` under --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from barp_ray.data.synth import optimal_rewards, policy_rewards, read_synth_split
from barp_ray.objective import greedy_curve, w_grid
from barp_ray.policy.checkpoint import load_policy
from barp_ray.ray_connect import connect
from barp_ray.training.config import TrainConfig
from barp_ray.training.trainer import train_policy
from barp_ray.training.worker import process_memory_mb


def _median_after_first(history: list[dict]) -> float | None:
    rates = [h["train_samples_per_s"] for h in sorted(history, key=lambda h: h["epoch"]) if h["epoch"] > 0]
    return float(np.median(rates)) if rates else None


def ensure_logs(out: Path, rows: int, source: str | None, seed: int, dtype: str = "float32") -> Path:
    """The synthetic logs for `rows` (written once by `barp synth-logs` in a child process, so that the
    driver's memory below is the training driver's alone)."""
    data = out / f"synth-{rows}-{dtype}"
    if not (data / "manifest.json").exists():
        cmd = [sys.executable, "-m", "barp_ray.cli", "synth-logs", "--out", str(data), "--rows", str(rows)]
        cmd += ["--seed", str(seed), "--rows-per-shard", "50000", "--embedding-dtype", dtype]
        subprocess.run(cmd + (["--source", source] if source else []), check=True)
    return data


def optimum_gap(policy_dir: str, data: Path, test_rows: int) -> dict:
    """Expected reward of the trained greedy policy vs the optimum, on (up to) `test_rows` test rows."""
    manifest = json.loads((data / "manifest.json").read_text())
    test = read_synth_split(str(data), "test", columns=["embedding", "expected_scores", "costs"])
    take = slice(0, min(test_rows, len(test["costs"])))
    policy = load_policy(policy_dir)
    grid = w_grid()
    tau = policy.spec.cost_scale  # the optimum under the reward the policy was trained on
    curve = greedy_curve(
        policy, torch.as_tensor(test["embedding"][take]), test["expected_scores"][take], test["costs"][take], grid, tau
    )
    achieved = policy_rewards(curve.choices, test["expected_scores"][take], test["costs"][take], tau, grid)
    optimum = optimal_rewards(test["expected_scores"][take], test["costs"][take], tau, grid)
    k = len(manifest["models"])
    n = len(test["costs"][take])
    best_single = max(
        policy_rewards(np.full((len(grid), n), m), test["expected_scores"][take], test["costs"][take], tau, grid).mean()
        for m in range(k)
    )
    return {
        "policy_reward": float(achieved.mean()),
        "optimal_reward": float(optimum.mean()),
        "best_single_reward": float(best_single),
        "gap_to_optimum": float((optimum.mean() - achieved.mean()) / abs(optimum.mean())),
    }


def run_one(data: Path, rows: int, mode: str, args: argparse.Namespace) -> dict:
    cfg = TrainConfig(
        data=str(data),
        storage_path=str(args.out / "ray"),
        name=f"scale-{rows}-{mode}-{int(time.time())}",
        num_workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        ingest=mode,
        worker_memory_budget_mb=args.budget_mb,
        epochs=args.epochs,
        passes=args.passes,  # at log scale a few passes over the rows, not the small-data default
        patience=None,
        seed=args.seed,
    )
    start = time.perf_counter()
    outcome = train_policy(cfg, export_dir=args.out / "policies" / f"{rows}-{mode}")
    wall = time.perf_counter() - start
    driver = process_memory_mb()  # before the evaluation below reads the test split
    latest = outcome.latest_metrics
    result = {
        "rows": rows,
        "mode": mode,
        "wall_s": round(wall, 1),
        "train_seconds": round(outcome.seconds, 1),
        "samples_per_s": latest.get("train_samples_per_s"),
        # steady state: the median epoch after the first (which pays the shard read or the stream start), over the
        # epochs whose checkpoints Ray Train kept (`num_to_keep`)
        "samples_per_s_median_after_first": _median_after_first(outcome.history),
        "seconds_to_first_step": latest.get("seconds_to_first_step"),
        "worker_peak_rss_mb": latest.get("worker_peak_rss_mb"),
        "worker_rss_anon_mb": latest.get("worker_rss_anon_mb"),
        "worker_rss_shmem_mb": latest.get("worker_rss_shmem_mb"),
        "driver_peak_rss_mb": round(driver["peak_rss"], 1),
        "driver_rss_anon_mb": round(driver.get("rss_anon", float("nan")), 1),
        "ingest": latest.get("ingest"),
        "passes": args.passes,
        "embedding_dtype": args.embedding_dtype,
    }
    result.update(optimum_gap(str(outcome.policy_dir), data, args.test_rows))
    return result


def markdown(results: list[dict]) -> str:
    head = (
        "| rows | ingest | wall s | first step s | samples/s last epoch / median after the first | worker peak RSS MB "
        "| worker private / object-store MB | driver peak RSS MB | policy reward | optimum | best single "
        "| gap to optimum |"
    )
    lines = [head, "|" + " ---: |" * 12]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['ingest']} | {r['wall_s']} | {r['seconds_to_first_step']} | "
            f"{r['samples_per_s']:.0f} / {r.get('samples_per_s_median_after_first') or 0:.0f} | "
            f"{r['worker_peak_rss_mb']:.0f} | "
            f"{r.get('worker_rss_anon_mb') or 0:.0f} / {r.get('worker_rss_shmem_mb') or 0:.0f} | "
            f"{r['driver_peak_rss_mb']:.0f} | "
            f"{r['policy_reward']:.4f} | {r['optimal_reward']:.4f} | {r['best_single_reward']:.4f} | "
            f"{100 * r['gap_to_optimum']:.2f}% |"
        )
    return "\n".join(lines) + "\n"


def _replace_option(argv: list[str], flag: str, values: list[str]) -> list[str]:
    """`argv` with `flag`'s values (nargs="+") replaced by `values` (appended when absent)."""
    out, skipping = [], False
    for arg in argv:
        if arg == flag:
            skipping = True
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        out.append(arg)
    return [*out, flag, *values]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[100_000, 500_000, 2_000_000])
    p.add_argument("--modes", nargs="+", default=["stream"], choices=["memory", "stream", "auto"])
    p.add_argument("--source", default=None, help="prepared, embedded dir whose real embeddings seed the prompts")
    p.add_argument("--out", type=Path, default=Path("runs/bench/scale"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=float, default=0.5)
    p.add_argument("--budget-mb", type=float, default=1024.0, help="per-worker memory budget for ingest=auto")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--passes", type=float, default=1.0, help="interactions per logged row over the whole run")
    p.add_argument("--embedding-dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--test-rows", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--object-store-mb", type=int, default=None, help="Ray's object store size (default: Ray's, 30%% of RAM)"
    )
    p.add_argument("--one", type=Path, default=None, help=argparse.SUPPRESS)  # internal: one run, result here
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one is not None:  # a child process: one (rows, mode) run on a fresh Ray instance
        store = args.object_store_mb * 1024**2 if args.object_store_mb else None
        connect(num_cpus=4, quiet=True, object_store_memory=store)
        data = ensure_logs(args.out, args.rows[0], args.source, args.seed, args.embedding_dtype)
        args.one.write_text(json.dumps(run_one(data, args.rows[0], args.modes[0], args)))
        return 0
    results = []
    for rows in args.rows:
        ensure_logs(args.out, rows, args.source, args.seed, args.embedding_dtype)
        for mode in args.modes:
            # each run in its own process, so the driver's peak RSS is that run's alone
            result_file = args.out / f"run-{rows}-{mode}.json"
            child = list(argv if argv is not None else sys.argv[1:])
            child = _replace_option(_replace_option(child, "--rows", [str(rows)]), "--modes", [mode])
            subprocess.run([sys.executable, __file__, *child, "--one", str(result_file)], check=True)
            results.append(json.loads(result_file.read_text()))
            print(json.dumps(results[-1]), flush=True)
    (args.out / "scale.json").write_text(json.dumps(results, indent=2))
    (args.out / "scale.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
