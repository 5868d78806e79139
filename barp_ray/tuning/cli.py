"""`barp tune`: registered into the `barp` CLI when this module is importable (see barp_ray.cli)."""

from __future__ import annotations

import argparse

from barp_ray.cli_support import address_flag, command, print_outputs, simple_fields
from barp_ray.tuning.config import SweepConfig


@command(
    "tune",
    "Ray Tune sweep (ASHA, Optuna) over training hyperparameters; exports the best",
    SweepConfig,
    {**simple_fields(SweepConfig, exclude=("out_dir",)), "out": "out_dir"},
    address_flag,
)
def _tune(cfg: SweepConfig, args: argparse.Namespace) -> int:
    from barp_ray.tuning.sweep import connect_ray, run_sweep

    dashboard = connect_ray(cfg, args.address)
    if dashboard:
        print(f"Ray dashboard: {dashboard}", flush=True)
    outcome = run_sweep(cfg)
    default = "not run" if outcome.default_value is None else f"{outcome.default_value:.4f}"
    print(
        f"\nbest trial {outcome.best_trial}: {cfg.metric}={outcome.best_value:.4f} "
        f"(default config: {default}); {len(outcome.trials)} trials in {outcome.seconds:.0f}s"
    )
    print(f"best params: {outcome.best_params}")
    print(f"TensorBoard: tensorboard --logdir {outcome.experiment_path}")
    print_outputs(outcome.paths)
    return 0
