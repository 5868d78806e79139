"""Cost-quality curves and router metrics: AIQ, cost to reach a target score, Spearman(w_c, cost).

AIQ (Average Improvement in Quality; RouterBench, Hu et al. 2024, arXiv 2403.12031), as implemented here
-------------------------------------------------------------------------------------------------------
Given a router's operating points ``(cost_i, score_i)`` (mean USD cost per query, mean score; one per w_c)
and the cost window ``[c_min, c_max]`` (the cheapest and the dearest single model's mean cost):

1. Clip: a point cheaper than ``c_min`` is moved to ``c_min`` (credited as if it cost c_min, which is
   conservative). A point dearer than ``c_max`` is kept while building the envelope but only the part of
   the envelope inside the window counts (step 4): it contributes through the hull segment that joins it to
   a cheaper point and crosses ``c_max``, never beyond. (Dropping it outright would make AIQ jump when a
   point crosses ``c_max``; a mixture of the two routers realises every cost on that segment.)
2. Envelope: the upper concave envelope (upper convex hull) of the points, i.e. the best quality reachable
   by randomly mixing operating points; linear in cost, as in RouterBench.
3. Non-decreasing: the envelope is cut at its best-quality vertex and continues flat at that quality up to
   ``c_max`` (spending more never has to hurt). Left of the router's cheapest point the router has no
   operating point, so the curve is 0 there.
4. ``AIQ = integral_{c_min}^{c_max} f(c) dc / (c_max - c_min)``.

So a single model with mean cost ``c_i`` and score ``s_i`` gets ``s_i * (c_max - c_i) / (c_max - c_min)``,
and AIQ lies in [0, max score]. Degenerate window (``c_max <= c_min``): AIQ is the best score among points
costing at most ``c_max`` (0 if none). RouterBench's own script integrates the hull only between the router's
own cheapest and dearest points; the fixed window here makes routers comparable and charges a router for
the cost range it cannot reach.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from barp_ray.data.table import RoutingTable

DEFAULT_W_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
SCORE_TOL = 1e-9  # float slack when comparing a mean score against a target


@dataclass
class CurvePoint:
    """A router's operating point at one cost weight w_c: mean score / cost overall and per task."""

    w_cost: float
    score: float
    cost: float
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> {"score", "cost", "n"}
    choices: dict[str, int] = field(default_factory=dict)  # model -> rows routed to it

    def to_dict(self) -> dict:
        return {"score": self.score, "cost": self.cost, "per_task": self.per_task, "choices": self.choices}

    @classmethod
    def from_dict(cls, w_cost: float, d: dict) -> CurvePoint:
        return cls(
            float(w_cost),
            float(d["score"]),
            float(d["cost"]),
            dict(d.get("per_task", {})),
            dict(d.get("choices", {})),
        )


def w_key(w: float) -> str:
    """JSON key of a grid value: one decimal (``"0.3"``), more only when one decimal would lose it."""
    one = f"{w:.1f}"
    return one if abs(float(one) - w) < 1e-9 else f"{w:g}"


def curve_point(table: RoutingTable, choice: np.ndarray, w_cost: float) -> CurvePoint:
    """Mean score and cost of the chosen models (one per row), overall and per task, and the histogram."""
    choice = np.asarray(choice, dtype=np.int64)
    if choice.shape != (len(table),):
        raise ValueError(f"expected {len(table)} choices, got shape {choice.shape}")
    if len(table) and (choice.min() < 0 or choice.max() >= table.num_models):
        raise ValueError("choice index out of range")
    rows = np.arange(len(table))
    s = table.scores[rows, choice].astype(np.float64)
    c = table.costs[rows, choice].astype(np.float64)
    per_task = {}
    for task in table.task_names:
        m = table.tasks == task
        per_task[task] = {"score": float(s[m].mean()), "cost": float(c[m].mean()), "n": int(m.sum())}
    counts = np.bincount(choice, minlength=table.num_models)
    return CurvePoint(
        w_cost=float(w_cost),
        score=float(s.mean()) if len(s) else float("nan"),
        cost=float(c.mean()) if len(c) else float("nan"),
        per_task=per_task,
        choices={m: int(n) for m, n in zip(table.models, counts, strict=True)},
    )


