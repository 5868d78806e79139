"""`barp tune`: registered into the `barp` CLI when this module is importable (see barp_ray.cli)."""

from __future__ import annotations

import argparse

from barp_ray.cli import _load, _print_outputs, command


def _tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="prepared + embedded shard directory")
    p.add_argument("--out", help="output directory: best_config.yaml, best_policy/, sweep_results.*")
    p.add_argument("--storage-path", help="Tune + Train storage: local path or s3:// / gs:// URI")
    p.add_argument("--name", help="Tune experiment name")
    p.add_argument("--num-samples", type=int, help="trials in all (the default config included)")
    p.add_argument("--max-concurrent-trials", type=int)
    p.add_argument("--search-alg", choices=["optuna", "random"])
    p.add_argument("--scheduler", choices=["asha", "fifo"])
    p.add_argument("--seed", type=int)
    p.add_argument("--overwrite", action="store_true", default=None, help="replace a sweep of the same name")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a new local one)")


@command("tune", "Ray Tune sweep (ASHA, Optuna) over training hyperparameters; exports the best")(_tune_args)
def _tune(args: argparse.Namespace) -> int:
    from barp_ray.tuning.config import SweepConfig
    from barp_ray.tuning.sweep import connect_ray, run_sweep

    cfg = _load(
        SweepConfig, args, data=args.data, out_dir=args.out, storage_path=args.storage_path, name=args.name,
        num_samples=args.num_samples, max_concurrent_trials=args.max_concurrent_trials,
        search_alg=args.search_alg, scheduler=args.scheduler, seed=args.seed, overwrite=args.overwrite,
    )
    dashboard = connect_ray(cfg, args.address)
    if dashboard:
        print(f"Ray dashboard: {dashboard}", flush=True)
    outcome = run_sweep(cfg)
    default = "not run" if outcome.default_value is None else f"{outcome.default_value:.4f}"
    print(f"\nbest trial {outcome.best_trial}: {cfg.metric}={outcome.best_value:.4f} "
          f"(default config: {default}); {len(outcome.trials)} trials in {outcome.seconds:.0f}s")
    print(f"best params: {outcome.best_params}")
    print(f"TensorBoard: tensorboard --logdir {outcome.experiment_path}")
    _print_outputs(outcome.paths)
    return 0
