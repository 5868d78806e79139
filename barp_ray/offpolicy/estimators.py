"""Off-policy estimators of a target policy's mean outcome from logged bandit rows (numpy only).

For logged rows i with action a_i, propensity mu_i = P(logging rule picks a_i | x_i, w_i) and outcome y_i
(a score, a cost, or a reward at some preference), and the target's probabilities pi(.|x_i, w) (one-hot
for a greedy router):

    importance weight   rho_i = pi(a_i | x_i, w) / mu_i          (clipped at M for clipped IPS)
    IPS                 V = mean_i rho_i * y_i
    SNIPS               V = sum_i rho_i * y_i / sum_i rho_i
    doubly robust       V = mean_i [ sum_a pi(a | x_i, w) * yhat(x_i, a) + rho_i * (y_i - yhat(x_i, a_i)) ]

with yhat a reward model (any regressor of the outcome on (x, a)). Confidence intervals: percentile
bootstrap over logged rows (the reward model is held fixed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ESTIMATORS = ("ips", "snips", "dr")


def importance_weights(
    target_probs: np.ndarray,
    actions: np.ndarray,
    propensities: np.ndarray,
    clip: float | None = None,
) -> np.ndarray:
    """rho_i = pi(a_i | x_i) / mu_i, optionally clipped at `clip`."""
    target_probs = np.asarray(target_probs, dtype=np.float64)
    actions = np.asarray(actions, dtype=np.int64)
    rho = target_probs[np.arange(len(actions)), actions] / np.asarray(propensities, dtype=np.float64)
    return np.minimum(rho, clip) if clip is not None else rho


def ips(y: np.ndarray, rho: np.ndarray) -> float:
    return float(np.mean(rho * y))


def snips(y: np.ndarray, rho: np.ndarray) -> float:
    total = float(np.sum(rho))
    return float(np.sum(rho * y) / total) if total > 0 else float("nan")


def doubly_robust(
    y: np.ndarray, rho: np.ndarray, target_probs: np.ndarray, y_hat: np.ndarray, actions: np.ndarray
) -> float:
    return float(np.mean(dr_terms(y, rho, target_probs, y_hat, actions)))


def dr_terms(y, rho, target_probs, y_hat, actions) -> np.ndarray:
    """Per-row doubly robust terms (their mean is the estimate)."""
    direct = np.sum(np.asarray(target_probs) * np.asarray(y_hat), axis=1)
    observed_hat = np.asarray(y_hat)[np.arange(len(actions)), actions]
    return direct + rho * (np.asarray(y) - observed_hat)


@dataclass
class Estimate:
    """One estimator's value with a bootstrap (1 - alpha) interval."""

    estimator: str
    value: float
    low: float
    high: float
    n: int
    effective_n: float  # (sum rho)^2 / sum rho^2: how many logged rows the estimate really rests on

    def covers(self, truth: float) -> bool:
        return bool(self.low <= truth <= self.high)

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def effective_sample_size(rho: np.ndarray) -> float:
    s2 = float(np.sum(rho**2))
    return float(np.sum(rho) ** 2 / s2) if s2 > 0 else 0.0


def bootstrap_interval(
    stat: Callable[[np.ndarray], np.ndarray], n: int, samples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of `stat(idx)` over `samples` resamples; `stat` maps a (B, n) index array to (B,)."""
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, samples, 250):  # bounded memory: 250 resamples at a time
        idx = rng.integers(0, n, size=(min(250, samples - start), n))
        values.append(stat(idx))
    v = np.concatenate(values)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2))


def statistic(
    name: str,
    y: np.ndarray,
    rho: np.ndarray,
    target_probs: np.ndarray | None = None,
    y_hat: np.ndarray | None = None,
    actions: np.ndarray | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """The estimator `name` as a function of row indices ((n,) or (B, n)) -> value(s): the full-sample
    estimate is `stat(np.arange(n))`, a bootstrap replicate is `stat(resampled_idx)`."""
    y = np.asarray(y, dtype=np.float64)
    wy = rho * y
    if name == "ips":
        return lambda idx: wy[idx].mean(axis=-1)
    if name == "snips":
        return lambda idx: wy[idx].sum(axis=-1) / np.maximum(rho[idx].sum(axis=-1), 1e-12)
    if name == "dr":
        if y_hat is None or target_probs is None or actions is None:
            raise ValueError("dr needs target_probs, y_hat (a reward model's predictions) and actions")
        terms = dr_terms(y, rho, target_probs, y_hat, actions)
        return lambda idx: terms[idx].mean(axis=-1)
    raise ValueError(f"unknown estimator {name!r}; use {ESTIMATORS}")


def estimate_all(
    y: np.ndarray,
    target_probs: np.ndarray,
    actions: np.ndarray,
    propensities: np.ndarray,
    y_hat: np.ndarray | None = None,
    clip: float | None = None,
    estimators: tuple[str, ...] = ESTIMATORS,
    bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Estimate]:
    """IPS, SNIPS and (given `y_hat`, (N, K) predicted outcomes) DR estimates of E_pi[y], with intervals."""
    rho = importance_weights(target_probs, actions, propensities, clip)
    n = len(rho)
    if n == 0:
        raise ValueError("no logged rows to estimate from")
    ess = effective_sample_size(rho)
    out: dict[str, Estimate] = {}
    for name in estimators:
        if name == "dr" and y_hat is None:
            continue
        stat = statistic(name, y, rho, target_probs, y_hat, actions)
        low, high = bootstrap_interval(stat, n, bootstrap, alpha, seed)
        out[name] = Estimate(name, float(stat(np.arange(n))), low, high, n, ess)
    return out
