"""`barp`: the command line. Each subcommand runs one job from one config (YAML file and/or flags).

Flags are generated from the config objects (`barp_ray.cli_support`): `barp <cmd> --help` lists every flag
with its description and default. Subcommands of other packages (serving, tuning, offpolicy, data) register
themselves with `barp_ray.cli_support.command` and are imported here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from barp_ray.cli_support import (
    COMMANDS,
    HelpFormatter,
    add_config_flags,
    address_flag,
    command,
    load_config,
    print_outputs,
    simple_fields,
)
from barp_ray.data.prepare import PrepareConfig
from barp_ray.embeddings.job import EmbedConfig
from barp_ray.evaluation.job import EvaluateConfig
from barp_ray.pipeline import DemoConfig
from barp_ray.training.config import TrainConfig

#: Packages whose `cli` module registers more subcommands (skipped when an optional dependency is missing).
OPTIONAL_COMMANDS = ("barp_ray.serving.cli", "barp_ray.tuning.cli", "barp_ray.offpolicy.cli", "barp_ray.data.cli")


# ---- prepare -------------------------------------------------------------------------------------------
@command(
    "prepare",
    "validate raw routing logs and write train/val/test parquet shards",
    PrepareConfig,
    {
        **simple_fields(PrepareConfig, exclude=("data_dir", "out_dir", "prices_file")),
        "data": "data_dir",
        "out": "out_dir",
        "prices": "prices_file",
    },
)
def _prepare(cfg: PrepareConfig, args: argparse.Namespace) -> int:
    from barp_ray.data.prepare import prepare_from_config

    result = prepare_from_config(cfg)
    print(result.report)
    print_outputs({"shards": result.out_dir, "manifest": result.manifest_path})
    return 0


# ---- embed ---------------------------------------------------------------------------------------------
@command(
    "embed",
    "embed prompts with the frozen encoder on a Ray Data actor pool (cached)",
    EmbedConfig,
    simple_fields(EmbedConfig),
    address_flag,
)
def _embed(cfg: EmbedConfig, args: argparse.Namespace) -> int:
    from barp_ray.embeddings.job import run_embed
    from barp_ray.ray_connect import connect

    connect(args.address)
    stats = run_embed(cfg)
    print(f"embeddings: {stats}")
    print_outputs({"shards": cfg.data, "cache": cfg.cache_dir})
    return 0


# ---- train ---------------------------------------------------------------------------------------------
def _train_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--export",
        help="copy the best policy into this folder (default: <storage>/<name>/best_policy); "
        "an existing folder is replaced only if it holds a policy",
    )
    address_flag(p)


@command(
    "train",
    "train the BaRP policy with REINFORCE on Ray Train",
    TrainConfig,
    simple_fields(TrainConfig, exclude=("inject_failure_at_epoch",), rename={"exclude_tasks": "exclude_task"}),
    _train_extra,
)
def _train(cfg: TrainConfig, args: argparse.Namespace) -> int:
    from barp_ray.ray_connect import connect
    from barp_ray.training.trainer import train_policy

    connect(args.address)
    outcome = train_policy(cfg, export_dir=args.export)
    best = outcome.best_metrics
    print(
        f"best epoch {best.get('epoch')}: val_aiq={best.get('val_aiq', float('nan')):.4f} "
        f"val_reward={best.get('val_reward', float('nan')):.4f} cost scale: {outcome.scale.describe()} "
        f"({outcome.seconds:.1f}s)"
    )
    print_outputs({"policy": outcome.policy_dir or outcome.best_checkpoint, "checkpoint": outcome.best_checkpoint})
    return 0


# ---- evaluate ------------------------------------------------------------------------------------------
@command(
    "evaluate",
    "evaluate a policy against the baselines on the test split",
    EvaluateConfig,
    {**simple_fields(EvaluateConfig, exclude=("out_dir",)), "out": "out_dir"},
)
def _evaluate(cfg: EvaluateConfig, args: argparse.Namespace) -> int:
    from barp_ray.evaluation.job import run_evaluate

    print_outputs(run_evaluate(cfg))
    return 0


# ---- demo ----------------------------------------------------------------------------------------------
@command(
    "demo",
    "the whole pipeline: prepare, embed, train, evaluate, seeds + leave-one-task-out, report",
    DemoConfig,
    {
        **simple_fields(DemoConfig, exclude=("data_dir", "out_dir")),
        "data": "data_dir",
        "out": "out_dir",
        "epochs": "train.epochs",
        "steps_per_epoch": "train.steps_per_epoch",
        "batch_size": "train.batch_size",
        "num_workers": "train.num_workers",
    },
    address_flag,
)
def _demo(cfg: DemoConfig, args: argparse.Namespace) -> int:
    from barp_ray.pipeline import run_demo
    from barp_ray.ray_connect import connect

    connect(args.address)
    print_outputs(run_demo(cfg))
    return 0


# ---- parser --------------------------------------------------------------------------------------------
def register_optional_commands() -> None:
    """Import the packages that register their own subcommands (serving, tuning, ...)."""
    for module in OPTIONAL_COMMANDS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not (exc.name and module.startswith(exc.name)):
                raise


def build_parser() -> argparse.ArgumentParser:
    """The `barp` parser with every registered subcommand."""
    register_optional_commands()
    parser = argparse.ArgumentParser(prog="barp", description="BaRP preference-conditioned LLM routing on Ray")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, formatter_class=HelpFormatter)
        if cmd.config is not None:
            p.add_argument("--config", type=Path, help="YAML config file; flags override it")
            add_config_flags(p, cmd.config, cmd.flags)
        if cmd.add_args is not None:
            cmd.add_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    cmd = COMMANDS[args.command]
    try:
        if cmd.config is None:
            return cmd.run(args)
        return cmd.run((cmd.loader or load_config)(cmd.config, args), args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"barp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
