"""Is refitting on train + val worth it? Decided on VALIDATION only (the test split is never read).

BaRP selects its epoch on val, so it learns from train only, while the full-information baselines fit on
train + val. The refit lever: after selection, train a fresh policy on train + val for the selected number
of epochs of the same schedule and export that. To judge it without touching test, replay the whole
protocol one level down: hold out a seeded slice of train as large as val ("inner val"), then

- selected: train on the rest, pick the epoch on inner val (today's protocol);
- refit: the same, then a fresh policy on rest + inner val for the selected epochs (`refit_in_process`);

and score both on the real val split (AIQ and mean greedy reward over the w grid). Writes <out>/refit.md
and <out>/runs.json (resumable):

    python benchmarks/refit.py --data runs/demo/data --out runs/refit --pools routerbench open6 flat6 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from barp_ray.data.shards import read_shards
from barp_ray.data.table import RoutingTable
from barp_ray.evaluation.pools import build_pools
from barp_ray.training.bare import refit_in_process, train_in_process
from barp_ray.training.config import TrainConfig
from barp_ray.training.loop import PolicyData, validation_metrics


def inner_split(train: RoutingTable, n_holdout: int, seed: int) -> tuple[RoutingTable, RoutingTable]:
    """(rest, inner val): a seeded random slice of `n_holdout` training prompts held out."""
    order = np.random.default_rng(seed).permutation(len(train))
    return train.take(np.sort(order[n_holdout:])), train.take(np.sort(order[:n_holdout]))


def one_run(pool, seed: int, base: dict) -> dict:
    cfg = TrainConfig(**{**base, "seed": seed})
    rest, inner_val = inner_split(pool.train, len(pool.val), seed)
    val = PolicyData.from_table(pool.val)
    t0 = time.perf_counter()
    selected = train_in_process(cfg, rest, inner_val)
    epochs = int(selected.best["epoch"]) + 1
    refit = refit_in_process(cfg, RoutingTable.concat([rest, inner_val]), epochs, selected.scale)
    row = {"pool": pool.name, "seed": seed, "overrides": base, "selected_epochs": epochs}
    for name, policy in (("selected", selected.policy), ("refit", refit)):
        m = validation_metrics(policy, val, cfg.val_grid_points)
        row[name] = {"val_aiq": m["val_aiq"], "val_reward": m["val_reward"]}
    row["seconds"] = time.perf_counter() - t0
    return row


def table_markdown(runs: list[dict], pools: list[str]) -> str:
    lines = [
        "| pool | seeds | selected: val AIQ / reward | refit: val AIQ / reward | refit - selected (AIQ) | refit wins |",
        "|" + " --- |" * 6,
    ]
    for p in [*pools, "mean"]:
        rs = [r for r in runs if r["pool"] == p or p == "mean"]
        if not rs:
            continue
        sel = [(r["selected"]["val_aiq"], r["selected"]["val_reward"]) for r in rs]
        ref = [(r["refit"]["val_aiq"], r["refit"]["val_reward"]) for r in rs]
        diff = [b[0] - a[0] for a, b in zip(sel, ref, strict=True)]
        lines.append(
            f"| {p} | {len(rs)} | {np.mean([a for a, _ in sel]):.4f} / {np.mean([b for _, b in sel]):.4f} | "
            f"{np.mean([a for a, _ in ref]):.4f} / {np.mean([b for _, b in ref]):.4f} | {np.mean(diff):+.4f} | "
            f"{sum(d > 0 for d in diff)}/{len(diff)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="prepared + embedded RouterBench shards")
    parser.add_argument("--out", type=Path, default=Path("runs/refit"))
    parser.add_argument("--pools", nargs="+", default=["routerbench", "open6", "flat6"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--base", default="{}", help="JSON TrainConfig overrides")
    args = parser.parse_args()
    base = json.loads(args.base)
    pools = build_pools(read_shards(args.data), args.pools)
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / "runs.json"
    runs = json.loads(raw.read_text()) if raw.exists() else []
    for pool in pools:
        for seed in args.seeds:
            if any(r["pool"] == pool.name and r["seed"] == seed and r["overrides"] == base for r in runs):
                continue
            row = one_run(pool, seed, base)
            runs.append(row)
            raw.write_text(json.dumps(runs, indent=1))
            print(
                f"{pool.name:>12} seed {seed}: selected {row['selected']['val_aiq']:.4f}, refit "
                f"{row['refit']['val_aiq']:.4f} ({row['selected_epochs']} epochs, {row['seconds']:.0f}s)",
                flush=True,
            )
    chosen = [r for r in runs if r["seed"] in args.seeds and r["overrides"] == base]
    text = table_markdown(chosen, [p.name for p in pools])
    (args.out / "refit.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
