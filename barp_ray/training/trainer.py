"""REINFORCE on Ray Train (V2): one TorchTrainer worker per GPU, or fractional-CPU workers without one.

Each worker reads its Ray Data shard into memory once, then runs many policy-gradient steps on it
(streaming rows again every step would be far slower than the step itself). Rank 0 checkpoints every
epoch; a rerun with the same storage path and name resumes, and `FailureConfig` restarts a crashed worker
group from the last checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from barp_ray.data.shards import read_manifest, read_shards, read_shards_ray
from barp_ray.data.table import RoutingTable
from barp_ray.policy.checkpoint import load_policy, save_policy
from barp_ray.policy.model import BarpPolicy
from barp_ray.training.config import TrainConfig
from barp_ray.training.loop import PolicyData, ReinforceLearner, policy_spec, validation_metrics
from barp_ray.training.reward import derive_tau

log = logging.getLogger(__name__)

TRAIN_STATE_FILE = "train_state.pt"
SELECT_METRIC = "val_aiq"


@dataclass
class TrainOutcome:
    """What a training run produced."""

    policy_dir: Path | None  # local copy of the best policy (None when storage is remote)
    best_checkpoint: str  # path or URI of the best checkpoint (itself a loadable policy folder)
    best_metrics: dict
    latest_metrics: dict  # the last epoch's report
    history: list[dict]  # metrics of the kept checkpoints, by epoch
    tau: float
    seconds: float


def shard_columns(iterator) -> dict[str, np.ndarray]:
    """Materialise this worker's Ray Data shard (read once) as numpy columns."""
    parts: dict[str, list] = {}
    for batch in iterator.iter_batches(batch_size=4096, batch_format="numpy"):
        for name, values in batch.items():
            parts.setdefault(name, []).append(values)
    if not parts:
        raise ValueError("this worker's dataset shard is empty: use fewer workers or more data")
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def _iterator_to_table(iterator, models: list[str], encoder: str | None) -> RoutingTable:
    return RoutingTable.from_columns(shard_columns(iterator), models, encoder)


def worker_setup(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this Ray Train worker; seeds torch (identical initial weights on every
    rank) and sets its CPU threads."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    return ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: load the shard once, then REINFORCE epochs with per-epoch checkpoints."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(loop_config["train_config"])
    models, encoder, tau = loop_config["models"], loop_config["encoder"], loop_config["tau"]
    rank, world, device = worker_setup(cfg)

    train_table = _iterator_to_table(ray.train.get_dataset_shard("train"), models, encoder)
    val_table = _iterator_to_table(ray.train.get_dataset_shard("val"), models, encoder)
    train_data = PolicyData.from_table(train_table, device)
    val_data = PolicyData.from_table(val_table, device)

    policy = BarpPolicy(policy_spec(cfg, models, tau, encoder, train_table.embeddings.shape[1])).to(device)
    model = ray.train.torch.prepare_model(policy)  # DDP when world > 1
    per_worker_batch = max(2, cfg.batch_size // world)
    learner = ReinforceLearner(model, cfg, tau, per_worker_batch, seed=cfg.seed + 1000 * rank)

    run_epochs(cfg, policy, learner, train_data, rank, world * per_worker_batch,
               lambda: validation_metrics(policy, val_data, cfg.val_grid_points))


def run_epochs(cfg: TrainConfig, policy: BarpPolicy, learner, data, rank: int, global_batch: int,
               validate) -> None:
    """Resume from the latest checkpoint, then per epoch: `steps_per_epoch` learner steps, `validate()`,
    report + checkpoint. `inject_failure_at_epoch` crashes the worker group once (FailureConfig tests)."""
    start_epoch, restored = restore_checkpoint(policy, learner, next(policy.parameters()).device)
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.inject_failure_at_epoch == epoch and not restored:
            raise RuntimeError(f"injected worker failure at epoch {epoch} (inject_failure_at_epoch)")
        t0 = time.perf_counter()
        for _ in range(cfg.steps_per_epoch):
            stats = learner.step(data)
        seconds = time.perf_counter() - t0
        metrics = {"epoch": epoch, "step": learner.step_count, **stats,
                   "train_samples_per_s": cfg.steps_per_epoch * global_batch / seconds, "resumed": restored,
                   **validate()}
        report_epoch(rank, policy, learner, epoch, metrics, cfg)


def restore_checkpoint(policy: BarpPolicy, learner, device) -> tuple[int, bool]:
    """(first epoch to run, restored?): resume policy and learner state from Ray Train's latest checkpoint."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, False
    with checkpoint.as_directory() as ckpt_dir:
        state = torch.load(Path(ckpt_dir) / TRAIN_STATE_FILE, map_location=device, weights_only=False)
        policy.load_state_dict(torch.load(Path(ckpt_dir) / "policy.pt", map_location=device))
        learner.load_state_dict(state["learner"])
    return state["epoch"] + 1, True


def report_epoch(rank: int, policy: BarpPolicy, learner, epoch: int, metrics: dict, cfg) -> None:
    """Report an epoch's metrics; rank 0 attaches a checkpoint (a loadable policy folder + learner state)."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        report_checkpoint = None
        if rank == 0:
            save_policy(policy, tmp, extra={"epoch": epoch, "metrics": metrics, "config": cfg.model_dump()})
            torch.save({"epoch": epoch, "learner": learner.state_dict()}, Path(tmp) / TRAIN_STATE_FILE)
            report_checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=report_checkpoint)


def _read_split(cfg: TrainConfig, split: str):
    from ray.data.expressions import col

    ds = read_shards_ray(cfg.data, split=split)
    if cfg.exclude_tasks:
        ds = ds.filter(expr=col("task").not_in(list(cfg.exclude_tasks)))
    return ds


def resolve_tau(cfg: TrainConfig) -> float:
    """tau from the config, else derived from the training split's costs (see `derive_tau`)."""
    if cfg.tau is not None:
        return cfg.tau
    table = read_shards(cfg.data).where_split("train")
    if cfg.exclude_tasks:
        table = table.where_tasks(cfg.exclude_tasks, keep=False)
    return derive_tau(table.costs, cfg.tau_rule)


def build_trainer(cfg: TrainConfig, callbacks: list | None = None):
    """The TorchTrainer for a config (Tune drivers call this too, adding TuneReportCallback)."""
    from ray.train import DataConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    manifest = read_manifest(cfg.data)
    if not manifest.get("encoder"):
        raise ValueError(f"{cfg.data} has no embeddings yet: run `barp embed --data {cfg.data}` first")
    tau = resolve_tau(cfg)
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train_config": cfg.model_dump(),
            "models": manifest["models"],
            "encoder": manifest["encoder"],
            "tau": tau,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=run_config(cfg, callbacks),
        datasets={"train": _read_split(cfg, "train"), "val": _read_split(cfg, "val")},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    ), tau


