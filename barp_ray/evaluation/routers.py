"""Router registry and baseline routers.

Every router (BaRP and the baselines alike) implements one interface, like RouteLLM's router registry:

    router = make_router("knn", k=20)
    router.fit(train_table, scale)              # scale: the reward's cost scale (objective.CostScale)
    choice = router.route(embeddings, 0.3)      # (N,) int model index per row of (N, D) embeddings, w_c = 0.3
    choice = router.route_table(test_table, 0.3)  # the same for a table (checks its model list)

`route` sees what a deployed router sees: the prompts' embeddings and the preference, never the outcomes.
The one exception is the `oracle` reference (``uses_outcomes = True``): it overrides `route_table` and reads
the routed table's true scores and costs; it is an upper bound, not a router.

Preference-aware routers pick by the utility ``w_q * q_hat - w_c * c~(c_hat)`` with ``w_q = 1 - w_c`` (the
reward BaRP is trained on, with the same cost scale), ties going to the cheaper model.

Here: the registry, the interface and the trivial baselines (single, random, oracle). The learned
full-information baselines (offline_mlp, knn) are in `barp_ray.evaluation.full_info_routers`, the bandits in
`barp_ray.evaluation.bandits`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

from barp_ray.data.table import RoutingTable
from barp_ray.objective import CostScale, as_cost_scale, normalized_cost, reward

ROUTERS: dict[str, type[Router]] = {}

_TIE_EPS = 1e-9


def register(name: str | type[Router]) -> Callable[[type[Router]], type[Router]] | type[Router]:
    """Class decorator adding a router to `ROUTERS`: ``@register("knn")`` or bare ``@register`` (key: name).

    Re-registering the same class under its name is a no-op; another class under a taken name is an error.
    """

    def add(cls: type[Router], key: str) -> type[Router]:
        old = ROUTERS.get(key)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            where = f"{old.__module__}.{old.__qualname__}"
            raise ValueError(f"router name {key!r} is already registered by {where}")
        ROUTERS[key] = cls
        cls.registry_name = key
        return cls

    if isinstance(name, str):
        return lambda cls: add(cls, name)
    return add(name, name.name)


def make_router(name: str, **kwargs) -> Router:
    """Instantiate a registered router by name."""
    if name not in ROUTERS:
        raise KeyError(f"unknown router {name!r}; registered: {sorted(ROUTERS)}")
    return ROUTERS[name](**kwargs)


def normalised_cost(costs: np.ndarray, scale: float | CostScale) -> np.ndarray:
    """c~ (`barp_ray.objective.normalized_cost`, as float64 numpy)."""
    return normalized_cost(np.asarray(costs, dtype=np.float64), scale)


def utility_argmax(
    q_hat: np.ndarray, c_hat: np.ndarray, w_cost: float | np.ndarray, scale: float | CostScale
) -> np.ndarray:
    """Per row argmax of ``(1 - w_c) * q_hat - w_c * c~(c_hat)``; ties go to the lower ``c_hat``.

    `w_cost` is one value, or an (N, 1) array of one value per row.
    """
    q_hat = np.asarray(q_hat, dtype=np.float64)
    c_hat = np.broadcast_to(np.asarray(c_hat, dtype=np.float64), q_hat.shape)
    util = reward(q_hat, c_hat, w_cost, scale)
    best = util.max(axis=1, keepdims=True)
    tied_cost = np.where(util >= best - _TIE_EPS, c_hat, np.inf)
    return tied_cost.argmin(axis=1).astype(np.int64)


def realised_reward(table: RoutingTable, choice: np.ndarray, w_cost: float, scale: float | CostScale) -> float:
    """Mean reward ``w_q * q - w_c * c~`` of the chosen models, with the table's true scores and costs."""
    rows = np.arange(len(table))
    q = table.scores[rows, choice].astype(np.float64)
    c = table.costs[rows, choice].astype(np.float64)
    return float(np.mean(reward(q, c, w_cost, scale))) if len(table) else 0.0


