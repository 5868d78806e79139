"""`barp train-offpolicy` and `barp ope`: registered into the `barp` CLI (see barp_ray.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from barp_ray.cli import _load, _print_outputs, command
from barp_ray.config import JobConfig


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--logs", help="decision log root written by the Serve router (path or URI)")
    p.add_argument("--embeddings-from", help="embedded shard folder to look logged prompts up in (by hash)")
    p.add_argument("--missing-feedback", choices=["skip", "default"])
    p.add_argument("--default-score", type=float)
    p.add_argument("--prompt-split", help="only logged prompts of this split of --embeddings-from")


def _load_with_source(cls: type[JobConfig], args: argparse.Namespace, **overrides) -> JobConfig:
    """Like `_load`, with the --logs ... flags merged into the YAML's `source:` mapping."""
    base = (yaml.safe_load(args.config.read_text()) or {}) if args.config else {}
    flags = {"logs": args.logs, "embeddings_from": args.embeddings_from, "missing_feedback": args.missing_feedback,
             "default_score": args.default_score, "prompt_split": args.prompt_split}
    source = {**(base.get("source") or {}), **{k: v for k, v in flags.items() if v is not None}}
    if not source.get("logs"):
        raise ValueError("source.logs is required: pass --logs <decision log root (path or URI)> or set source.logs "
                         "in the --config YAML")
    return _load(cls, args, source=source, **overrides)


def _train_args(p: argparse.ArgumentParser) -> None:
    _source_args(p)
    p.add_argument("--init-policy", help="warm start from this checkpoint (and take its models and encoder)")
    p.add_argument("--weighting", choices=["clipped_ips", "snips"])
    p.add_argument("--clip", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--storage-path")
    p.add_argument("--name")
    p.add_argument("--out", help="export the best policy here (default: <storage>/<name>/best_policy)")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--use-gpu", action="store_true", default=None)
    p.add_argument("--seed", type=int)
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a new local one)")


@command("train-offpolicy", "train a policy from the router's decision logs (IPS/SNIPS REINFORCE on Ray Train)")(
    _train_args)
def _train_offpolicy(args: argparse.Namespace) -> int:
    from barp_ray.offpolicy.config import OffPolicyTrainConfig
    from barp_ray.offpolicy.trainer import train_offpolicy
    from barp_ray.pipeline import ensure_ray

    cfg = _load_with_source(
        OffPolicyTrainConfig, args, init_policy=args.init_policy, weighting=args.weighting, clip=args.clip,
        epochs=args.epochs, storage_path=args.storage_path, name=args.name, num_workers=args.num_workers,
        use_gpu=args.use_gpu, seed=args.seed,
    )
    ensure_ray(args.address)
    outcome, context = train_offpolicy(cfg, export_dir=args.out)
    print(f"\nlogged rows: {context['train_rows']} for training, {context['val_rows']} held out; "
          f"read report: {context['report']}")
    print(f"best epoch {outcome.best_metrics.get('epoch')}: val_ope_reward="
          f"{outcome.best_metrics.get('val_ope_reward', float('nan')):.4f} in {outcome.seconds:.0f}s")
    _print_outputs({"policy": outcome.policy_dir or outcome.best_checkpoint})
    return 0


def _ope_args(p: argparse.ArgumentParser) -> None:
    _source_args(p)
    p.add_argument("--candidate", help="policy checkpoint to evaluate")
    p.add_argument("--baseline", help="another checkpoint to compare with, at each grid preference")
    p.add_argument("--w-grid", type=float, nargs="+")
    p.add_argument("--reward-model", choices=["logs", "full_information"])
    p.add_argument("--reward-data", help="shard folder for --reward-model full_information")
    p.add_argument("--bootstrap", type=int)
    p.add_argument("--out", help="output folder: ope.json, ope.md")


@command("ope", "off-policy evaluation (IPS, SNIPS, DR + bootstrap CIs) of a checkpoint on decision logs")(_ope_args)
def _ope(args: argparse.Namespace) -> int:
    from barp_ray.offpolicy.config import OPEConfig
    from barp_ray.offpolicy.ope import run_ope

    cfg = _load_with_source(
        OPEConfig, args, candidate=args.candidate, baseline=args.baseline, w_grid=args.w_grid,
        reward_model=args.reward_model, reward_data=args.reward_data, bootstrap=args.bootstrap, out_dir=args.out,
    )
    run_ope(cfg)
    print(Path(cfg.out_dir, "ope.md").read_text())
    _print_outputs({"json": f"{cfg.out_dir}/ope.json", "report": f"{cfg.out_dir}/ope.md"})
    return 0