def run_config(cfg: TrainConfig, callbacks: list | None = None, select_metric: str = SELECT_METRIC):
    """Storage, kept checkpoints (best 3 by `select_metric`) and failure handling of a training run."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(
        name=cfg.name,
        storage_path=_absolute_storage(cfg.storage_path),
        checkpoint_config=CheckpointConfig(
            num_to_keep=3, checkpoint_score_attribute=select_metric, checkpoint_score_order="max"
        ),
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        callbacks=callbacks,
    )


def _absolute_storage(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def train_policy(cfg: TrainConfig, export_dir: str | Path | None = None) -> TrainOutcome:
    """Run training on the connected (or a new local) Ray cluster; export the best policy."""
    start = time.perf_counter()
    trainer, tau = build_trainer(cfg)
    return collect_outcome(trainer.fit(), tau, start, export_dir)


def collect_outcome(result, tau: float, start: float, export_dir: str | Path | None = None,
                    select_metric: str = SELECT_METRIC) -> TrainOutcome:
    """The best kept checkpoint (by `select_metric`) of a finished Ray Train run, exported as a policy."""
    if result.error:
        raise result.error
    kept = [dict(m) for _, m in (result.best_checkpoints or [])]
    history = sorted(kept, key=lambda m: m.get("epoch", -1))
    ranked = sorted(result.best_checkpoints or [], key=lambda cm: cm[1].get(select_metric, -np.inf))
    best_ckpt, best_metrics = ranked[-1] if ranked else (result.checkpoint, result.metrics)
    policy_dir = None
    if "://" not in best_ckpt.path:
        policy_dir = Path(export_dir) if export_dir else Path(best_ckpt.path).parents[0] / "best_policy"
        if policy_dir.exists():
            shutil.rmtree(policy_dir)
        shutil.copytree(best_ckpt.path, policy_dir, ignore=shutil.ignore_patterns(TRAIN_STATE_FILE))
        load_policy(policy_dir)  # fail here, not later, if the export is unreadable
    return TrainOutcome(
        policy_dir=policy_dir,
        best_checkpoint=best_ckpt.path,
        best_metrics=dict(best_metrics),
        latest_metrics=dict(result.metrics or {}),
        history=history,
        tau=tau,
        seconds=time.perf_counter() - start,
    )