def router_curve(router, table: RoutingTable, w_grid: Sequence[float] = DEFAULT_W_GRID) -> list[CurvePoint]:
    """Route `table` at every w_c of the grid; a router with ``preference_aware=False`` is routed once."""
    if not getattr(router, "preference_aware", True):
        base = curve_point(table, router.route_table(table, float(w_grid[0])), float(w_grid[0]))
        return [CurvePoint(float(w), base.score, base.cost, base.per_task, base.choices) for w in w_grid]
    return [curve_point(table, router.route_table(table, float(w)), float(w)) for w in w_grid]


def _as_pairs(points: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """(costs, scores) from CurvePoints or (cost, score) pairs."""
    cs, ss = [], []
    for p in points:
        if isinstance(p, CurvePoint):
            cs.append(p.cost)
            ss.append(p.score)
        else:
            c, s = p
            cs.append(c)
            ss.append(s)
    return np.asarray(cs, dtype=np.float64), np.asarray(ss, dtype=np.float64)


def non_decreasing_envelope(
    costs: Sequence[float], scores: Sequence[float], c_min: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (x, y) of the non-decreasing upper concave envelope (steps 1-3 of the module docstring).

    Costs below `c_min` (if given) are first moved to `c_min`. The curve is flat at ``y[-1]`` right of
    ``x[-1]`` and undefined (0) left of ``x[0]``. Empty input gives empty arrays.
    """
    x = np.asarray(costs, dtype=np.float64)
    y = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if c_min is not None:
        x = np.maximum(x, c_min)
    if len(x) == 0:
        return x, y
    order = np.lexsort((-y, x))  # by cost, then best score first
    x, y = x[order], y[order]
    keep = np.r_[True, x[1:] != x[:-1]]  # one point per cost: the best
    x, y = x[keep], y[keep]
    hull: list[int] = []  # Andrew's monotone chain, upper part
    for i in range(len(x)):
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            cross = (x[a] - x[o]) * (y[i] - y[o]) - (y[a] - y[o]) * (x[i] - x[o])
            if cross >= 0:  # a is on or below the chord o -> i
                hull.pop()
            else:
                break
        hull.append(i)
    hx, hy = x[hull], y[hull]
    peak = int(np.argmax(hy))  # first best-quality vertex; the concave hull rises up to it
    return hx[: peak + 1], hy[: peak + 1]


def aiq(costs: Sequence[float], scores: Sequence[float], c_min: float, c_max: float) -> float:
    """RouterBench AIQ of a router's (cost, score) points over [c_min, c_max]; see the module docstring."""
    hx, hy = non_decreasing_envelope(costs, scores, c_min)
    if len(hx) == 0:
        return 0.0
    if c_max <= c_min:
        inside = hy[hx <= c_max]
        return float(inside.max()) if len(inside) else 0.0
    lo = hx[0]  # >= c_min after clipping
    if lo >= c_max:
        return 0.0
    grid = np.concatenate([[lo], hx[(hx > lo) & (hx < c_max)], [c_max]])
    vals = np.interp(grid, hx, hy)  # flat at hy[-1] right of the last vertex
    area = float(np.sum(np.diff(grid) * (vals[1:] + vals[:-1]) / 2.0))
    return area / (c_max - c_min)


def cost_to_reach(points: Iterable, target_score: float) -> float | None:
    """Lowest mean cost among the operating points whose score >= `target_score` (None if none does).

    `points`: CurvePoints or (cost, score) pairs. A slack of 1e-9 absorbs float noise in the comparison.
    """
    c, s = _as_pairs(points)
    ok = np.isfinite(c) & np.isfinite(s) & (s >= target_score - SCORE_TOL)
    return float(c[ok].min()) if ok.any() else None


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation; None when undefined (fewer than 2 points, or x or y constant)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rho, _ = stats.spearmanr(x, y)
    return None if not np.isfinite(rho) else float(rho)


def spearman_cost_vs_wc(points: Sequence[CurvePoint]) -> float | None:
    """Spearman correlation of w_c with the mean cost of the router's choices (want: strongly negative)."""
    return spearman([p.w_cost for p in points], [p.cost for p in points])
