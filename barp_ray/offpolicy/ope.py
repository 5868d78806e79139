"""`barp ope`: off-policy evaluation of a candidate policy on the router's decision log.

For each preference of the grid, IPS / SNIPS / DR estimates (with bootstrap intervals) of the candidate's
mean score, cost and reward when it routes greedily, as served. Then the question an operator asks: would
the candidate have done better than what served this traffic? At the callers' own logged preferences, the
logging rule's reward is simply the mean logged reward; the candidate's is estimated, and the paired
bootstrap interval of the difference decides: beats (interval above 0), worse (below) or inconclusive.
With `baseline` (another checkpoint) the same paired comparison runs at every grid preference.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from barp_ray.objective import CostScale, reward
from barp_ray.offpolicy.config import OPEConfig, read_source
from barp_ray.offpolicy.estimators import Estimate, bootstrap_interval, estimate_all, importance_weights, statistic
from barp_ray.offpolicy.learner import greedy_probs
from barp_ray.offpolicy.logged import LoggedBandit
from barp_ray.offpolicy.reward_model import FullInformationRewardModel, cross_fitted_predictions
from barp_ray.policy.checkpoint import load_policy

log = logging.getLogger(__name__)
QUANTITIES = ("score", "cost", "reward")


def predicted_outcomes(cfg: OPEConfig, rows: LoggedBandit) -> tuple[np.ndarray, np.ndarray] | None:
    """(q_hat, c_hat) for DR: a log-fitted model cross-fitted over 2 prompt folds (no row predicts itself),
    or the full-information router."""
    if "dr" not in cfg.estimators:
        return None
    if cfg.reward_model == "full_information":
        if not cfg.reward_data:
            raise ValueError("reward_data: set it (an embedded shard folder) for reward_model=full_information")
        return FullInformationRewardModel(cfg.reward_data, rows.models, seed=cfg.seed).predict(rows.embeddings)
    return cross_fitted_predictions(rows, seed=cfg.seed)


def outcomes(rows: LoggedBandit, w: np.ndarray | float, tau: float | CostScale, predicted) -> dict[str, tuple]:
    """Observed y and predicted y_hat (N, K) of score, cost and reward at preference(s) w."""
    w = np.asarray(w, dtype=np.float64)
    q, c = rows.scores.astype(np.float64), rows.costs.astype(np.float64)
    r = reward(q, c, w, tau)
    if predicted is None:
        return {"score": (q, None), "cost": (c, None), "reward": (r, None)}
    q_hat, c_hat = predicted
    r_hat = reward(q_hat, c_hat, w[:, None] if w.ndim else w, tau)
    return {"score": (q, q_hat), "cost": (c, c_hat), "reward": (r, r_hat)}


def run_ope(cfg: OPEConfig) -> dict:
    """Estimate, compare, and write `ope.json` + `ope.md` under `cfg.out_dir`; returns the results."""
    started = time.perf_counter()
    candidate = load_policy(cfg.candidate)
    spec = candidate.spec
    rows = read_source(cfg.source, models=list(spec.models), encoder=spec.encoder)
    floor = spec.cost_floor if cfg.tau is None or (spec.cost_floor or 0) < cfg.tau else None
    scale = CostScale(cfg.tau or spec.tau, floor)  # the candidate's reward scale (its floor under a tau override)
    emb = torch.as_tensor(rows.embeddings)
    predicted = predicted_outcomes(cfg, rows)
    estimators = tuple(cfg.estimators)
    primary = "dr" if predicted is not None else ("snips" if "snips" in estimators else estimators[0])
    policies = {"candidate": candidate}
    if cfg.baseline:
        baseline = load_policy(cfg.baseline)
        if list(baseline.spec.models) != list(spec.models):
            raise ValueError(
                f"baseline: {cfg.baseline} routes over {baseline.spec.models}, the candidate over "
                f"{spec.models}; OPE compares policies over the same models"
            )
        policies["baseline"] = baseline

    def est(y, y_hat, target) -> dict[str, Estimate]:
        return estimate_all(
            y, target, rows.actions, rows.propensities, y_hat, cfg.clip, estimators, cfg.bootstrap, cfg.alpha, cfg.seed
        )

    targets = {(name, w): greedy_probs(policy, emb, w) for name, policy in policies.items() for w in cfg.w_grid}
    at_w = {w: outcomes(rows, w, scale, predicted) for w in cfg.w_grid}
    grid: dict[str, dict] = {}
    for name in policies:
        grid[name] = {
            f"{w:g}": {
                qty: {e: v.to_dict() for e, v in est(y, y_hat, targets[name, w]).items()}
                for qty, (y, y_hat) in at_w[w].items()
            }
            for w in cfg.w_grid
        }

    # at the callers' own preferences: candidate (estimated) vs the logging rule (observed)
    y, y_hat = outcomes(rows, rows.w_cost, scale, predicted)["reward"]
    target = greedy_probs(candidate, emb, rows.w_cost)
    logged = {"reward": float(y.mean()), "score": float(rows.scores.mean()), "cost": float(rows.costs.mean())}
    cand = {e: v.to_dict() for e, v in est(y, y_hat, target).items()}
    comparison = {
        "estimator": primary,
        "logging_reward": logged["reward"],
        "candidate": cand,
        **paired(primary, y, target, y_hat, rows, None, cfg),
    }
    baseline_cmp = {}
    if "baseline" in policies:
        for w in cfg.w_grid:
            y_w, y_hat_w = at_w[w]["reward"]
            baseline_cmp[f"{w:g}"] = paired(
                primary, y_w, targets["candidate", w], y_hat_w, rows, (targets["baseline", w], y_w, y_hat_w), cfg
            )
    results = {
        "config": cfg.model_dump(mode="json"),
        "tau": scale.tau,
        "cost_scale": scale.describe(),
        "rows": len(rows),
        "log_report": rows.report.to_dict(),
        "models": rows.models,
        "logging_policy": logged,
        "grid": grid,
        "vs_logging": comparison,
        "vs_baseline": baseline_cmp,
        "primary_estimator": primary,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ope.json").write_text(json.dumps(results, indent=2))
    (out / "ope.md").write_text(markdown(results))
    return results


def paired(primary: str, y, target, y_hat, rows: LoggedBandit, other, cfg: OPEConfig) -> dict:
    """Paired bootstrap of (candidate - other): other is (target, y, y_hat) of a second policy, or None for
    the logging rule (its value is the plain mean of the logged y)."""
    rho = importance_weights(target, rows.actions, rows.propensities, cfg.clip)
    cand = statistic(primary, y, rho, target, y_hat, rows.actions)
    if other is None:
        base = lambda idx: np.asarray(y)[idx].mean(axis=-1)  # noqa: E731
    else:
        o_target, o_y, o_y_hat = other
        o_rho = importance_weights(o_target, rows.actions, rows.propensities, cfg.clip)
        base = statistic(primary, o_y, o_rho, o_target, o_y_hat, rows.actions)
    n = len(rows)
    diff = float(cand(np.arange(n)) - base(np.arange(n)))
    low, high = bootstrap_interval(lambda idx: cand(idx) - base(idx), n, cfg.bootstrap, cfg.alpha, cfg.seed)
    verdict = "beats" if low > 0 else ("worse" if high < 0 else "inconclusive")
    return {"difference": diff, "low": low, "high": high, "verdict": verdict}


def markdown(r: dict) -> str:
    c = r["config"]
    level = round(100 * (1 - c["alpha"]))
    cmp = r["vs_logging"]
    lines = [
        "# Off-policy evaluation",
        "",
        f"candidate `{c['candidate']}` on the decision log `{c['source']['logs']}`: {r['rows']} usable rows "
        f"({r['log_report']['decisions']} logged; dropped {r['log_report']['dropped'] or 'none'}). "
        f"cost scale {r['cost_scale']}; {c['bootstrap']} bootstrap resamples, {level}% intervals; DR reward model: "
        f"{c['reward_model']}.",
        "",
        "## Against the logging policy, at the callers' own preferences",
        "",
        f"Logged mean reward {cmp['logging_reward']:.4f}; candidate ({cmp['estimator']}) "
        f"{cmp['candidate'][cmp['estimator']]['value']:.4f}. Difference {cmp['difference']:+.4f} "
        f"[{cmp['low']:+.4f}, {cmp['high']:+.4f}]: **{cmp['verdict']}**.",
        "",
    ]
    for name, by_w in r["grid"].items():
        lines += [
            f"## {name}: greedy routing at fixed preferences",
            "",
            "| w_c | quantity | " + " | ".join(f"{e} [{level}% CI]" for e in c["estimators"]) + " |",
            "| --- | --- | " + " | ".join("---" for _ in c["estimators"]) + " |",
        ]
        for w, qty in by_w.items():
            for q in QUANTITIES:
                cells = []
                for e in c["estimators"]:
                    v = qty[q].get(e)
                    cells.append("-" if v is None else f"{v['value']:.4g} [{v['low']:.4g}, {v['high']:.4g}]")
                lines.append(f"| {w} | {q} | " + " | ".join(cells) + " |")
        lines.append("")
    if r["vs_baseline"]:
        lines += [
            "## Candidate vs baseline (paired, reward)",
            "",
            "| w_c | difference | interval | verdict |",
            "| --- | ---: | --- | --- |",
        ]
        for w, d in r["vs_baseline"].items():
            lines.append(f"| {w} | {d['difference']:+.4f} | [{d['low']:+.4f}, {d['high']:+.4f}] | {d['verdict']} |")
    return "\n".join(lines) + "\n"
