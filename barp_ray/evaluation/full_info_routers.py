"""Full-information learned baselines: they fit on every model's recorded score and cost of every train row.

`offline_mlp` (an MLP predicting all K scores, with a mean or learned cost model) and `knn` (cosine nearest
neighbours). Both route by the utility ``w_q * q_hat - w_c * c~(c_hat)`` of `barp_ray.evaluation.routers`;
the same-information bandit baselines are in `barp_ray.evaluation.bandits`.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from barp_ray.data.table import RoutingTable
from barp_ray.evaluation.metrics import DEFAULT_W_GRID
from barp_ray.evaluation.routers import (
    Router,
    _require_embeddings,
    normalised_cost,
    realised_reward,
    register,
    utility_argmax,
)
from barp_ray.objective import CostScale


def _embeddings_of(x: np.ndarray | RoutingTable, who: str) -> np.ndarray:
    """(N, D) float32 embeddings from an array or a table."""
    return _require_embeddings(x, who) if isinstance(x, RoutingTable) else np.asarray(x, dtype=np.float32)


# ---- learned baselines -------------------------------------------------------------------------------
class _ScoreCostNet(nn.Module):
    """Embedding -> hidden -> (K score logits, K standardised log-cost predictions)."""

    def __init__(self, dim: int, hidden: int, k: int, dropout: float) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.score_head = nn.Linear(hidden, k)
        self.cost_head = nn.Linear(hidden, k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.score_head(h), self.cost_head(h)


@register("offline_mlp")
class OfflineMLPRouter(Router):
    """Full-information offline router: an MLP predicts all K scores of a prompt (sigmoid, BCE on every
    model's recorded score of every train row), and a per-model expected cost.

    Two cost predictors are fitted: the per-model mean train cost (``"mean"``) and a second MLP head on
    log-cost (``"head"``, de-biased with the residual variance). ``cost_model="auto"`` keeps the one with
    the higher mean realised reward over the w-grid on the 10% validation carve (see ``val_report_``).
    Seeded; early stopping on the validation carve; CPU, one torch thread while fitting by default.
    """

    name = "offline_mlp"

    def __init__(
        self,
        hidden: int = 128,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        max_epochs: int = 200,
        patience: int = 10,
        val_fraction: float = 0.1,
        cost_model: str = "auto",
        seed: int = 0,
        num_threads: int | None = 1,
    ) -> None:
        super().__init__()
        if cost_model not in ("auto", "mean", "head"):
            raise ValueError(f"cost_model must be auto, mean or head, got {cost_model!r}")
        self.hidden, self.dropout, self.lr, self.weight_decay = hidden, dropout, lr, weight_decay
        self.batch_size, self.max_epochs, self.patience = batch_size, max_epochs, patience
        self.val_fraction, self.cost_model, self.seed = val_fraction, cost_model, seed
        self.num_threads = num_threads  # torch intra-op threads while fitting (1: tiny net, busy CPUs)
        self.net: _ScoreCostNet | None = None
        self.cost_model_: str | None = None
        self.val_report_: dict[str, float | int | str] = {}

    # ---- fit -----------------------------------------------------------------------------------------
    def fit(self, train: RoutingTable, scale: float | CostScale) -> None:
        previous = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            self._fit(train, scale)
        finally:
            torch.set_num_threads(previous)

    def _fit(self, train: RoutingTable, scale: float | CostScale) -> None:
        self._remember(train, scale)
        x_all = _require_embeddings(train, self.name)
        n, k = len(train), train.num_models
        if n < 2:
            raise ValueError("OfflineMLPRouter needs at least 2 training rows")
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(n)
        n_val = round(self.val_fraction * n) if n >= 10 else 0
        val_idx, fit_idx = perm[:n_val], perm[n_val:]

        self._mu_x = x_all[fit_idx].mean(axis=0)
        self._sd_x = x_all[fit_idx].std(axis=0) + 1e-6
        log_c = np.log(np.maximum(train.costs, 1e-12))
        self._mu_lc = log_c[fit_idx].mean(axis=0)
        self._sd_lc = log_c[fit_idx].std(axis=0) + 1e-6

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = _ScoreCostNet(x_all.shape[1], self.hidden, k, self.dropout)
            x = torch.from_numpy(self._standardise(x_all))
            q = torch.tensor(train.scores, dtype=torch.float32)  # a copy: the table may be read-only (Ray object store)
            lc = torch.from_numpy(((log_c - self._mu_lc) / self._sd_lc).astype(np.float32))
            opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            bce, mse = nn.BCEWithLogitsLoss(), nn.MSELoss()

            def loss_on(idx: torch.Tensor) -> torch.Tensor:
                logits, lc_hat = net(x[idx])
                return bce(logits, q[idx]) + mse(lc_hat, lc[idx])

            fit_t, val_t = torch.from_numpy(fit_idx), torch.from_numpy(val_idx)
            gen = torch.Generator().manual_seed(self.seed)
            best, best_state, bad, epochs = np.inf, copy.deepcopy(net.state_dict()), 0, 0
            for epoch in range(self.max_epochs):
                epochs = epoch + 1
                net.train()
                order = fit_t[torch.randperm(len(fit_t), generator=gen)]
                for start in range(0, len(order), self.batch_size):
                    opt.zero_grad()
                    loss_on(order[start : start + self.batch_size]).backward()
                    opt.step()
                if n_val == 0:
                    continue
                net.eval()
                with torch.no_grad():
                    val_loss = float(loss_on(val_t))
                if val_loss < best - 1e-5:
                    best, best_state, bad = val_loss, copy.deepcopy(net.state_dict()), 0
                else:
                    bad += 1
                    if bad >= self.patience:
                        break
            if n_val:
                net.load_state_dict(best_state)
            net.eval()
        self.net = net

        # Residual variance of the log-cost head (for an unbiased exp), then the cost-model choice.
        _, lc_fit = self._predict_raw(x_all[fit_idx])
        resid = log_c[fit_idx] - (self._mu_lc + self._sd_lc * lc_fit)
        self._log_resid_var = resid.var(axis=0)
        self._mean_cost_fit = train.costs[fit_idx].mean(axis=0)
        self.val_report_ = {"epochs": epochs, "n_fit": len(fit_idx), "n_val": n_val, "val_loss": float(best)}
        chosen = self.cost_model
        if n_val:
            val = train.take(val_idx)
            q_val, lc_val = self._predict_raw(x_all[val_idx])
            c_head = self._cost_from_head(lc_val)
            c_mean = np.broadcast_to(self._mean_cost_fit, c_head.shape)
            for label, c_hat in (("mean", c_mean), ("head", c_head)):
                rewards = [
                    realised_reward(val, utility_argmax(q_val, c_hat, w, self.scale), w, self.scale)
                    for w in DEFAULT_W_GRID
                ]
                self.val_report_[f"val_reward_{label}"] = float(np.mean(rewards))
                err = normalised_cost(c_hat, self.scale) - normalised_cost(val.costs, self.scale)
                self.val_report_[f"val_ntilde_cost_mae_{label}"] = float(np.abs(err).mean())
            if chosen == "auto":
                better = self.val_report_["val_reward_head"] > self.val_report_["val_reward_mean"] + 1e-9
                chosen = "head" if better else "mean"
        elif chosen == "auto":
            chosen = "mean"
        self.cost_model_ = chosen
        self.val_report_["cost_model"] = chosen
        self._mean_cost = train.costs.mean(axis=0)  # all rows given, once the choice is made

    # ---- predict -------------------------------------------------------------------------------------
    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return ((x - self._mu_x) / self._sd_x).astype(np.float32)

    def _predict_raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            logits, lc = self.net(torch.from_numpy(self._standardise(x)))
        return torch.sigmoid(logits).numpy().astype(np.float64), lc.numpy().astype(np.float64)

    def _cost_from_head(self, lc_std: np.ndarray) -> np.ndarray:
        return np.exp(self._mu_lc + self._sd_lc * lc_std + 0.5 * self._log_resid_var)

    def predict(self, embeddings: np.ndarray | RoutingTable) -> tuple[np.ndarray, np.ndarray]:
        """(q_hat, c_hat), both (N, K): predicted scores and expected USD costs (embeddings or a table)."""
        if self.net is None:
            raise RuntimeError("OfflineMLPRouter.predict called before fit")
        q_hat, lc = self._predict_raw(_embeddings_of(embeddings, self.name))
        if self.cost_model_ == "head":
            return q_hat, self._cost_from_head(lc)
        return q_hat, np.broadcast_to(self._mean_cost, q_hat.shape).copy()

    def route(self, embeddings: np.ndarray, w_cost: float) -> np.ndarray:
        self._check_fitted(w_cost)
        q_hat, c_hat = self.predict(embeddings)
        return utility_argmax(q_hat, c_hat, w_cost, self.scale)


@register("knn")
class KNNRouter(Router):
    """Cosine kNN on embeddings: predicted score / cost = mean over the k nearest train rows."""

    name = "knn"

    def __init__(self, k: int = 20, chunk: int = 1024) -> None:
        super().__init__()
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k, self.chunk = k, chunk

    def fit(self, train: RoutingTable, scale: float | CostScale) -> None:
        self._remember(train, scale)
        self._emb = _unit(_require_embeddings(train, self.name))
        self._scores = np.asarray(train.scores, np.float64)
        self._costs = np.asarray(train.costs, np.float64)

    def predict(self, embeddings: np.ndarray | RoutingTable) -> tuple[np.ndarray, np.ndarray]:
        """(q_hat, c_hat), both (N, K): neighbour means of scores and costs (embeddings or a table)."""
        emb = _unit(_embeddings_of(embeddings, self.name))
        k = min(self.k, len(self._emb))
        q_hat = np.empty((len(emb), len(self.models)))
        c_hat = np.empty_like(q_hat)
        for start in range(0, len(emb), self.chunk):
            sims = emb[start : start + self.chunk] @ self._emb.T
            nn_idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            q_hat[start : start + len(sims)] = self._scores[nn_idx].mean(axis=1)
            c_hat[start : start + len(sims)] = self._costs[nn_idx].mean(axis=1)
        return q_hat, c_hat

    def route(self, embeddings: np.ndarray, w_cost: float) -> np.ndarray:
        self._check_fitted(w_cost)
        q_hat, c_hat = self.predict(embeddings)
        return utility_argmax(q_hat, c_hat, w_cost, self.scale)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
