"""BaRP training as one in-process loop (no Ray): experiments, pools, learning curves, tests.

Exactly the learner Ray Train workers run (`ReinforceLearner`), the same pass-based schedule
(`TrainConfig.for_data`), validation after every epoch, the best epoch kept by `select_metric` and early
stopping after `patience` epochs without a new best. Deterministic on CPU: one torch thread, deterministic
kernels, canonical row order, every random draw from generators seeded by `cfg.seed`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from barp_ray.data.table import RoutingTable
from barp_ray.objective import CostScale, as_cost_scale
from barp_ray.policy.model import BarpPolicy
from barp_ray.training.config import TrainConfig
from barp_ray.training.early_stopping import EarlyStopping
from barp_ray.training.loop import PolicyData, ReinforceLearner, policy_spec, set_deterministic, validation_metrics


@dataclass
class BareOutcome:
    """The best policy (by validation) of an in-process run, and the run's per-epoch history."""

    policy: nn.Module  # a BarpPolicy, or an EncoderPolicy (encoder_finetune: lora)
    best: dict
    history: list[dict] = field(default_factory=list)
    scale: CostScale | None = None
    config: TrainConfig | None = None
    seconds: float = 0.0

    @property
    def tau(self) -> float:
        """The cost scale's tau (USD)."""
        return self.scale.tau if self.scale else 0.0

    @property
    def interactions(self) -> int:
        """Logged interactions the best policy was trained on."""
        return int(self.best.get("interactions", 0))


def seeded_learner(
    cfg: TrainConfig, table: RoutingTable, scale: CostScale, pad_id: int | None = None, device: str = "cpu"
) -> tuple[nn.Module, ReinforceLearner]:
    """A fresh policy for `table`'s models and inputs, initialised from `cfg.seed` (without disturbing the
    global torch RNG), on `device`, and its REINFORCE learner. Inputs: embeddings (N, D), token states
    (N, T, D) for `pooling: attention`, or token ids (N, T) padded with `pad_id` for `encoder_finetune: lora`."""
    encoder, models = table.encoder or "", list(table.models)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.encoder_finetune == "lora":
            if pad_id is None or table.embeddings.ndim != 2 or not np.issubdtype(table.embeddings.dtype, np.integer):
                raise ValueError("encoder_finetune: lora trains on token ids: pass a token_id_table and its pad_id")
            from barp_ray.embeddings.encoder import EncoderSpec, native_embedding_dim
            from barp_ray.policy.lora import EncoderPolicy

            width = native_embedding_dim(EncoderSpec.parse(encoder).name)  # the encoder runs inside the policy
            head = BarpPolicy(policy_spec(cfg, models, scale, encoder, width))
            policy: nn.Module = EncoderPolicy(encoder, head, pad_id, rank=cfg.lora_rank)
        else:
            policy = BarpPolicy(policy_spec(cfg, models, scale, encoder, table.embeddings.shape[-1]))
    policy = policy.to(device)
    return policy, ReinforceLearner(policy, cfg, scale, cfg.batch_size, seed=cfg.seed)


def train_in_process(
    cfg: TrainConfig,
    train: RoutingTable,
    val: RoutingTable,
    scale: float | CostScale | None = None,
    num_threads: int = 1,
    max_interactions: int | None = None,
    pad_id: int | None = None,
    device: str = "cpu",
) -> BareOutcome:
    """Train BaRP on `train` with bandit feedback only, select on `val`; returns the best policy.

    `scale` (the reward's cost scale; a number is a linear tau) defaults to the config's, derived from
    `train.costs` where the config leaves it open (`TrainConfig.resolve_cost_scale`). `max_interactions`
    caps the logged interactions used (learning curves; no refit then); the schedule is still the one `cfg`
    asks for. With `cfg.ema_epochs` the averaged weights are validated and kept. With `cfg.refit` the
    returned policy is `refit_in_process` on train + val for the selected number of epochs (`best` stays the
    selection run's validation metrics). `pad_id`: the padding id of a token-id table (`encoder_finetune:
    lora`); `device`: where the policy and the data live (a GPU for the LoRA lever).
    """
    start = time.perf_counter()
    set_deterministic(num_threads)
    scale = cfg.resolve_cost_scale(train.costs) if scale is None else as_cost_scale(scale)
    given, cfg = cfg, cfg.for_data(len(train))
    train_data, val_data = PolicyData.from_table(train, device), PolicyData.from_table(val, device)
    policy, learner = seeded_learner(cfg, train, scale, pad_id, device)
    per_step = cfg.interactions_per_step()
    history: list[dict] = []
    best: dict = {}
    best_state = copy.deepcopy(policy.state_dict())
    stopper = EarlyStopping(cfg.select_metric, cfg.patience)
    for epoch in range(cfg.epochs):
        stats: dict = {}
        policy.train()
        for _ in range(cfg.steps_per_epoch):
            if max_interactions is not None and learner.step_count * per_step >= max_interactions:
                break
            stats = learner.step(train_data)
        metrics = {
            "epoch": epoch,
            "step": learner.step_count,
            "interactions": learner.step_count * per_step,
            "passes": learner.step_count * per_step / len(train),
            **stats,
            **validation_metrics(learner.judged_policy, val_data, cfg.val_grid_points),
        }
        history.append(metrics)
        if stopper.update(metrics) or not best:
            best, best_state = metrics, copy.deepcopy(learner.judged_policy.state_dict())
        out_of_data = max_interactions is not None and learner.step_count * per_step >= max_interactions
        if out_of_data or stopper.should_stop:
            break
    policy.load_state_dict(best_state)
    policy.eval()
    if cfg.refit and max_interactions is None:
        both = RoutingTable.concat([train, val])
        policy = refit_in_process(given, both, int(best["epoch"]) + 1, scale, num_threads, pad_id, device)
    return BareOutcome(
        policy=policy, best=best, history=history, scale=scale, config=cfg, seconds=time.perf_counter() - start
    )


def refit_in_process(
    cfg: TrainConfig,
    table: RoutingTable,
    epochs: int,
    scale: CostScale,
    num_threads: int = 1,
    pad_id: int | None = None,
    device: str = "cpu",
) -> nn.Module:
    """Train a fresh policy on `table` (e.g. train + val) for exactly `epochs` epochs of `cfg`'s schedule
    (`for_data(len(table))`: the same passes per epoch, lr and entropy schedule) and return it, unselected
    (the averaged weights when `cfg.ema_epochs` is set).

    With `epochs` = a selected run's best epoch + 1 this replays that run's schedule up to its best point on
    more data: the refit lever (benchmarks/refit.py), which needs no held-out data of its own."""
    set_deterministic(num_threads)
    cfg = cfg.for_data(len(table))
    data = PolicyData.from_table(table, device)
    policy, learner = seeded_learner(cfg, table, scale, pad_id, device)
    policy.train()
    for _ in range(min(epochs, cfg.epochs) * cfg.steps_per_epoch):
        learner.step(data)
    return learner.judged_policy.eval()
