"""Choose BaRP's training defaults on VALIDATION across several pools (the test split is never read).

Each variant is a set of `TrainConfig` overrides; every (variant, pool, seed) is one in-process run
(`train_in_process`), scored by the best epoch's validation AIQ and validation mean reward. Prints and writes
a markdown table (mean over seeds, per pool and averaged over pools) and the raw runs as JSON:

    python benchmarks/barp_defaults.py --data runs/h5/rb --out runs/h5/sweep \
        --pools routerbench open6 flat6 synthetic --seeds 0 1 \
        --variant legacy '{"passes": null, "epochs": 20, "steps_per_epoch": 150, "batch_size": 512}' \
        --variant p50 '{"passes": 50}'

`--token-states left` trains on the encoder's per-token states (cut on that side) instead of the pooled
embeddings, for `pooling` variants (`--variant mean '{}' --variant attention '{"pooling": "attention"}'`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from barp_ray.data.shards import read_shards
from barp_ray.embeddings.token_states import token_state_table
from barp_ray.evaluation.pools import build_pools
from barp_ray.training.bare import train_in_process
from barp_ray.training.config import TrainConfig


def run(
    data: str | None,
    pool_names: list[str],
    seeds: list[int],
    variants: dict[str, dict],
    out: Path,
    base: dict,
    train: bool = True,
    token_states: str | None = None,
) -> str:
    table = read_shards(data) if data else None
    if token_states and table is not None and train:  # per-token inputs, for `pooling` variants
        table = token_state_table(table, token_states, out / "cache")
    pools = build_pools(table, pool_names)
    out.mkdir(parents=True, exist_ok=True)
    raw_path = out / "runs.json"
    runs = json.loads(raw_path.read_text()) if raw_path.exists() else []
    done = {(r["variant"], r["pool"], r["seed"], json.dumps(r["overrides"], sort_keys=True)) for r in runs}
    for name, overrides in variants.items():
        for pool in pools:
            for seed in seeds:
                key = (name, pool.name, seed, json.dumps({**base, **overrides}, sort_keys=True))
                if key in done or not train:
                    continue
                cfg = TrainConfig(**{**base, **overrides, "seed": seed})
                t0 = time.perf_counter()
                outcome = train_in_process(cfg, pool.train, pool.val)  # test split: never touched
                best = outcome.best
                runs.append(
                    {
                        "variant": name,
                        "pool": pool.name,
                        "seed": seed,
                        "overrides": {**base, **overrides},
                        "val_aiq": best["val_aiq"],
                        "val_reward": best["val_reward"],
                        "best_epoch": best["epoch"],
                        "epochs_run": len(outcome.history),
                        "best_passes": best["passes"],
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(
                    f"{name:>14} {pool.name:>22} seed {seed}: val AIQ {best['val_aiq']:.4f} reward "
                    f"{best['val_reward']:.4f} (best epoch {best['epoch']}/{len(outcome.history)}, "
                    f"{best['passes']:.1f} passes, {time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
                raw_path.write_text(json.dumps(runs, indent=1))
    text = table_markdown([r for r in runs if r["seed"] in seeds], [p.name for p in pools], list(variants))
    (out / "sweep.md").write_text(text + "\n")
    return text


def table_markdown(runs: list[dict], pools: list[str], variants: list[str]) -> str:
    """Mean validation AIQ (and reward) over seeds per variant and pool; last column: mean over pools."""
    header = "| variant | " + " | ".join(pools) + " | mean val AIQ | mean val reward |"
    lines = [header, "|" + " --- |" * (len(pools) + 3)]
    for v in variants:
        cells, aiqs, rewards = [], [], []
        for p in pools:
            rs = [r for r in runs if r["variant"] == v and r["pool"] == p]
            if not rs:
                cells.append("—")
                continue
            a, rw = float(np.mean([r["val_aiq"] for r in rs])), float(np.mean([r["val_reward"] for r in rs]))
            aiqs.append(a)
            rewards.append(rw)
            cells.append(f"{a:.4f} / {rw:.4f} (ep {np.mean([r['best_epoch'] for r in rs]):.0f})")
        mean_a = f"{np.mean(aiqs):.4f}" if aiqs else "—"
        mean_r = f"{np.mean(rewards):.4f}" if rewards else "—"
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {mean_a} | {mean_r} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="prepared + embedded RouterBench shards")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--pools", nargs="+", default=["routerbench", "open6", "flat6", "synthetic"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--base", default="{}", help="JSON overrides shared by every variant")
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True)
    parser.add_argument("--no-train", action="store_true", help="only tabulate the runs already in --out")
    parser.add_argument(
        "--token-states",
        choices=["right", "left"],
        default=None,
        help="train on the encoder's token states cut on this side instead of the pooled embeddings (for "
        "`pooling` variants; RouterBench pools only)",
    )
    args = parser.parse_args()
    variants = {name: json.loads(js) for name, js in args.variant}
    base = json.loads(args.base)
    print(run(args.data, args.pools, args.seeds, variants, args.out, base, not args.no_train, args.token_states))


if __name__ == "__main__":
    main()
