"""GPU vs CPU training throughput: Ray Train with 1 GPU worker vs 1 CPU worker, and the bare loop on each.

Self-contained: runs from the repo with only the package's requirements installed. Data is either a prepared
+ embedded shard dir (`--data`, e.g. copied into an ignored folder of the repo) or random embeddings, scores
and costs (`--synthetic N`, no data at all). Prints samples/s for every run and a markdown table; `--out`
also writes JSON.

    python benchmarks/gpu_train.py --synthetic 20000                   # bare loop + Ray Train, CPU and GPU
    python benchmarks/gpu_train.py --data runs/demo/data --no-ray      # bare loop only

Also checks the `--use-gpu` code paths: validation on the GPU, and a learner state round trip through
`torch.load(map_location=cuda)` (what a resumed GPU run does); each reports ok or the error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from barp_ray.data.shards import read_shards, write_shards
from barp_ray.data.table import RoutingTable
from barp_ray.objective import CostScale
from barp_ray.policy.model import BarpPolicy
from barp_ray.training.config import TrainConfig
from barp_ray.training.loop import PolicyData, ReinforceLearner, policy_spec, validation_metrics

MODELS = [f"model-{k}" for k in range(11)]  # RouterBench has 11 candidate models


def synthetic_table(n: int, dim: int = 384, seed: int = 0) -> RoutingTable:
    """Random unit embeddings in clusters, per-cluster model quality, log-spread costs; 70/15/15 split."""
    rng = np.random.default_rng(seed)
    k = len(MODELS)
    centers = rng.normal(size=(8, dim))
    cluster = rng.integers(0, 8, size=n)
    emb = centers[cluster] + 0.5 * rng.normal(size=(n, dim))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    quality = rng.uniform(0.2, 0.9, size=(8, k))
    scores = (rng.random((n, k)) < quality[cluster]).astype(np.float32)
    costs = np.exp(rng.uniform(np.log(1e-5), np.log(5e-3), size=k)) * rng.uniform(0.5, 1.5, size=(n, k))
    split = rng.choice(np.array(["train", "val", "test"]), size=n, p=[0.7, 0.15, 0.15])
    return RoutingTable(
        prompt_ids=[f"s{i}" for i in range(n)],
        prompts=[f"synthetic prompt {i}" for i in range(n)],
        tasks=np.array([f"task-{c % 3}" for c in cluster]),
        models=list(MODELS),
        scores=scores,
        costs=costs,
        split=split,
        embeddings=emb,
        encoder="synthetic-random-384",
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(
    train: RoutingTable, val: RoutingTable, cfg: TrainConfig, tau: CostScale, device: str, steps: int, threads: int
) -> dict:
    """The learner step without Ray (same code the Train workers run): samples/s after a warm-up."""
    dev = torch.device(device)
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    data = PolicyData.from_table(train, dev)
    policy = BarpPolicy(policy_spec(cfg, train.models, tau, "bench", train.embeddings.shape[1])).to(dev)
    learner = ReinforceLearner(policy, cfg, tau, cfg.batch_size, seed=cfg.seed)
    for _ in range(20):
        learner.step(data)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        stats = learner.step(data)
    _sync(dev)
    seconds = time.perf_counter() - t0
    out = {
        "device": device,
        "steps": steps,
        "batch_size": cfg.batch_size,
        "seconds": round(seconds, 3),
        "samples_per_s": round(steps * cfg.batch_size / seconds, 1),
        "final_reward": round(stats["reward"], 4),
    }
    try:  # validation on the training device (what every epoch of a --use-gpu run does)
        out["val_aiq"] = round(validation_metrics(policy, PolicyData.from_table(val, dev))["val_aiq"], 4)
        out["validation_on_device"] = "ok"
    except Exception as exc:  # noqa: BLE001 - report, keep benchmarking
        out["validation_on_device"] = f"ERROR {type(exc).__name__}: {exc}"[:300]
    try:  # resume path: learner state saved, then loaded with map_location=<device>
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"learner": learner.state_dict()}, Path(tmp) / "s.pt")
            state = torch.load(Path(tmp) / "s.pt", map_location=dev, weights_only=False)
            learner.load_state_dict(state["learner"])
            learner.step(data)
        out["resume_state_on_device"] = "ok"
    except Exception as exc:  # noqa: BLE001
        out["resume_state_on_device"] = f"ERROR {type(exc).__name__}: {exc}"[:300]
    return out


def ray_train_run(data_dir: Path, cfg: TrainConfig, use_gpu: bool, storage: Path) -> dict:
    """`train_policy` with 1 worker (GPU or CPU): per-epoch train_samples_per_s from the worker's reports."""
    from barp_ray.training.trainer import train_policy

    name = f"gpu-bench-{'gpu' if use_gpu else 'cpu'}"
    run_cfg = cfg.model_copy(
        update={
            "data": str(data_dir),
            "storage_path": str(storage),
            "name": name,
            "use_gpu": use_gpu,
            "num_workers": 1,
        }
    )
    t0 = time.perf_counter()
    try:
        outcome = train_policy(run_cfg)
    except Exception as exc:  # noqa: BLE001
        return {
            "use_gpu": use_gpu,
            "error": f"{type(exc).__name__}: {exc}"[:1500],
            "traceback": traceback.format_exc()[-3000:],
        }
    rates = [m["train_samples_per_s"] for m in outcome.history]
    steady = rates[1:] or rates  # epoch 0 includes CUDA context warm-up
    return {
        "use_gpu": use_gpu,
        "cpus_per_worker": run_cfg.cpus_per_worker,
        "epochs": run_cfg.epochs,
        "steps_per_epoch": run_cfg.steps_per_epoch,
        "batch_size": run_cfg.batch_size,
        "samples_per_s_per_epoch": [round(r, 1) for r in rates],
        "samples_per_s": round(float(np.median(steady)), 1),
        "best_val_aiq": round(float(outcome.best_metrics["val_aiq"]), 4),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="prepared + embedded shard dir")
    src.add_argument("--synthetic", type=int, metavar="N", help="N random rows instead of data")
    p.add_argument("--steps", type=int, default=300, help="bare-loop timed steps")
    p.add_argument("--epochs", type=int, default=4, help="Ray Train epochs")
    p.add_argument("--steps-per-epoch", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--hidden-dim", type=int, default=256)
    p.add_argument("--cpus-per-worker", type=float, default=4.0, help="CPU worker's CPUs (= torch threads)")
    p.add_argument("--no-ray", action="store_true", help="bare loops only")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "cuda": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
    }
    print(f"env: {env}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="barp-gpu-bench-"))
    if args.data:
        data_dir = args.data.resolve()
        table = read_shards(data_dir)
        if table.embeddings is None:
            raise SystemExit(f"{data_dir} has no embeddings: run `barp embed` first")
    else:
        table = synthetic_table(args.synthetic)
        data_dir = work / "data"
        write_shards(table, data_dir, num_shards=4)
    train, val = table.where_split("train"), table.where_split("val")
    cfg = TrainConfig(
        data=str(data_dir),
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        hidden_dim=args.hidden_dim,
        cpus_per_worker=args.cpus_per_worker,
        max_failures=0,
    )
    tau = cfg.resolve_cost_scale(train.costs)  # the default reward cost scale
    dims = f"K={table.num_models}, D={table.embeddings.shape[1]}"
    print(f"data: {len(train)} train / {len(val)} val rows, {dims}", flush=True)
    results: dict = {"env": env, "rows": {"train": len(train), "val": len(val)}, "bare": [], "ray_train": []}
    threads = max(1, int(args.cpus_per_worker))
    for device in ["cpu"] + (["cuda"] if cuda else []):
        r = bare_loop(train, val, cfg, tau, device, args.steps, threads)
        print(f"bare loop {device}: {r}", flush=True)
        results["bare"].append(r)

    if not args.no_ray:
        import ray

        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, local, short-lived instance
        ray.init(
            num_cpus=max(4, int(args.cpus_per_worker) + 2),
            num_gpus=1 if cuda else 0,
            include_dashboard=False,
            object_store_memory=1024**3,
        )
        for use_gpu in [False] + ([True] if cuda else []):
            r = ray_train_run(data_dir, cfg, use_gpu, work / "ray")
            shown = {k: v for k, v in r.items() if k != "traceback"}
            print(f"ray train use_gpu={use_gpu}: {shown}", flush=True)
            if "traceback" in r:
                print(r["traceback"], flush=True)
            results["ray_train"].append(r)
        ray.shutdown()

    print("\n| run | device | samples/s |\n|---|---|---|")
    for r in results["bare"]:
        print(f"| bare loop | {r['device']} | {r['samples_per_s']:.0f} |")
    for r in results["ray_train"]:
        dev = "cuda (1 GPU worker)" if r["use_gpu"] else f"cpu (1 worker, {args.cpus_per_worker:g} CPU)"
        print(f"| Ray Train | {dev} | {r.get('samples_per_s', 'ERROR')} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
