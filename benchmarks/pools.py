"""One table for every model pool: BaRP vs full-information routers vs bandit baselines vs single models.

For each pool (`barp_ray.evaluation.pools`) and each seed: BaRP trains in process with the default
`TrainConfig` (bandit feedback on train, best epoch on val), the learned baselines fit on train + val with the
same seed, every router is evaluated on the pool's test split. The table shows test AIQ as mean ± 95%
interval half-width over the seeds; `pools.json` holds every seed's metrics. Nothing here is tuned: the
defaults were chosen on validation by `benchmarks/barp_defaults.py`.

    python benchmarks/pools.py --data runs/h5/rb --out runs/pools --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from barp_ray.data.shards import read_shards
from barp_ray.evaluation.barp_router import BarpRouter
from barp_ray.evaluation.evaluate import build_baselines, evaluate_routers
from barp_ray.evaluation.intervals import aggregate_results, mean_interval
from barp_ray.evaluation.metrics import aiq
from barp_ray.evaluation.pools import POOL_NAMES, Pool, build_pools
from barp_ray.evaluation.routers import utility_argmax
from barp_ray.objective import CostScale
from barp_ray.policy.model import PolicyEnsemble
from barp_ray.training.bare import train_in_process
from barp_ray.training.config import TrainConfig
from barp_ray.training.loop import PolicyData, validation_metrics

LEARNED = ("offline_mlp", "knn", "linucb", "lin_ts", "eps_greedy")
COLUMNS = ("barp", "offline_mlp", "knn", "linucb", "lin_ts", "eps_greedy")


def run_pool(pool: Pool, seed: int, cfg: TrainConfig, policies: list | None = None) -> dict:
    """metrics.json of every router on the pool's test split for one seed (+ BaRP's validation record).

    The trained BaRP policy is appended to `policies` (for the seed ensemble)."""
    tau = cfg.resolve_cost_scale(pool.train.costs)  # BaRP's reward cost scale, shared by every router
    fit = pool.fit_table()
    t0 = time.perf_counter()
    outcome = train_in_process(cfg.model_copy(update={"seed": seed}), pool.train, pool.val, scale=tau)
    if policies is not None:
        policies.append(outcome.policy)
    barp = BarpRouter(outcome.policy)
    barp.fit(fit, tau)
    barp_s = time.perf_counter() - t0
    routers = {"barp": barp, **build_baselines(fit, tau, seed=seed, include=("single", "oracle", *LEARNED))}
    result = evaluate_routers(
        routers, pool.test, extra={"pool": pool.name, "seed": seed, "tau": tau.tau, "cost_floor": tau.floor}
    ).to_json_dict()
    result["extra"]["barp_best"] = {k: outcome.best[k] for k in ("epoch", "passes", "val_aiq", "val_reward")}
    result["extra"]["barp_epochs_run"] = len(outcome.history)
    result["extra"]["barp_seconds"] = barp_s
    if "expected_scores" in pool.test.extra:
        result["extra"]["bayes_optimal_aiq"] = bayes_optimal_aiq(pool, tau)
    return result


def ensemble_record(pool: Pool, policies: list, tau: CostScale) -> dict:
    """Mean-logit ensemble of the seeds' policies: validation AIQ (ensemble vs mean member) and test AIQ."""
    ens = PolicyEnsemble(policies).eval()
    val = PolicyData.from_table(pool.val)
    members = [validation_metrics(p, val)["val_aiq"] for p in policies]
    router = BarpRouter(ens)
    router.fit(pool.fit_table(), tau)
    return {
        "k": len(policies),
        "val_aiq_members_mean": float(np.mean(members)),
        "val_aiq_ensemble": validation_metrics(ens, val)["val_aiq"],
        "test_aiq": evaluate_routers({"ens": router}, pool.test).routers["ens"].aiq,
    }


