"""Evaluate fitted routers on a test table over a w-grid: curves, AIQ, cost to reach the largest model."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from barp_ray.data.table import RoutingTable
from barp_ray.evaluation import (
    bandits,  # noqa: F401 (registers linucb, lin_ts, eps_greedy)
    full_info_routers,  # noqa: F401 (registers offline_mlp, knn)
)
from barp_ray.evaluation.metrics import (
    DEFAULT_W_GRID,
    CurvePoint,
    aiq,
    cost_to_reach,
    router_curve,
    spearman_cost_vs_wc,
    w_key,
)
from barp_ray.evaluation.routers import ROUTERS, Router, make_router
from barp_ray.objective import (
    LARGEST_MODEL,  # noqa: F401 (re-exported by barp_ray.evaluation)
    CostScale,
)
from barp_ray.objective import largest_model as _largest_of


# ---- single-model reference points ---------------------------------------------------------------------
def single_model_points(test: RoutingTable) -> dict[str, tuple[float, float]]:
    """model -> (mean score, mean cost) of always routing to it."""
    s = test.scores.astype(np.float64).mean(axis=0)
    c = test.costs.astype(np.float64).mean(axis=0)
    return {m: (float(s[i]), float(c[i])) for i, m in enumerate(test.models)}


def cost_range(test: RoutingTable) -> tuple[float, float]:
    """(c_min, c_max): the cheapest and the dearest single model's mean cost per query on `test`."""
    c = test.costs.astype(np.float64).mean(axis=0)
    return float(c.min()), float(c.max())


def largest_model(test: RoutingTable) -> str:
    """`LARGEST_MODEL` if present, else the model with the highest mean cost on `test` (`barp_ray.objective`)."""
    return _largest_of(test.models, test.costs)


def cheapest_model(test: RoutingTable) -> str:
    """The model with the lowest mean cost on `test`."""
    return test.models[int(np.argmin(test.costs.mean(axis=0)))]


# ---- results -------------------------------------------------------------------------------------------
@dataclass
class RouterResult:
    """One router's curve over the w-grid and its summary metrics."""

    name: str
    kind: str  # registry name ("single", "oracle", "barp", ...) or the class name
    preference_aware: bool
    points: list[CurvePoint]
    aiq: float
    cost_to_reach_largest: float | None
    spearman_cost_vs_wc: float | None

    def point_at(self, w_cost: float) -> CurvePoint:
        """The grid point nearest to `w_cost`."""
        return min(self.points, key=lambda p: abs(p.w_cost - w_cost))

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "preference_aware": self.preference_aware,
            "aiq": self.aiq,
            "cost_to_reach_largest": self.cost_to_reach_largest,
            "spearman_cost_vs_wc": self.spearman_cost_vs_wc,
            "points": {w_key(p.w_cost): p.to_dict() for p in self.points},
        }

    @classmethod
    def from_dict(cls, name: str, d: dict, w_grid: Sequence[float]) -> RouterResult:
        by_key = {w_key(w): w for w in w_grid}
        points = [CurvePoint.from_dict(by_key.get(k, float(k)), v) for k, v in d["points"].items()]
        return cls(
            name=name,
            kind=d.get("kind", ""),
            preference_aware=bool(d.get("preference_aware", True)),
            points=sorted(points, key=lambda p: p.w_cost),
            aiq=float(d["aiq"]),
            cost_to_reach_largest=d.get("cost_to_reach_largest"),
            spearman_cost_vs_wc=d.get("spearman_cost_vs_wc"),
        )


@dataclass
class EvaluationResult:
    """Everything `metrics.json` holds: per router curves and metrics, plus the single-model references."""

    w_grid: list[float]
    models: list[str]
    tasks: list[str]
    n_rows: int
    largest_model: str
    cheapest_model: str
    largest_score: float  # mean test score of the largest model: the cost-to-reach target
    cost_range: tuple[float, float]  # (c_min, c_max) of the AIQ window
    single_models: dict[str, dict[str, float]]  # model -> {"score", "cost", "aiq"}
    routers: dict[str, RouterResult] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # free-form (e.g. tau, seeds, held-out task)

    def to_json_dict(self) -> dict:
        """The `metrics.json` layout (JSON-safe: no NaN; undefined metrics are null)."""
        return {
            "w_grid": [float(w) for w in self.w_grid],
            "largest_model": self.largest_model,
            "cheapest_model": self.cheapest_model,
            "largest_model_score": self.largest_score,
            "cost_range": [self.cost_range[0], self.cost_range[1]],
            "models": list(self.models),
            "tasks": list(self.tasks),
            "n_rows": self.n_rows,
            "single_models": self.single_models,
            "routers": {name: r.to_dict() for name, r in self.routers.items()},
            "extra": self.extra,
        }

    @classmethod
    def from_json_dict(cls, d: dict) -> EvaluationResult:
        """Inverse of `to_json_dict` (e.g. to rebuild a report or a LOTO summary from saved metrics)."""
        w_grid = [float(w) for w in d["w_grid"]]
        return cls(
            w_grid=w_grid,
            models=list(d.get("models", [])),
            tasks=list(d.get("tasks", [])),
            n_rows=int(d.get("n_rows", 0)),
            largest_model=d["largest_model"],
            cheapest_model=d["cheapest_model"],
            largest_score=float(d.get("largest_model_score", float("nan"))),
            cost_range=tuple(d.get("cost_range", (float("nan"), float("nan")))),
            single_models=dict(d.get("single_models", {})),
            routers={n: RouterResult.from_dict(n, r, w_grid) for n, r in d["routers"].items()},
            extra=dict(d.get("extra", {})),
        )


