"""Benchmark: the 8-trial ASHA sweep (tune/sweep.yaml) on the full prepared data; best vs default config.

Records wall time, the trial budget, the load average, best vs default `val_aiq` (validation split carved
from train), then runs `barp evaluate` on the test split for both policies and records their test AIQ.
The default config is the sweep's first trial; if ASHA stopped it early, it is retrained with the full
budget so the comparison is like for like.

    python benchmarks/tune_sweep.py   # data: runs/demo/data if embedded, else runs/bench/data (prepared and
                                      # embedded first; the embedding cache makes reruns free)
    python benchmarks/tune_sweep.py --num-samples 4 --out runs/bench/tune-small
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ensure_data(data: Path) -> dict:
    """Prepare + embed the full RouterBench data into `data` unless it is already there."""
    from barp_ray.data.shards import read_manifest

    if (data / "manifest.json").exists() and read_manifest(data).get("encoder"):
        return {"prepared": False}
    from barp_ray.config import default_data_dir
    from barp_ray.data.prepare import prepare
    from barp_ray.embeddings.job import EmbedConfig, run_embed

    t = time.perf_counter()
    prepare(default_data_dir(), data)
    stats = run_embed(EmbedConfig(data=data, cache_dir=REPO / ".barp_cache" / "embeddings"))
    return {"prepared": True, "embed": str(stats), "prepare_embed_s": round(time.perf_counter() - t, 1)}


def test_aiq(data: Path, policy: Path, out: Path) -> float:
    """`barp evaluate` on the test split; the BaRP router's AIQ from metrics.json."""
    from barp_ray import cli

    code = cli.main(["evaluate", "--data", str(data), "--policy", str(policy), "--out", str(out)])
    if code != 0:
        raise RuntimeError(f"barp evaluate failed for {policy}")
    return float(json.loads((out / "metrics.json").read_text())["routers"]["barp"]["aiq"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="default: runs/demo/data if embedded, else runs/bench/data")
    p.add_argument("--config", type=Path, default=REPO / "tune" / "sweep.yaml")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "tune")
    p.add_argument("--num-samples", type=int)
    args = p.parse_args(argv)

    from barp_ray.training.trainer import train_policy
    from barp_ray.tuning.config import SweepConfig
    from barp_ray.tuning.sweep import connect_ray, export_checkpoint, run_sweep

    out = args.out.resolve()
    demo = REPO / "runs" / "demo" / "data"
    if args.data is None:
        manifest = demo / "manifest.json"
        embedded = manifest.exists() and json.loads(manifest.read_text()).get("encoder")
        args.data = demo if embedded else REPO / "runs" / "bench" / "data"
    data = args.data.resolve()
    cfg = SweepConfig.from_yaml(
        args.config,
        data=str(data),
        out_dir=out,
        storage_path=str(out / "ray"),
        overwrite=True,
        num_samples=args.num_samples,
    )
    print(cfg.describe(), flush=True)
    record: dict = {
        "config": str(args.config),
        "num_samples": cfg.num_samples,
        "max_concurrent_trials": cfg.max_concurrent_trials,
        "load_before": load_average(),
    }
    connect_ray(cfg)
    record["data"] = {"dir": str(data), **ensure_data(data)}

    t = time.perf_counter()
    sweep = run_sweep(cfg)
    record["sweep_wall_s"] = round(time.perf_counter() - t, 1)
    record["load_after_sweep"] = load_average()
    base = cfg.base_config()
    trials = sweep.trials
    record["trials"] = {
        "ran": len(trials),
        "max_epochs": base.epochs,
        "steps_per_epoch": base.steps_per_epoch,
        "stopped_early_by_asha": int((trials["epochs"] < base.epochs).sum()),
        "epochs_per_trial": [int(e) for e in trials["epochs"]],
        "errors": int((trials["status"] != "OK").sum()),
    }
    record["best"] = {
        "trial": sweep.best_trial,
        "val_aiq": round(sweep.best_value, 4),
        "params": sweep.best_params,
    }

    default_rows = trials[trials["is_default"]]
    default_policy = out / "default_policy"
    if len(default_rows) and int(default_rows.iloc[0]["epochs"]) == base.epochs:
        row = default_rows.iloc[0]
        default_val = float(row["val_aiq"])
        export_checkpoint(str(row["checkpoint_path"]), default_policy)
        record["default"] = {"source": "sweep trial (ran all epochs)", "trial": row["trial_id"]}
    else:  # ASHA stopped it (or it was not in the sweep): train the default config with the full budget
        t = time.perf_counter()
        outcome = train_policy(
            base.model_copy(update={"storage_path": str(out / "ray"), "name": "default-full"}),
            export_dir=default_policy,
        )
        default_val = float(outcome.best_metrics["val_aiq"])
        record["default"] = {
            "source": "retrained with the full budget",
            "train_s": round(time.perf_counter() - t, 1),
            "sweep_trial_val_aiq": None if not len(default_rows) else round(float(default_rows.iloc[0]["val_aiq"]), 4),
        }
    record["default"]["val_aiq"] = round(default_val, 4)

    record["test_aiq"] = {
        "best": round(test_aiq(data, sweep.paths["best_policy"], out / "eval_best"), 4),
        "default": round(test_aiq(data, default_policy, out / "eval_default"), 4),
    }
    record["load_after"] = load_average()
    (out / "bench_tune.json").write_text(json.dumps(record, indent=2, default=str))
    print(json.dumps(record, indent=2, default=str))
    print(
        f"\n| | val_aiq | test_aiq |\n|---|---|---|\n"
        f"| best sweep config ({sweep.best_trial}) | {record['best']['val_aiq']} | "
        f"{record['test_aiq']['best']} |\n"
        f"| default config | {record['default']['val_aiq']} | {record['test_aiq']['default']} |\n\n"
        f"sweep: {record['trials']['ran']} trials (budget {cfg.num_samples}, "
        f"{record['trials']['stopped_early_by_asha']} stopped by ASHA) in {record['sweep_wall_s']} s; "
        f"load average before {record['load_before']}, after {record['load_after_sweep']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
