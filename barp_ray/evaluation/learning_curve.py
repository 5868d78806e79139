"""Learning curves under bandit feedback: test AIQ vs number of logged interactions, with seed intervals.

One interaction = one training prompt, one preference w, one sampled model, that model's score and cost.
For each budget (in passes over the training prompts) BaRP trains with ``passes = budget`` (its whole
schedule fitted to that budget, selected on validation) and every bandit baseline runs its simulated
protocol for the same number of passes; all are evaluated on the test split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from barp_ray.data.table import RoutingTable
from barp_ray.evaluation.barp_router import BarpRouter
from barp_ray.evaluation.evaluate import evaluate_routers
from barp_ray.evaluation.intervals import mean_interval
from barp_ray.evaluation.routers import make_router
from barp_ray.training.bare import train_in_process
from barp_ray.training.config import TrainConfig

DEFAULT_BUDGETS: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 20.0)
DEFAULT_LEARNERS: tuple[str, ...] = ("barp", "linucb", "lin_ts", "eps_greedy")


def learning_curve(
    train: RoutingTable,
    val: RoutingTable,
    test: RoutingTable,
    cfg: TrainConfig | None = None,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    learners: Sequence[str] = DEFAULT_LEARNERS,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """``{"budgets": [...], "learners": {name: {budget: {"aiq": Interval dict, "per_seed": [...]}}}}``.

    BaRP learns from `train` and selects on `val`; the bandit baselines learn from train + val (as in the
    main evaluation); everything is scored on `test`. The cost scale is BaRP's, from the training costs.
    """
    cfg = cfg or TrainConfig()
    scale = cfg.resolve_cost_scale(train.costs)
    fit_table = RoutingTable.concat([train, val])
    out: dict = {"budgets": [float(b) for b in budgets], "tau": scale.tau, "cost_floor": scale.floor, "learners": {}}
    for name in learners:
        per_budget = {}
        for budget in budgets:
            aiqs = []
            for seed in seeds:
                if name == "barp":
                    outcome = train_in_process(
                        cfg.model_copy(update={"passes": float(budget), "seed": seed}), train, val, scale=scale
                    )
                    router = BarpRouter(outcome.policy)
                    router.fit(fit_table, scale)
                else:
                    router = make_router(name, passes=float(budget), seed=seed)
                    router.fit(fit_table, scale)
                aiqs.append(evaluate_routers({name: router}, test).routers[name].aiq)
            per_budget[f"{budget:g}"] = {"aiq": mean_interval(aiqs).to_dict(), "per_seed": aiqs}
            if progress:
                progress(f"learning curve {name} {budget:g} passes: AIQ {mean_interval(aiqs).fmt()}")
        out["learners"][name] = per_budget
    return out


def plot_learning_curve(
    curve: dict,
    path: str | Path,
    title: str = "Test AIQ vs logged interactions",
    references: dict[str, float] | None = None,
) -> Path:
    """Mean test AIQ with its 95% interval per learner vs passes (log x); `references` as flat lines."""
    matplotlib.use("Agg", force=False)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot(111)
    budgets = curve["budgets"]
    for name, per_budget in curve["learners"].items():
        mean = [per_budget[f"{b:g}"]["aiq"]["mean"] for b in budgets]
        lo = [per_budget[f"{b:g}"]["aiq"]["lo"] for b in budgets]
        hi = [per_budget[f"{b:g}"]["aiq"]["hi"] for b in budgets]
        (line,) = ax.plot(budgets, mean, marker="o", label=name)
        ax.fill_between(budgets, lo, hi, alpha=0.2, color=line.get_color())
    for label, value in (references or {}).items():
        ax.axhline(value, linestyle="--", linewidth=1, color="grey")
        ax.annotate(label, (budgets[0], value), fontsize=7, va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("logged interactions per training prompt (passes; one sampled model each)")
    ax.set_ylabel("test AIQ (mean, 95% interval over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    path.with_suffix(".json").write_text(json.dumps(curve, indent=1))
    return path