def evaluate_routers(
    routers: dict[str, Router],
    test: RoutingTable,
    w_grid: Sequence[float] = DEFAULT_W_GRID,
    extra: dict | None = None,
) -> EvaluationResult:
    """Route `test` with every (already fitted) router at every w_c of `w_grid` and compute the metrics.

    Per router: the curve (score, cost, per-task score/cost, chosen-model histogram per w), AIQ over the
    single models' cost window, the lowest cost reaching the largest model's mean score, and the Spearman
    correlation of w_c with cost. Routers with ``preference_aware=False`` are routed once.
    """
    if len(test) == 0:
        raise ValueError("empty test table")
    w_grid = [float(w) for w in w_grid]
    if not w_grid or any(not 0.0 <= w <= 1.0 for w in w_grid):
        raise ValueError(f"w_grid must be non-empty values in [0, 1], got {w_grid}")
    c_min, c_max = cost_range(test)
    big = largest_model(test)
    singles = single_model_points(test)
    target = singles[big][0]
    result = EvaluationResult(
        w_grid=w_grid,
        models=list(test.models),
        tasks=test.task_names,
        n_rows=len(test),
        largest_model=big,
        cheapest_model=cheapest_model(test),
        largest_score=target,
        cost_range=(c_min, c_max),
        single_models={m: {"score": s, "cost": c, "aiq": aiq([c], [s], c_min, c_max)} for m, (s, c) in singles.items()},
        extra=dict(extra or {}),
    )
    for name, router in routers.items():
        points = router_curve(router, test, w_grid)
        pref = bool(getattr(router, "preference_aware", True))
        result.routers[name] = RouterResult(
            name=name,
            kind=getattr(router, "registry_name", "") or type(router).__name__,
            preference_aware=pref,
            points=points,
            aiq=aiq([p.cost for p in points], [p.score for p in points], c_min, c_max),
            cost_to_reach_largest=cost_to_reach(points, target),
            spearman_cost_vs_wc=spearman_cost_vs_wc(points) if pref else None,
        )
    return result


#: The baselines every evaluation fits: references, full-information routers, same-information bandits.
DEFAULT_BASELINES: tuple[str, ...] = (
    "single",
    "random",
    "oracle",
    "offline_mlp",
    "knn",
    "linucb",
    "lin_ts",
    "eps_greedy",
)


def build_baselines(
    train: RoutingTable,
    scale: float | CostScale,
    *,
    seed: int = 0,
    include: Sequence[str] = DEFAULT_BASELINES,
    knn_k: int = 20,
    options: dict[str, dict] | None = None,
) -> dict[str, Router]:
    """Fit baselines on `train`, each built by name through the router registry (`make_router`); `scale` is
    the reward's cost scale (BaRP's, so every preference-aware router trades cost for quality alike).

    ``single`` expands to one router per model. `seed` goes to every router that takes one; `options`
    holds extra constructor arguments per registry name (e.g. ``{"linucb": {"passes": 5}}``). Learned
    baselines need ``train.embeddings``. Returns name -> fitted router.
    """
    options = {"knn": {"k": knn_k}, **(options or {})}
    out: dict[str, Router] = {}
    for name in include:
        if name == "single":
            for model in train.models:
                router = make_router("single", model=model, **options.get("single", {}))
                out[router.name] = router
            continue
        kwargs = dict(options.get(name, {}))
        if _accepts_seed(name):
            kwargs.setdefault("seed", seed)
        out[name] = make_router(name, **kwargs)
    for router in out.values():
        router.fit(train, scale)
    return out


def _accepts_seed(name: str) -> bool:
    """Whether the registered router's constructor (or a base's, through **kwargs) takes `seed`."""
    cls = ROUTERS.get(name)
    if cls is None:
        return False
    return any("seed" in inspect.signature(c.__init__).parameters for c in cls.__mro__ if "__init__" in vars(c))
