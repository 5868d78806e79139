"""Off-policy REINFORCE on Ray Train (V2), from the router's decision logs alone.

The driver reads the log into logged bandit rows (`read_source`), holds out `val_fraction` of the logged
prompts, and puts both in Ray's object store: each worker gets its disjoint share of the training rows (every
world-th row from its rank) and all held-out rows, without a Ray Data pipeline to start (the rows are in the
driver's memory already). Each worker loads its rows once and runs
importance-weighted policy-gradient steps (`OffPolicyLearner`); every epoch rank 0 checkpoints and reports
SNIPS estimates on the held-out logs (`val_ope_reward` selects the best checkpoint). Resume, failure
restarts and the exported `best_policy/` work as in the on-policy trainer.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from barp_ray.objective import CostScale
from barp_ray.offpolicy.config import OffPolicyTrainConfig, read_source
from barp_ray.offpolicy.learner import LoggedTensors, OffPolicyLearner, heldout_metrics
from barp_ray.offpolicy.logged import LoggedBandit
from barp_ray.policy.checkpoint import load_policy
from barp_ray.policy.model import BarpPolicy
from barp_ray.training.loop import policy_spec
from barp_ray.training.trainer import TrainOutcome, collect_outcome, run_config
from barp_ray.training.worker import run_epochs, worker_setup

log = logging.getLogger(__name__)

SELECT_METRIC = "val_ope_reward"


def offpolicy_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: load its logged rows once, then importance-weighted REINFORCE epochs."""
    import ray
    import ray.train.torch

    cfg = OffPolicyTrainConfig.model_validate(loop_config["train_config"])
    models, encoder = loop_config["models"], loop_config["encoder"]
    scale = CostScale(loop_config["tau"], loop_config.get("cost_floor"))  # the reward's cost scale
    rank, world, device = worker_setup(cfg)

    train = LoggedTensors.from_logged(ray.get(loop_config["train_parts"][rank]), device)
    val = LoggedTensors.from_logged(ray.get(loop_config["val_rows"]), device)
    spec = policy_spec(cfg, models, scale, encoder, train.embeddings.shape[1])
    policy = BarpPolicy(spec).to(device)
    if cfg.init_policy:
        policy.load_state_dict(load_policy(cfg.init_policy, device=device).state_dict())
    model = ray.train.torch.prepare_model(policy)
    per_worker_batch = max(2, cfg.batch_size // world)
    learner = OffPolicyLearner(model, cfg, scale, per_worker_batch, seed=cfg.seed + 1000 * rank)
    run_epochs(
        cfg,
        policy,
        learner,
        train,
        rank,
        world * per_worker_batch,
        lambda: heldout_metrics(learner.judged_policy, val, scale, cfg.val_grid_points),
        select_metric=SELECT_METRIC,
    )


def load_training_rows(cfg: OffPolicyTrainConfig) -> tuple[LoggedBandit, LoggedBandit, dict]:
    """(train rows, held-out rows, context): the logs read, checked and split by prompt."""
    models = encoder = None
    if cfg.init_policy:
        spec = load_policy(cfg.init_policy).spec
        models, encoder = list(spec.models), spec.encoder
    rows = read_source(cfg.source, models=models, encoder=encoder)
    tau = cfg.tau or rows.tau
    if tau is None:
        raise ValueError("tau: the log has no policy spec to take the cost scale from; set `tau` (USD)")
    floor = rows.cost_floor if rows.cost_floor and rows.cost_floor < tau else None
    scale = CostScale(float(tau), floor)  # the logging policy's scale (its floor kept under a `tau` override)
    if rows.encoder is None:
        raise ValueError("the log names no encoder: set `init_policy` (its spec names one)")
    if cfg.weighting == "dr":
        from barp_ray.offpolicy.reward_model import cross_fitted_predictions

        rows.predicted_scores, rows.predicted_costs = cross_fitted_predictions(rows, seed=cfg.seed)
    train, val = rows.split_by_prompt(cfg.val_fraction, seed=cfg.seed)
    if len(val) == 0 or len(train) == 0:
        raise ValueError(f"val_fraction={cfg.val_fraction} leaves an empty split of {len(rows)} logged rows")
    context = {
        "models": rows.models,
        "encoder": rows.encoder,
        "tau": scale.tau,
        "cost_floor": scale.floor,
        "report": rows.report.to_dict(),
        "train_rows": len(train),
        "val_rows": len(val),
    }
    return train, val, context


def build_offpolicy_trainer(cfg: OffPolicyTrainConfig, callbacks: list | None = None):
    """(TorchTrainer, context) for an off-policy run; context has models, tau and the log read report."""
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    train, val, context = load_training_rows(cfg)
    if len(train) < cfg.num_workers:
        raise ValueError(f"{len(train)} logged training rows for {cfg.num_workers} workers: use fewer workers")
    # each worker's share, and the held-out rows every worker scores, in the object store (refs in the config)
    train_parts = [ray.put(train.take(np.arange(rank, len(train), cfg.num_workers))) for rank in range(cfg.num_workers)]
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    trainer = TorchTrainer(
        offpolicy_loop_per_worker,
        train_loop_config={
            "train_config": cfg.model_dump(),
            "models": context["models"],
            "encoder": context["encoder"],
            "tau": context["tau"],
            "cost_floor": context["cost_floor"],
            "train_parts": train_parts,
            "val_rows": ray.put(val),
        },
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=run_config(cfg, callbacks, select_metric=SELECT_METRIC),
    )
    return trainer, context


def train_offpolicy(cfg: OffPolicyTrainConfig, export_dir: str | Path | None = None) -> tuple[TrainOutcome, dict]:
    """Train a policy from decision logs on the connected (or a new local) Ray cluster; export the best."""
    start = time.perf_counter()
    trainer, context = build_offpolicy_trainer(cfg)
    log.info("off-policy training on %d logged rows (%d held out)", context["train_rows"], context["val_rows"])
    outcome = collect_outcome(
        trainer.fit(), CostScale(context["tau"], context["cost_floor"]), start, export_dir, select_metric=SELECT_METRIC
    )
    return outcome, context
