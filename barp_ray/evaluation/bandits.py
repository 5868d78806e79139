"""Same-information baselines: classical contextual bandits trained by BaRP's own simulated protocol.

Every router here learns exactly as BaRP does: rounds of interactions, each one a training prompt, a
preference w_c ~ U(0, 1), ONE model chosen by the learner's exploration rule, and only that model's
recorded score q and cost c revealed (reward ``r = (1 - w_c) q - w_c c~(c)``, BaRP's cost scale). The budget is
``passes`` interactions per training prompt (prompts visited in a seeded random order each pass), the
same unit as `TrainConfig.passes`. At test time they route greedily (no exploration).

- ``linucb``: per-model ridge regression of r on ``z(x, w) = [h(x), 1] (x) [1, w_c]`` (the embedding, its
  interaction with w_c, and biases), upper-confidence-bound action choice.
- ``lin_ts``: the same ridge posterior, linear Thompson sampling (one parameter draw per model per round).
- ``eps_greedy``: a neural reward model (embedding -> K predicted scores and K normalised costs; each
  observation trains only the chosen model's outputs), epsilon-greedy exploration, utility argmax.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from barp_ray.data.table import RoutingTable
from barp_ray.evaluation.routers import Router, _require_embeddings, register, utility_argmax
from barp_ray.objective import CostScale, normalized_cost, reward
from barp_ray.training.config import TrainConfig

DEFAULT_PASSES = float(TrainConfig.model_fields["passes"].default)  # the same budget as BaRP's default


class BanditRouter(Router):
    """Base of the simulated-bandit routers: the interaction loop, seeded; subclasses choose and update."""

    def __init__(
        self, passes: float = DEFAULT_PASSES, round_size: int = 256, seed: int = 0, max_interactions: int | None = None
    ) -> None:
        super().__init__()
        if passes <= 0 or round_size < 1:
            raise ValueError("passes must be > 0 and round_size >= 1")
        self.passes, self.round_size, self.seed = float(passes), int(round_size), int(seed)
        self.max_interactions = max_interactions
        self.interactions_ = 0
        self.observed_reward_ = float("nan")

    def fit(self, train: RoutingTable, scale: float | CostScale) -> None:
        # thousands of rounds of small (~130-d) solves: multi-threaded BLAS only adds contention (15-25x slower
        # on 2 shared cores, measured); one thread for the whole interaction loop
        with threadpool_limits(limits=1, user_api="blas"):
            self._fit(train, scale)

    def _fit(self, train: RoutingTable, scale: float | CostScale) -> None:
        self._remember(train, scale)
        emb = _require_embeddings(train, self.name)
        self._mu, self._sd = emb.mean(axis=0), emb.std(axis=0) + 1e-6
        x = self._standardise(emb)
        n, k = len(train), train.num_models
        total = round(self.passes * n)
        if self.max_interactions is not None:
            total = min(total, int(self.max_interactions))
        rng = np.random.default_rng(self.seed)
        order = np.concatenate([rng.permutation(n) for _ in range(int(np.ceil(total / n)))])[:total]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._train_x = torch.from_numpy(x)  # the log stores row indices into it, not copies
            self._init(x.shape[1], k, rng, capacity=total)
            rewards = []
            for start in range(0, total, self.round_size):
                idx = order[start : start + self.round_size]
                w = rng.random(len(idx))
                a = self._choose(x[idx], w, explore=True, rng=rng)
                q = train.scores[idx, a].astype(np.float64)  # bandit feedback: the chosen model only
                c = train.costs[idx, a].astype(np.float64)
                rewards.append(reward(q, c, w, self.scale))
                self._update(x[idx], w, a, q, c, rng, idx)
        self.interactions_ = total
        self.observed_reward_ = float(np.concatenate(rewards).mean()) if rewards else float("nan")

    def route(self, embeddings: np.ndarray, w_cost: float) -> np.ndarray:
        self._check_fitted(w_cost)
        x = self._standardise(np.asarray(embeddings, dtype=np.float32))
        return self._choose(x, np.full(len(x), float(w_cost)), explore=False, rng=None)

    def _standardise(self, emb: np.ndarray) -> np.ndarray:
        return ((emb - self._mu) / self._sd).astype(np.float32)

    @abstractmethod
    def _init(self, dim: int, k: int, rng: np.random.Generator, capacity: int) -> None:
        """Fresh learner state for `dim`-d standardised embeddings, `k` models, `capacity` interactions."""

    @abstractmethod
    def _choose(self, x: np.ndarray, w: np.ndarray, explore: bool, rng: np.random.Generator | None) -> np.ndarray:
        """(B,) model index per row; `explore` False is the greedy test-time rule."""

    @abstractmethod
    def _update(
        self,
        x: np.ndarray,
        w: np.ndarray,
        a: np.ndarray,
        q: np.ndarray,
        c: np.ndarray,
        rng: np.random.Generator,
        rows: np.ndarray,
    ) -> None:
        """Learn from one round of observations (chosen model a, its score q and USD cost c) on training
        `rows` (their standardised embeddings `x`)."""


def linear_features(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """z(x, w) = [x, 1, w_c x, w_c]: r is linear in z whenever score and normalised cost are linear in x."""
    xb = np.concatenate([x, np.ones((len(x), 1), dtype=x.dtype)], axis=1)
    return np.concatenate([xb, w[:, None].astype(x.dtype) * xb], axis=1).astype(np.float64)


class _RidgeBandit(BanditRouter):
    """Per-model ridge regression of the reward on `linear_features` (shared by LinUCB and linear TS).

    h(x) is the standardised embedding projected on its top `dim` principal components (fitted on the
    training embeddings, no labels): the (2 dim + 2)-square solves per round stay cheap on a CPU.
    """

    def __init__(self, ridge: float = 1.0, dim: int | None = 64, **kwargs) -> None:
        super().__init__(**kwargs)
        if ridge <= 0 or (dim is not None and dim < 1):
            raise ValueError("ridge must be > 0 and dim >= 1 (or None for the full embedding)")
        self.ridge, self.dim = float(ridge), dim

    def _standardise(self, emb: np.ndarray) -> np.ndarray:
        x = super()._standardise(emb)
        if self.dim is None:
            return x
        if getattr(self, "_basis", None) is None:  # first call: the training embeddings
            _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
            self._basis = vt[: self.dim].T.astype(np.float32)
            self._pc_sd = (x @ self._basis).std(axis=0) + 1e-6
        return ((x @ self._basis) / self._pc_sd).astype(np.float32)

    def _fit(self, train: RoutingTable, scale: float | CostScale) -> None:
        self._basis = None
        super()._fit(train, scale)

    def _init(self, dim: int, k: int, rng: np.random.Generator, capacity: int) -> None:
        d = 2 * (dim + 1)
        self._a = np.stack([np.eye(d) * self.ridge for _ in range(k)])  # (K, d, d) Gram + ridge
        self._b = np.zeros((k, d))
        self._refresh()

    def _refresh(self) -> None:
        """theta_k = A_k^-1 b_k and A_k^-1 after an update (one solve per model per round)."""
        self._a_inv = np.linalg.inv(self._a)
        self._theta = np.einsum("kij,kj->ki", self._a_inv, self._b)

    def _update(self, x, w, a, q, c, rng, rows) -> None:
        z = linear_features(x, w)
        r = reward(q, c, w, self.scale)
        for k in np.unique(a):
            zk = z[a == k]
            self._a[k] += zk.T @ zk
            self._b[k] += zk.T @ r[a == k]
        self._refresh()

    def _greedy(self, z: np.ndarray) -> np.ndarray:
        return z @ self._theta.T  # (B, K) predicted rewards


@register("linucb")
class LinUCBRouter(_RidgeBandit):
    """LinUCB (Li et al. 2010), disjoint per-model ridge on [h(x); w-features]; bonus alpha * ||z||_{A^-1}."""

    name = "linucb"

    def __init__(self, alpha: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.alpha = float(alpha)

    def _choose(self, x, w, explore, rng) -> np.ndarray:
        z = linear_features(x, w)
        score = self._greedy(z)
        if explore:
            quad = np.stack([np.einsum("bi,bi->b", z @ a_inv, z) for a_inv in self._a_inv], axis=1)
            width = np.sqrt(np.maximum(quad, 0.0))
            score = score + self.alpha * width
        return score.argmax(axis=1).astype(np.int64)


@register("lin_ts")
class LinearTSRouter(_RidgeBandit):
    """Linear Thompson sampling (Agrawal & Goyal 2013): per round, theta_k ~ N(theta_hat_k, v^2 A_k^-1)."""

    name = "lin_ts"

    def __init__(self, v: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.v = float(v)

    def _choose(self, x, w, explore, rng) -> np.ndarray:
        z = linear_features(x, w)
        if not explore:
            return self._greedy(z).argmax(axis=1).astype(np.int64)
        from scipy.linalg import solve_triangular

        k, d = self._theta.shape
        # A_k = L L^T (the Gram + ridge is symmetric positive definite; its inverse, after many updates, is
        # not numerically so); L^-T eps has covariance A_k^-1
        eps = rng.standard_normal((k, d))
        lower = np.linalg.cholesky(self._a)
        noise = np.stack([solve_triangular(lower[i].T, eps[i], lower=False) for i in range(k)])
        theta = self._theta + self.v * noise
        return (z @ theta.T).argmax(axis=1).astype(np.int64)


class _RewardNet(nn.Module):
    """Standardised embedding -> (K score logits, K normalised-cost predictions)."""

    def __init__(self, dim: int, hidden: int, k: int, dropout: float) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.score = nn.Linear(hidden, k)
        self.cost = nn.Linear(hidden, k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.score(h), self.cost(h)


@register("eps_greedy")
class EpsilonGreedyRouter(BanditRouter):
    """Epsilon-greedy over a neural reward model fitted on the logged interactions so far.

    After each round, `updates_per_round` minibatch steps on the whole log (replay): BCE on the chosen
    model's score and squared error on its normalised cost. The choice is the utility argmax of the
    predictions at the request's w (uniform random with probability `epsilon` while training).
    """

    name = "eps_greedy"

    def __init__(
        self,
        epsilon: float = 0.1,
        hidden: int = 128,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        updates_per_round: int = 4,
        minibatch: int = 256,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon must be in [0, 1]")
        self.epsilon, self.hidden, self.dropout, self.lr = float(epsilon), hidden, dropout, lr
        self.weight_decay, self.updates_per_round, self.minibatch = weight_decay, updates_per_round, minibatch

    def _init(self, dim: int, k: int, rng: np.random.Generator, capacity: int) -> None:
        self._k = k
        self._net = _RewardNet(dim, self.hidden, k, self.dropout)
        self._opt = torch.optim.Adam(self._net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self._rows = torch.zeros(capacity, dtype=torch.int64)  # the interaction log, filled round by round
        self._a = torch.zeros(capacity, dtype=torch.int64)
        self._q = torch.zeros(capacity)
        self._c = torch.zeros(capacity)
        self._n = 0
        self._gen = torch.Generator().manual_seed(self.seed)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score, normalised cost) predictions (B, K) for standardised embeddings."""
        self._net.eval()
        with torch.no_grad():
            s, c = self._net(torch.from_numpy(x))
        return torch.sigmoid(s).numpy().astype(np.float64), c.clamp(0.0, 1.0).numpy().astype(np.float64)

    def _choose(self, x, w, explore, rng) -> np.ndarray:
        q_hat, c_hat = self.predict(x)
        # c_hat is already on the normalised scale: tau = 1 makes min(c / tau, 1) a no-op; one w per row.
        choice = utility_argmax(q_hat, c_hat, np.asarray(w, dtype=np.float64)[:, None], 1.0)
        if explore:
            flip = rng.random(len(x)) < self.epsilon
            choice[flip] = rng.integers(0, self._k, size=int(flip.sum()))
        return choice

    def _update(self, x, w, a, q, c, rng, rows) -> None:
        lo, hi = self._n, self._n + len(x)
        self._rows[lo:hi] = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        self._a[lo:hi] = torch.from_numpy(a)
        self._q[lo:hi] = torch.from_numpy(q.astype(np.float32))
        self._c[lo:hi] = torch.from_numpy(normalized_cost(c, self.scale).astype(np.float32))
        self._n = hi
        self._net.train()
        for _ in range(self.updates_per_round):
            idx = torch.randint(hi, (min(self.minibatch, hi),), generator=self._gen)
            s_logit, c_pred = self._net(self._train_x[self._rows[idx]])
            pick = self._a[idx].unsqueeze(1)
            loss = nn.functional.binary_cross_entropy_with_logits(s_logit.gather(1, pick).squeeze(1), self._q[idx])
            loss = loss + nn.functional.mse_loss(c_pred.gather(1, pick).squeeze(1), self._c[idx])
            self._opt.zero_grad()
            loss.backward()
            self._opt.step()
