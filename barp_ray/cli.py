"""`barp`: the command line. Each subcommand runs one job from one config (YAML file and/or flags)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from barp_ray.config import JobConfig

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help_text: str):
    """Register a subcommand: decorate `run(args)`; `add_args(parser)` is passed as the decorator arg."""

    def wrap(add_args):
        def register(run):
            COMMANDS[name] = (help_text, add_args, run)
            return run

        return register

    return wrap


def _load(cls: type[JobConfig], args: argparse.Namespace, **overrides) -> JobConfig:
    """The job's config: --config YAML, then flags that were given, validated; printed at start."""
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = cls.from_yaml(args.config, **given) if getattr(args, "config", None) else cls.model_validate(given)
    print(cfg.describe(), flush=True)
    return cfg


def _print_outputs(paths: dict) -> None:
    print("\nOutputs:")
    for name, path in paths.items():
        print(f"  {name:14s} {path}")


# ---- prepare -------------------------------------------------------------------------------------------
def _prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="raw logs: a directory of *_train/*_test files or one file (env BARP_DATA_DIR)")
    p.add_argument("--out", help="output shard directory")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--num-shards", type=int)
    p.add_argument("--prices", help="YAML/JSON per-model token prices, when the data has token counts")
    p.add_argument("--seed", type=int)


@command("prepare", "validate raw routing logs and write train/val/test parquet shards")(_prepare_args)
def _prepare(args: argparse.Namespace) -> int:
    from barp_ray.data.prepare import PrepareConfig, prepare_from_config

    cfg = _load(
        PrepareConfig, args, data_dir=args.data, out_dir=args.out, val_fraction=args.val_fraction,
        num_shards=args.num_shards, prices_file=args.prices, seed=args.seed,
    )
    result = prepare_from_config(cfg)
    print(result.report)
    _print_outputs({"shards": result.out_dir, "manifest": result.manifest_path})
    return 0


# ---- embed ---------------------------------------------------------------------------------------------
def _embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="prepared shard directory (rewritten with embeddings)")
    p.add_argument("--encoder", help="sentence-transformers name or local path (default: packaged MiniLM)")
    p.add_argument("--cache-dir")
    p.add_argument("--num-actors", type=int)
    p.add_argument("--use-gpu", action="store_true", default=None)
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a new local one)")


@command("embed", "embed prompts with the frozen encoder on a Ray Data actor pool (cached)")(_embed_args)
def _embed(args: argparse.Namespace) -> int:
    from barp_ray.embeddings.job import EmbedConfig, run_embed
    from barp_ray.pipeline import ensure_ray

    cfg = _load(
        EmbedConfig, args, data=args.data, encoder=args.encoder, cache_dir=args.cache_dir,
        num_actors=args.num_actors, use_gpu=args.use_gpu,
    )
    ensure_ray(args.address)
    stats = run_embed(cfg)
    print(f"embeddings: {stats}")
    _print_outputs({"shards": cfg.data, "cache": cfg.cache_dir})
    return 0


# ---- train ---------------------------------------------------------------------------------------------
def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="prepared + embedded shard directory")
    p.add_argument("--storage-path", help="Ray Train storage (local path or s3://, gs:// URI)")
    p.add_argument("--name", help="run name; rerunning the same name and storage path resumes")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--use-gpu", action="store_true", default=None)
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--exclude-task", action="append", dest="exclude_tasks", help="leave this task out")
    p.add_argument("--export", help="copy the best policy here (default: <storage>/<name>/best_policy)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a new local one)")


@command("train", "train the BaRP policy with REINFORCE on Ray Train")(_train_args)
def _train(args: argparse.Namespace) -> int:
    from barp_ray.pipeline import ensure_ray
    from barp_ray.training.config import TrainConfig
    from barp_ray.training.trainer import train_policy

    cfg = _load(
        TrainConfig, args, data=args.data, storage_path=args.storage_path, name=args.name,
        num_workers=args.num_workers, use_gpu=args.use_gpu, epochs=args.epochs, seed=args.seed,
        exclude_tasks=args.exclude_tasks,
    )
    ensure_ray(args.address)
    outcome = train_policy(cfg, export_dir=args.export)
    best = outcome.best_metrics
    print(f"best epoch {best.get('epoch')}: val_aiq={best.get('val_aiq'):.4f} val_reward={best.get('val_reward'):.4f}"
          f" tau={outcome.tau:.6f} ({outcome.seconds:.1f}s)")
    _print_outputs({"policy": outcome.policy_dir or outcome.best_checkpoint, "checkpoint": outcome.best_checkpoint})
    return 0


# ---- evaluate ------------------------------------------------------------------------------------------
def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="prepared + embedded shard directory")
    p.add_argument("--policy", help="policy checkpoint folder (from `barp train`)")
    p.add_argument("--out", help="report directory")


@command("evaluate", "evaluate a policy against the baselines on the test split")(_evaluate_args)
def _evaluate(args: argparse.Namespace) -> int:
    from barp_ray.evaluation.job import EvaluateConfig, run_evaluate

    cfg = _load(EvaluateConfig, args, data=args.data, policy=args.policy, out_dir=args.out)
    _print_outputs(run_evaluate(cfg))
    return 0


# ---- demo ----------------------------------------------------------------------------------------------
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="raw logs (default: $BARP_DATA_DIR or ../shared/data/routerbench)")
    p.add_argument("--out", help="output directory (default runs/demo)")
    p.add_argument("--no-loto", action="store_true", help="skip the leave-one-task-out folds")
    p.add_argument("--max-rows-per-task", type=int, help="subsample for a quick smoke run")
    p.add_argument("--epochs", type=int)
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a new local one)")


@command("demo", "the whole pipeline: prepare, embed, train, evaluate (+ LOTO), report")(_demo_args)
def _demo(args: argparse.Namespace) -> int:
    from barp_ray.pipeline import DemoConfig, ensure_ray, run_demo

    cfg = _load(
        DemoConfig, args, data_dir=args.data, out_dir=args.out, max_rows_per_task=args.max_rows_per_task,
        loto=False if args.no_loto else None,
    )
    if args.epochs is not None:
        cfg.train = cfg.train.model_copy(update={"epochs": args.epochs})
    ensure_ray(args.address)
    _print_outputs(run_demo(cfg))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barp", description="BaRP preference-conditioned LLM routing on Ray")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", type=Path, help="YAML config file; flags override it")
        add_args(p)
    return parser


def _register_optional_commands() -> None:
    """Subcommands that live beside their job's package (serving, tuning, ...)."""
    import importlib

    for module in ("barp_ray.serving.cli", "barp_ray.tuning.cli", "barp_ray.offpolicy.cli"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not (exc.name and module.startswith(exc.name)):
                raise


def main(argv: list[str] | None = None) -> int:
    _register_optional_commands()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return COMMANDS[args.command][2](args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"barp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