class Router(ABC):
    """A router: ``fit`` on a training table, then ``route`` any table with the same models."""

    name: str = "router"
    registry_name: str = ""
    #: False when the choice ignores the preference w (evaluated once, repeated over the w-grid).
    preference_aware: bool = True
    #: False when `route` only needs the number of rows (single models, random).
    needs_embeddings: bool = True
    #: True only for references that read the routed table's true outcomes (the oracle).
    uses_outcomes: bool = False

    def __init__(self) -> None:
        self.models: list[str] | None = None
        self.scale: CostScale | None = None  # the reward's cost scale, set by `fit`

    @abstractmethod
    def fit(self, train: RoutingTable, scale: float | CostScale) -> None:
        """Learn from `train`; `scale` maps cost to the reward's c~ (a number: tau of the linear map)."""

    @abstractmethod
    def route(self, embeddings: np.ndarray, w_cost: float) -> np.ndarray:
        """(N,) int64 model index (into the fitted model list) for (N, D) prompt embeddings at cost weight
        ``w_cost`` in [0, 1]."""

    def route_table(self, table: RoutingTable, w_cost: float) -> np.ndarray:
        """`route` on a table's embeddings, after checking its model list and `w_cost`."""
        self._check(table, w_cost)
        if table.embeddings is None:
            if self.needs_embeddings:
                raise ValueError(f"{self.name} routes on embeddings: run `barp embed` (or fill table.embeddings)")
            return self.route(np.zeros((len(table), 0), dtype=np.float32), w_cost)
        return self.route(np.asarray(table.embeddings, dtype=np.float32), w_cost)

    # ---- helpers for subclasses ------------------------------------------------------------------
    def _remember(self, train: RoutingTable, scale: float | CostScale) -> None:
        self.models = list(train.models)
        self.scale = as_cost_scale(scale)

    def _check(self, table: RoutingTable, w_cost: float | None = None) -> None:
        self._check_fitted(w_cost)
        if list(table.models) != self.models:
            raise ValueError(f"{self.name}: table models {table.models} differ from the fitted {self.models}")

    def _check_fitted(self, w_cost: float | None = None) -> None:
        if self.models is None:
            raise RuntimeError(f"{type(self).__name__}.route called before fit")
        if w_cost is not None and not 0.0 <= w_cost <= 1.0:
            raise ValueError(f"w_cost must be in [0, 1], got {w_cost}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _require_embeddings(table: RoutingTable, who: str) -> np.ndarray:
    if table.embeddings is None:
        raise ValueError(f"{who} needs embeddings; run `barp embed` (or fill table.embeddings) first")
    return np.asarray(table.embeddings, dtype=np.float32)


# ---- trivial baselines -------------------------------------------------------------------------------
@register("single")
class SingleModelRouter(Router):
    """Always the same model (given by id or index)."""

    preference_aware = False
    needs_embeddings = False

    def __init__(self, model: str | int) -> None:
        super().__init__()
        self.model = model
        self.index: int | None = None
        self.name = f"single:{model}"

    def fit(self, train: RoutingTable, scale: float | CostScale) -> None:
        self._remember(train, scale)
        if isinstance(self.model, str):
            if self.model not in train.models:
                raise ValueError(f"model {self.model!r} not in {train.models}")
            self.index = train.models.index(self.model)
        else:
            if not 0 <= int(self.model) < train.num_models:
                raise ValueError(f"model index {self.model} out of range for {train.num_models} models")
            self.index = int(self.model)
            self.name = f"single:{train.models[self.index]}"

    def route(self, embeddings: np.ndarray, w_cost: float) -> np.ndarray:
        self._check_fitted(w_cost)
        return np.full(len(embeddings), self.index, dtype=np.int64)


@register("random")
class RandomRouter(Router):
    """Uniformly random model per row; the same rows get the same models on every call (seeded)."""

    name = "random"
    preference_aware = False
    needs_embeddings = False

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed

    def fit(self, train: RoutingTable, scale: float | CostScale) -> None:
        self._remember(train, scale)

    def route(self, embeddings: np.ndarray, w_cost: float) -> np.ndarray:
        self._check_fitted(w_cost)
        rng = np.random.default_rng(self.seed)
        return rng.integers(0, len(self.models), size=len(embeddings)).astype(np.int64)


@register("oracle")
class OracleRouter(Router):
    """Upper bound: per row argmax of ``w_q * q - w_c * c~`` with the routed table's TRUE scores and costs."""

    name = "oracle"
    uses_outcomes = True

    def fit(self, train: RoutingTable, scale: float | CostScale) -> None:
        self._remember(train, scale)

    def route(self, embeddings: np.ndarray, w_cost: float) -> np.ndarray:
        raise TypeError("the oracle reads true outcomes: call route_table(table, w_cost), not route(embeddings)")

    def route_table(self, table: RoutingTable, w_cost: float) -> np.ndarray:
        self._check(table, w_cost)
        return utility_argmax(table.scores, table.costs, w_cost, self.scale)


def single_model_routers(models: Sequence[str]) -> dict[str, Router]:
    """One `SingleModelRouter` per model, keyed by its name (``single:<model>``)."""
    out: dict[str, Router] = {}
    for m in models:
        r = SingleModelRouter(m)
        out[r.name] = r
    return out
