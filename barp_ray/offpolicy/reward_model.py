"""Reward models (predicted score and cost of every model on a prompt) for the doubly robust estimator.

- `LoggedRewardModel`: fitted on the logged bandit rows alone: per model, a ridge regression of the
  feedback score on the prompt embedding (shrunk towards that model's mean score; models with few logged
  rows stay near their mean) and that model's mean logged cost.
- `FullInformationRewardModel`: the full-information offline router (`OfflineMLPRouter`) fitted on a
  prepared shard folder's train split, where every model's score and cost are known.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from barp_ray.offpolicy.logged import LoggedBandit


class RewardModel(Protocol):
    models: list[str]

    def predict(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(q_hat, c_hat), each (N, K): predicted score in [0, 1] and USD cost of every model."""


class LoggedRewardModel:
    """Per-model ridge regression of score on the embedding, fitted on logged rows only."""

    def __init__(self, l2: float = 30.0) -> None:
        self.l2 = l2
        self.models: list[str] = []

    def fit(self, data: LoggedBandit) -> LoggedRewardModel:
        self.models = list(data.models)
        x = data.embeddings.astype(np.float64)
        self._mu, self._sd = x.mean(axis=0), x.std(axis=0) + 1e-6
        z = (x - self._mu) / self._sd
        k, d = len(self.models), x.shape[1]
        overall_q = float(data.scores.mean())
        overall_c = float(data.costs.mean())
        self.coef = np.zeros((k, d))
        self.intercept = np.full(k, overall_q)
        self.mean_cost = np.full(k, overall_c)
        self.rows = np.zeros(k, dtype=np.int64)
        for a in range(k):
            mask = data.actions == a
            n = int(mask.sum())
            self.rows[a] = n
            if n == 0:
                continue
            q = data.scores[mask]
            # the mean is shrunk to the overall mean with a pseudo-count of 5 rows
            self.intercept[a] = (q.sum() + 5 * overall_q) / (n + 5)
            self.mean_cost[a] = float(data.costs[mask].mean())
            za = z[mask]
            self.coef[a] = np.linalg.solve(za.T @ za + self.l2 * np.eye(d), za.T @ (q - self.intercept[a]))
        return self

    def predict(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = (np.asarray(embeddings, np.float64) - self._mu) / self._sd
        q = np.clip(z @ self.coef.T + self.intercept, 0.0, 1.0)
        return q, np.broadcast_to(self.mean_cost, q.shape).copy()


def cross_fitted_predictions(rows: LoggedBandit, seed: int = 0, folds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(q_hat, c_hat) of every logged row from a `LoggedRewardModel` fitted on the *other* prompt folds, so no
    row's prediction has seen its own outcome (what DR needs to stay honest)."""
    k = len(rows.models)
    q_hat, c_hat = np.zeros((len(rows), k)), np.zeros((len(rows), k))
    unique = np.unique(rows.prompt_hashes)
    fold_of = dict(zip(unique, np.random.default_rng(seed).integers(0, folds, len(unique)), strict=True))
    fold = np.array([fold_of[h] for h in rows.prompt_hashes])
    for f in range(folds):
        fit, pred = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if len(pred) == 0:
            continue
        if len(fit) == 0:
            fit = pred
        q_hat[pred], c_hat[pred] = LoggedRewardModel().fit(rows.take(fit)).predict(rows.embeddings[pred])
    return q_hat, c_hat


class FullInformationRewardModel:
    """The offline full-information router's predictions (fitted on `data`'s train split)."""

    def __init__(self, data: str, models: list[str], seed: int = 0) -> None:
        from barp_ray.data.shards import read_shards
        from barp_ray.evaluation.full_info_routers import OfflineMLPRouter
        from barp_ray.objective import derive_tau

        table = read_shards(data).where_split("train")
        if list(table.models) != list(models):
            missing = sorted(set(models) - set(table.models))
            if missing:
                raise ValueError(f"reward_data: {data} has no columns for the logged models {missing}")
            table = _reorder(table, models)
        self.models = list(models)
        self.router = OfflineMLPRouter(seed=seed)
        self.router.fit(table, derive_tau(table.costs))

    def predict(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from barp_ray.data.table import RoutingTable

        n = len(embeddings)
        k = len(self.models)
        probe = RoutingTable(
            prompt_ids=np.arange(n).astype(str),
            prompts=[""] * n,
            tasks=np.full(n, ""),
            models=self.models,
            scores=np.zeros((n, k)),
            costs=np.zeros((n, k)),
            embeddings=np.asarray(embeddings, np.float32),
        )
        return self.router.predict(probe)


def _reorder(table, models: list[str]):
    from dataclasses import replace

    order = [list(table.models).index(m) for m in models]
    return replace(
        table,
        models=list(models),
        scores=table.scores[:, order],
        costs=table.costs[:, order],
        responses=None if table.responses is None else table.responses[:, order],
    )
