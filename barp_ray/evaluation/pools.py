"""Model pools for robustness checks: the same routers trained and evaluated on many (models, split) pairs.

A `Pool` is a train / val / test triple of `RoutingTable`s over one set of models. Built here:

- `model_subset`: RouterBench restricted to some of its models (same prompts, same splits), e.g. the six
  open-weight models, or a flat-cost pool with no dominant model;
- `loto_pools`: leave-one-task-out, one pool per task (train and val without the task, test only the task);
- `synthetic_pool`: a generated pool whose optimal policy is known (the expected score of every model on
  every prompt is stored in ``table.extra["expected_scores"]``; costs are per-model constants with noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from barp_ray.data.table import RoutingTable

OPEN_MODELS = (
    "mistralai/mistral-7b-chat",
    "mistralai/mixtral-8x7b-chat",
    "WizardLM/WizardLM-13B-V1.2",
    "meta/code-llama-instruct-34b-chat",
    "meta/llama-2-70b-chat",
    "zero-one-ai/Yi-34B-Chat",
)
#: Costs within ~3.5x, no model best on every task (Yi-34B and the expensive closed models left out).
FLAT_MODELS = (
    "WizardLM/WizardLM-13B-V1.2",
    "claude-instant-v1",
    "gpt-3.5-turbo-1106",
    "meta/code-llama-instruct-34b-chat",
    "meta/llama-2-70b-chat",
    "mistralai/mixtral-8x7b-chat",
)


@dataclass
class Pool:
    """One routing problem: train (bandit feedback for BaRP), val (model selection), test (report only)."""

    name: str
    train: RoutingTable
    val: RoutingTable
    test: RoutingTable
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return list(self.train.models)

    def fit_table(self) -> RoutingTable:
        """train + val: what the full-information baselines learn from (BaRP selects on val instead)."""
        return RoutingTable.concat([self.train, self.val])

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.models)} models, {len(self.train)} train / {len(self.val)} val / "
            f"{len(self.test)} test prompts, tasks {self.train.task_names} -> {self.test.task_names}"
        )


def select_models(table: RoutingTable, models: list[str] | tuple[str, ...]) -> RoutingTable:
    """The same rows with only `models`' score and cost columns (in the given order)."""
    missing = [m for m in models if m not in table.models]
    if missing:
        raise ValueError(f"models {missing} are not in the table (has {table.models})")
    idx = [table.models.index(m) for m in models]
    return replace(
        table,
        models=list(models),
        scores=table.scores[:, idx],
        costs=table.costs[:, idx],
        responses=None if table.responses is None else table.responses[:, idx],
        extra=dict(table.extra),
    )


def split_pool(table: RoutingTable, name: str, note: str = "") -> Pool:
    """A pool from a prepared table's own train / val / test split labels."""
    return Pool(name, table.where_split("train"), table.where_split("val"), table.where_split("test"), note)


def model_subset(table: RoutingTable, models, name: str, note: str = "") -> Pool:
    """RouterBench (or any prepared table) restricted to `models`, same splits."""
    return split_pool(select_models(table, list(models)), name, note)


def loto_pools(table: RoutingTable, prefix: str = "loto") -> list[Pool]:
    """One pool per task: train / val without it, test = its test rows (leave one task out)."""
    pools = []
    for task in table.task_names:
        rest = table.where_tasks([task], keep=False)
        pools.append(
            Pool(
                f"{prefix}:{task}",
                rest.where_split("train"),
                rest.where_split("val"),
                table.where_tasks([task]).where_split("test"),
                note=f"held-out task {task}",
            )
        )
    return pools


def synthetic_pool(
    n_train: int = 4700,
    n_val: int = 800,
    n_test: int = 1500,
    num_models: int = 9,
    num_tasks: int = 14,
    dim: int = 384,
    seed: int = 0,
    name: str = "synthetic",
) -> Pool:
    """A generated pool like an open-weight deployment: 9 models with costs within ~10x, 14 tasks, continuous
    scores in [0, 1] that depend on the task and on a hidden per-prompt difficulty visible in the embedding.

    The expected score ``mu[i, k]`` of model k on prompt i is known (``table.extra["expected_scores"]``) and
    the expected cost is a per-model constant (``table.extra["expected_costs"]``), so the Bayes-optimal policy
    at preference w is ``argmax_k (1 - w) mu[i, k] - w min(cost_k / tau, 1)``.
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    task_centres = rng.normal(size=(num_tasks, dim)) / np.sqrt(dim)
    difficulty_dir = rng.normal(size=dim) / np.sqrt(dim)
    task = rng.integers(0, num_tasks, size=n)
    difficulty = rng.normal(size=n)
    noise = 0.6 * rng.normal(size=(n, dim)) / np.sqrt(dim)
    emb = task_centres[task] + 0.5 * difficulty[:, None] * difficulty_dir + noise
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    skill = rng.normal(0.0, 1.0, size=(num_tasks, num_models))  # task x model ability
    size = np.linspace(0.0, 1.0, num_models)  # bigger models: more robust to difficulty, dearer
    logit = skill[task] + 0.8 * size[None, :] - (1.2 - 0.8 * size[None, :]) * difficulty[:, None]
    mu = 1.0 / (1.0 + np.exp(-logit))
    scores = np.clip(mu + 0.15 * rng.normal(size=mu.shape), 0.0, 1.0).astype(np.float32)
    base_cost = 1e-4 * np.exp(np.log(10.0) * size)  # $0.0001 .. $0.001 per query: within 10x
    costs = base_cost[None, :] * rng.uniform(0.7, 1.3, size=(n, num_models))
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test, dtype=object)
    table = RoutingTable(
        prompt_ids=[f"s{i:05d}" for i in range(n)],
        prompts=[f"synthetic prompt {i}" for i in range(n)],
        tasks=np.array([f"task{t:02d}" for t in task], dtype=object),
        models=[f"m{k}" for k in range(num_models)],
        scores=scores,
        costs=costs,
        split=split,
        embeddings=emb,
        encoder="synthetic",
    )
    table.extra.update(expected_scores=mu, expected_costs=base_cost)
    pool = split_pool(table, name, note="generated; Bayes-optimal policy known")
    for part, mask in ((pool.train, split == "train"), (pool.val, split == "val"), (pool.test, split == "test")):
        part.extra["expected_scores"] = mu[mask]
    return pool


#: Pools `build_pools` knows; "loto" expands to one pool per task.
POOL_NAMES = ("routerbench", "open6", "flat6", "loto", "synthetic")


def build_pools(table: RoutingTable | None, names=POOL_NAMES, seed: int = 0) -> list[Pool]:
    """The named pools from a prepared + embedded RouterBench table (`synthetic` needs no table)."""
    pools: list[Pool] = []
    for name in names:
        if name == "synthetic":
            pools.append(synthetic_pool(seed=seed))
            continue
        if table is None:
            raise ValueError(f"pool {name!r} needs the prepared RouterBench table (pass --data)")
        if name == "routerbench":
            pools.append(split_pool(table, name, note="all models"))
        elif name == "open6":
            pools.append(model_subset(table, OPEN_MODELS, name, note="six open-weight models"))
        elif name == "flat6":
            pools.append(model_subset(table, FLAT_MODELS, name, note="flat costs, no dominant model"))
        elif name == "loto":
            pools.extend(loto_pools(table))
        elif name.startswith("loto:"):
            pools.extend(p for p in loto_pools(table) if p.name == name)
        else:
            raise ValueError(f"unknown pool {name!r}; known: {', '.join(POOL_NAMES)} (or loto:<task>)")
    return pools
