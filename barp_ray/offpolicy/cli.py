"""`barp train-offpolicy` and `barp ope`: registered into the `barp` CLI (see barp_ray.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from barp_ray.cli_support import address_flag, command, load_config, print_outputs, simple_fields
from barp_ray.config import JobConfig
from barp_ray.offpolicy.config import LogSource, OffPolicyTrainConfig, OPEConfig

#: --logs, --embeddings-from, ...: the `source:` mapping of both configs.
SOURCE_FLAGS = simple_fields(LogSource, prefix="source.")


def _load_with_source(cls: type[JobConfig], args: argparse.Namespace) -> JobConfig:
    """`load_config`, refusing early (naming the flag) when no decision log is given."""
    base = (yaml.safe_load(args.config.read_text()) or {}) if args.config else {}
    if not (args.__dict__.get("cfg:source.logs") or (base.get("source") or {}).get("logs")):
        raise ValueError(
            "source.logs is required: pass --logs <decision log root (path or URI)> or set source.logs "
            "in the --config YAML"
        )
    return load_config(cls, args)


def _train_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="export the best policy here (default: <storage>/<name>/best_policy)")
    address_flag(p)


@command(
    "train-offpolicy",
    "train a policy from the router's decision logs (IPS/SNIPS/DR REINFORCE on Ray Train)",
    OffPolicyTrainConfig,
    {
        **SOURCE_FLAGS,
        **simple_fields(
            OffPolicyTrainConfig, exclude=("data", "inject_failure_at_epoch"), rename={"exclude_tasks": "exclude_task"}
        ),
    },
    _train_extra,
    _load_with_source,
)
def _train_offpolicy(cfg: OffPolicyTrainConfig, args: argparse.Namespace) -> int:
    from barp_ray.offpolicy.trainer import train_offpolicy
    from barp_ray.ray_connect import connect

    connect(args.address)
    outcome, context = train_offpolicy(cfg, export_dir=args.out)
    print(
        f"\nlogged rows: {context['train_rows']} for training, {context['val_rows']} held out; "
        f"read report: {context['report']}"
    )
    print(
        f"best epoch {outcome.best_metrics.get('epoch')}: val_ope_reward="
        f"{outcome.best_metrics.get('val_ope_reward', float('nan')):.4f} in {outcome.seconds:.0f}s"
    )
    print_outputs({"policy": outcome.policy_dir or outcome.best_checkpoint})
    return 0


@command(
    "ope",
    "off-policy evaluation (IPS, SNIPS, DR + bootstrap CIs) of a checkpoint on decision logs",
    OPEConfig,
    {**SOURCE_FLAGS, **simple_fields(OPEConfig, exclude=("out_dir",)), "out": "out_dir"},
    loader=_load_with_source,
)
def _ope(cfg: OPEConfig, args: argparse.Namespace) -> int:
    from barp_ray.offpolicy.ope import run_ope

    run_ope(cfg)
    print(Path(cfg.out_dir, "ope.md").read_text())
    print_outputs({"json": f"{cfg.out_dir}/ope.json", "report": f"{cfg.out_dir}/ope.md"})
    return 0