def bayes_optimal_aiq(pool: Pool, tau: CostScale) -> float:
    """Test AIQ of the known optimal policy of a synthetic pool (expected scores and costs, never outcomes)."""
    test = pool.test
    mu, c_exp = test.extra["expected_scores"], test.costs.mean(axis=0)
    rows = np.arange(len(test))
    pts = []
    for w in np.round(np.linspace(0, 1, 11), 1):
        choice = utility_argmax(mu, np.broadcast_to(c_exp, mu.shape), float(w), tau)
        pts.append((float(test.costs[rows, choice].mean()), float(test.scores[rows, choice].mean())))
    c = test.costs.mean(axis=0)
    return aiq([p[0] for p in pts], [p[1] for p in pts], float(c.min()), float(c.max()))


def summarise(pool_runs: dict[str, list[dict]]) -> tuple[str, dict]:
    """Markdown table (mean ± 95% half-width of test AIQ over seeds) and the JSON summary."""
    header = [
        "pool",
        "models",
        "test rows",
        "seeds",
        "BaRP",
        "offline MLP (full info)",
        "kNN (full info)",
        "LinUCB",
        "linear TS",
        "ε-greedy NN",
        "best single model",
        "oracle",
        "BaRP best epoch (passes)",
        "BaRP ≥ MLP / singles / bandits",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    summary: dict = {}
    for name, runs in pool_runs.items():
        agg = aggregate_results(runs)
        singles = {m: agg[m]["aiq"]["mean"] for m in agg if m.startswith("single:")}
        best_single = max(singles, key=singles.get)
        cells = [name, str(len(runs[0]["models"])), str(runs[0]["n_rows"]), str(len(runs))]
        for col in COLUMNS:
            iv = mean_interval(agg[col]["aiq_per_seed"])
            cells.append(f"**{iv.fmt()}**" if col == "barp" else iv.fmt())
        cells.append(f"{singles[best_single]:.4f} ({best_single.split('/')[-1]})")
        oracle = f"{agg['oracle']['aiq']['mean']:.4f}"
        if "bayes_optimal_aiq" in runs[0]["extra"]:
            oracle += f" (Bayes-optimal {runs[0]['extra']['bayes_optimal_aiq']:.4f})"
        cells.append(oracle)
        epochs = [r["extra"]["barp_best"]["epoch"] for r in runs]
        passes = [r["extra"]["barp_best"]["passes"] for r in runs]
        cells.append(f"{np.mean(epochs):.1f} ({np.mean(passes):.0f})")
        b = agg["barp"]["aiq"]["mean"]
        bandit_best = max(agg[n]["aiq"]["mean"] for n in ("linucb", "lin_ts", "eps_greedy"))
        checks = [b >= agg["offline_mlp"]["aiq"]["mean"], b > singles[best_single], b > bandit_best]
        cells.append(" / ".join("yes" if c else "**no**" for c in checks))
        lines.append("| " + " | ".join(cells) + " |")
        summary[name] = {
            "routers": agg,
            "best_single": best_single,
            "targets": dict(
                zip(("barp_ge_offline_mlp", "barp_gt_best_single", "barp_gt_bandits"), checks, strict=True)
            ),
        }
    return "\n".join(lines), summary


def ensembles_markdown(ensembles: dict[str, dict]) -> str:
    """Seed ensembles (mean logits): chosen only where validation prefers them."""
    lines = ["| pool | K | val AIQ, members (mean) | val AIQ, ensemble | test AIQ, ensemble |", "|" + " --- |" * 5]
    for name, e in ensembles.items():
        lines.append(
            f"| {name} | {e['k']} | {e['val_aiq_members_mean']:.4f} | {e['val_aiq_ensemble']:.4f} | "
            f"{e['test_aiq']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="runs/demo/data", help="prepared + embedded RouterBench shards")
    parser.add_argument("--out", type=Path, default=Path("runs/pools"))
    parser.add_argument("--pools", nargs="+", default=list(POOL_NAMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--config", default=None, help="TrainConfig YAML (default: the package defaults)")
    parser.add_argument("--no-train", action="store_true", help="only summarise the runs already in --out")
    parser.add_argument(
        "--merge",
        nargs="*",
        type=Path,
        default=[],
        help="also take the runs (and seed ensembles) found in these earlier --out folders",
    )
    args = parser.parse_args()
    cfg = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    table = read_shards(args.data) if any(p != "synthetic" for p in args.pools) else None
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "pool_runs.json"
    pool_runs: dict[str, list[dict]] = json.loads(cache.read_text()) if cache.exists() else {}
    ens_path = args.out / "ensembles.json"
    ensembles: dict[str, dict] = json.loads(ens_path.read_text()) if ens_path.exists() else {}
    for other in args.merge:  # e.g. one process per pool, run side by side
        found = json.loads((other / "pool_runs.json").read_text()) if (other / "pool_runs.json").exists() else {}
        for name, runs in found.items():
            have = {r["extra"]["seed"] for r in pool_runs.get(name, [])}
            pool_runs[name] = sorted(
                pool_runs.get(name, []) + [r for r in runs if r["extra"]["seed"] not in have],
                key=lambda m: m["extra"]["seed"],
            )
        if (other / "ensembles.json").exists():
            ensembles.update(json.loads((other / "ensembles.json").read_text()))
    for pool in build_pools(table, args.pools):
        print(pool.describe(), flush=True)
        runs = [r for r in pool_runs.get(pool.name, []) if r["extra"]["seed"] in args.seeds]
        policies: list = []
        for seed in args.seeds:
            if args.no_train or any(r["extra"]["seed"] == seed for r in runs):
                continue
            t0 = time.perf_counter()
            runs.append(run_pool(pool, seed, cfg, policies))
            r = runs[-1]["routers"]
            print(
                f"  seed {seed}: BaRP {r['barp']['aiq']:.4f}  MLP {r['offline_mlp']['aiq']:.4f}  kNN "
                f"{r['knn']['aiq']:.4f}  LinUCB {r['linucb']['aiq']:.4f}  TS {r['lin_ts']['aiq']:.4f}  "
                f"eps {r['eps_greedy']['aiq']:.4f}  ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
            pool_runs[pool.name] = sorted(runs, key=lambda m: m["extra"]["seed"])
            cache.write_text(json.dumps(pool_runs))
        if len(policies) == len(args.seeds) > 1:  # all seeds trained in this process: the seed ensemble
            ens = ensemble_record(
                pool, policies, CostScale(runs[0]["extra"]["tau"], runs[0]["extra"].get("cost_floor"))
            )
            ensembles[pool.name] = ens
            ens_path.write_text(json.dumps(ensembles, indent=1))
            print(
                f"  ensemble of {ens['k']} seeds: val AIQ {ens['val_aiq_ensemble']:.4f} (members "
                f"{ens['val_aiq_members_mean']:.4f}), test AIQ {ens['test_aiq']:.4f}",
                flush=True,
            )
    wanted = {q.name for q in build_pools(table, args.pools)}
    pool_runs = {
        p: [r for r in runs if r["extra"]["seed"] in args.seeds]
        for p, runs in pool_runs.items()
        if p in wanted and runs
    }
    text, summary = summarise(pool_runs)
    done = {p: sorted(r["extra"]["seed"] for r in runs) for p, runs in pool_runs.items()}
    note = (
        f"Test AIQ, mean ± 95% t-interval half-width over the seeds run per pool ({done}; "
        f"requested {args.seeds}); BaRP config: "
        f"{json.dumps(cfg.model_dump(mode='json', include=TRAINING_FIELDS))}."
    )
    if ensembles:
        note += "\n\n" + ensembles_markdown(ensembles)
    (args.out / "pools.md").write_text(text + "\n\n" + note + "\n")
    (args.out / "pools.json").write_text(json.dumps(summary, indent=1))
    print(text + "\n\n" + note)
    print(f"\nwrote {args.out / 'pools.md'} and {args.out / 'pools.json'}")


TRAINING_FIELDS = {
    "passes",
    "epochs",
    "patience",
    "select_metric",
    "batch_size",
    "lr",
    "weight_decay",
    "dropout",
    "hidden_dim",
    "w_samples",
    "beta_start",
    "beta_end",
    "ema_epochs",
    "critic",
}


if __name__ == "__main__":
    main()
