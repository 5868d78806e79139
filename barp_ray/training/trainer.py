"""REINFORCE on Ray Train (V2): one TorchTrainer worker per GPU, or fractional-CPU workers without one.

Each worker reads its Ray Data shard into memory once and runs many policy-gradient steps on it, or, when
its share of the logs exceeds `worker_memory_budget_mb`, streams shuffled batches from it pass after pass
(`training/ingest.py`). The driver reads only the cost column (tau, schedule), one shard file at a time.
Rank 0 checkpoints every epoch; a rerun with the same storage path and name resumes, and `FailureConfig`
restarts a crashed worker group from the last checkpoint.
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from barp_ray.data.shards import iter_shard_columns, read_manifest, read_shards_ray
from barp_ray.data.table import RoutingTable
from barp_ray.objective import derive_tau
from barp_ray.policy.checkpoint import load_policy, save_policy
from barp_ray.policy.model import BarpPolicy
from barp_ray.training.config import TrainConfig
from barp_ray.training.early_stopping import EarlyStopping
from barp_ray.training.ingest import TRAIN_COLUMNS, StreamingPolicyData, choose_mode
from barp_ray.training.loop import PolicyData, ReinforceLearner, policy_spec, validation_metrics

log = logging.getLogger(__name__)

TRAIN_STATE_FILE = "train_state.pt"
RANK_STATE_FILE = "rng_rank{rank}.pt"  # each rank's sampling RNG state
#: Fields a resumed run may change (how it runs, not what it learns); any other change is refused.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "num_workers",
        "use_gpu",
        "cpus_per_worker",
        "max_failures",
        "storage_path",
        "inject_failure_at_epoch",
        "ingest",
        "worker_memory_budget_mb",
        "shuffle_buffer_rows",
    }
)


@dataclass
class TrainOutcome:
    """What a training run produced."""

    policy_dir: Path | str  # the exported best policy: a local folder, or the URI it was exported to
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

    from barp_ray.ray_compat import quiet_train_report_logs

    quiet_train_report_logs()  # the epoch line below replaces Ray's raw per-report dict
    quiet_data_execution_logs()
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

    train_shard = ray.train.get_dataset_shard("train")
    if loop_config["ingest"] == "stream":
        train_data = StreamingPolicyData(train_shard, cfg.shuffle_buffer_rows, device, seed=cfg.seed + 1000 * rank)
    else:
        train_data = PolicyData.from_table(_iterator_to_table(train_shard, models, encoder), device)
    val_data = PolicyData.from_table(_iterator_to_table(ray.train.get_dataset_shard("val"), models, encoder), device)

    policy = BarpPolicy(policy_spec(cfg, models, tau, encoder, loop_config["embedding_dim"])).to(device)
    model = ray.train.torch.prepare_model(policy)  # DDP when world > 1
    per_worker_batch = max(2, cfg.batch_size // world)
    learner = ReinforceLearner(model, cfg, tau, per_worker_batch, seed=cfg.seed + 1000 * rank)

    run_epochs(
        cfg,
        policy,
        learner,
        train_data,
        rank,
        world * per_worker_batch,
        lambda: validation_metrics(policy, val_data, cfg.val_grid_points),
        loop_config["started_at"],
        patience=cfg.patience,
    )


def run_epochs(
    cfg: TrainConfig,
    policy: BarpPolicy,
    learner,
    data,
    rank: int,
    global_batch: int,
    validate,
    started_at: float | None = None,
    select_metric: str | None = None,
    patience: int | None = None,
) -> None:
    """Resume from the latest checkpoint, then per epoch: `steps_per_epoch` learner steps, `validate()`,
    report + checkpoint; stop after `patience` epochs without a new best `select_metric` (default: the
    config's). `inject_failure_at_epoch` crashes the worker group once (FailureConfig tests). `started_at`
    (unix time, default now) is when the run began, for `seconds_to_first_step`."""
    started_at = started_at or time.time()
    start_epoch, restored, stop_state = restore_checkpoint(policy, learner, next(policy.parameters()).device, rank)
    # every rank validates the same (DDP-identical) policy on the same val split, so all stop together
    stopper = EarlyStopping.from_state(select_metric or cfg.select_metric, patience, stop_state)
    first_step_at: float | None = None
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.inject_failure_at_epoch == epoch and not restored:
            raise RuntimeError(f"injected worker failure at epoch {epoch} (inject_failure_at_epoch)")
        t0 = time.perf_counter()
        for _ in range(cfg.steps_per_epoch):
            stats = learner.step(data)
            first_step_at = first_step_at or time.time()
        seconds = time.perf_counter() - t0
        metrics = {
            "epoch": epoch,
            "step": learner.step_count,
            **stats,
            "train_samples_per_s": cfg.steps_per_epoch * global_batch / seconds,
            "resumed": restored,
            "reported_at": time.time(),  # wall clock: time to first epoch in benchmarks
            "ingest": "stream" if isinstance(data, StreamingPolicyData) else "memory",
            "seconds_to_first_step": round(first_step_at - started_at, 2),
            "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **validate(),
        }
        stopper.update(metrics)
        metrics["stopping_early"] = stopper.should_stop
        if rank == 0:
            print(epoch_line(metrics, cfg.epochs), flush=True)
        report_epoch(rank, policy, learner, epoch, metrics, cfg, stopper)
        if stopper.should_stop:
            if rank == 0 and epoch + 1 < cfg.epochs:
                print(f"early stop: no better {stopper.metric} for {stopper.patience} epochs", flush=True)
            break


def quiet_data_execution_logs() -> None:
    """No 'Starting execution of Dataset ... / Execution plan ...' lines from Ray Data for the (small,
    repeated) shard reads of a training run: the epoch lines are what a person follows."""
    import ray.data

    ray.data.DataContext.get_current().print_on_execution_start = False


def epoch_line(metrics: dict, epochs: int) -> str:
    """One readable progress line per epoch (what a person follows in the main job's output)."""
    reward = metrics.get("reward", metrics.get("logged_reward", float("nan")))
    val = (
        ("val AIQ", metrics["val_aiq"])
        if "val_aiq" in metrics
        else ("val OPE reward", metrics.get("val_ope_reward", float("nan")))
    )
    return (
        f"epoch {metrics['epoch'] + 1:>3}/{epochs}  mean reward {reward:+.4f}  {val[0]} {val[1]:.4f}  "
        f"{metrics.get('train_samples_per_s', 0.0):,.0f} samples/s"
    )


def restore_checkpoint(policy: BarpPolicy, learner, device, rank: int = 0) -> tuple[int, bool, dict | None]:
    """(first epoch to run, restored?, early-stopping state): resume policy, optimiser and this rank's RNG
    state from Ray Train's latest checkpoint. Tensors only (`weights_only=True`): a checkpoint cannot run
    code on load."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, False, None
    with checkpoint.as_directory() as ckpt_dir:
        ckpt = Path(ckpt_dir)
        state = torch.load(ckpt / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
        policy.load_state_dict(torch.load(ckpt / "policy.pt", map_location=device, weights_only=True))
        learner_state = dict(state["learner"])
        rank_file = ckpt / RANK_STATE_FILE.format(rank=rank)
        if rank_file.exists():
            learner_state["generator"] = torch.load(rank_file, map_location="cpu", weights_only=True)["generator"]
        elif rank != 0:  # the world size grew: a fresh stream, distinct per rank and epoch
            log.warning("rank %d: no saved RNG state in the checkpoint (world size changed); reseeding", rank)
            learner_state["generator"] = (
                torch.Generator().manual_seed(int(state["epoch"]) * 7919 + 1000 * rank + learner.cfg.seed).get_state()
            )
        learner.load_state_dict(learner_state)
    return state["epoch"] + 1, True, state.get("early_stopping")


def report_epoch(
    rank: int, policy: BarpPolicy, learner, epoch: int, metrics: dict, cfg, stopper: EarlyStopping | None = None
) -> None:
    """Report an epoch's metrics; rank 0 attaches a checkpoint (a loadable policy folder + learner state)."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        # every rank uploads its RNG state into the same checkpoint folder; rank 0 adds policy + optimiser
        torch.save({"generator": learner.state_dict()["generator"]}, Path(tmp) / RANK_STATE_FILE.format(rank=rank))
        if rank == 0:
            save_policy(policy, tmp, extra={"epoch": epoch, "metrics": metrics, "config": cfg.model_dump(mode="json")})
            state = {"epoch": epoch, "learner": learner.state_dict()}
            if stopper is not None:
                state["early_stopping"] = stopper.state_dict()
            torch.save(state, Path(tmp) / TRAIN_STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _read_split(cfg: TrainConfig, split: str, columns: list[str] | None = None):
    from ray.data.expressions import col

    ds = read_shards_ray(cfg.data, split=split)
    if cfg.exclude_tasks:
        ds = ds.filter(expr=col("task").not_in(list(cfg.exclude_tasks)))
    return ds.select_columns(columns) if columns else ds


def training_costs(cfg: TrainConfig) -> np.ndarray:
    """Costs (N, K) of the rows a run trains on (train split minus `exclude_tasks`), read one shard file at
    a time and only the columns needed: the driver never holds the embeddings or the whole table."""
    parts = [
        t.column("costs").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        for t in iter_shard_columns(cfg.data, ["costs"], split="train", exclude_tasks=cfg.exclude_tasks)
    ]
    k = len(read_manifest(cfg.data)["models"])
    return np.concatenate(parts).reshape(-1, k) if parts else np.zeros((0, k))


def resolve_tau(cfg: TrainConfig, train_costs: np.ndarray | None = None) -> float:
    """tau from the config, else derived from the training split's costs (see `derive_tau`)."""
    if cfg.tau is not None:
        return cfg.tau
    return derive_tau(training_costs(cfg) if train_costs is None else train_costs, cfg.tau_rule)


def check_resume(cfg: TrainConfig) -> None:
    """Refuse to resume run `cfg.name` under `cfg.storage_path` with a config that changes what it learns.

    The latest checkpoint's `policy.json` records the config it was trained with; a difference outside
    `RESUMABLE_CHANGES` (e.g. a new `data`) would silently train 0 steps and export the old policy.
    """
    from barp_ray import storage
    from barp_ray.policy.checkpoint import SPEC_FILE

    run_dir = storage.join(cfg.storage_path, cfg.name)
    specs = [p for p in storage.list_files(run_dir, suffix=SPEC_FILE) if "best_policy" not in p]
    if not specs:
        return
    latest = max(specs)  # checkpoint folders are named by time
    old = json.loads(storage.read_bytes(latest)).get("extra", {}).get("config") or {}
    new = cfg.model_dump(mode="json")
    changed = sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if changed:
        details = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
        raise ValueError(
            f"run {cfg.name!r} under {cfg.storage_path} exists and was trained with a different config ({details}); "
            f"resuming it would continue the old run. Start a new run with another --name, or delete {run_dir}"
        )


def build_trainer(cfg: TrainConfig, callbacks: list | None = None):
    """The TorchTrainer for a config (Tune drivers call this too, adding TuneReportCallback)."""
    from ray.train import DataConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    manifest = read_manifest(cfg.data)
    if not manifest.get("encoder"):
        raise ValueError(f"{cfg.data} has no embeddings yet: run `barp embed --data {cfg.data}` first")
    quiet_data_execution_logs()  # the driver's DataContext travels with the datasets to the split coordinator
    costs = training_costs(cfg)
    cfg = cfg.for_data(len(costs))  # the pass-based schedule, fixed in the driver for every worker
    check_resume(cfg)
    tau = resolve_tau(cfg, costs)
    ingest = choose_mode(
        cfg.ingest, {**manifest, "per_split": {"train": len(costs)}}, cfg.num_workers, cfg.worker_memory_budget_mb
    )
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
            "ingest": ingest,
            "embedding_dim": manifest["embedding_dim"],
            "started_at": time.time(),
        },
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=run_config(cfg, callbacks),
        datasets={
            "train": _read_split(cfg, "train", TRAIN_COLUMNS if ingest == "stream" else None),
            "val": _read_split(cfg, "val"),
        },
        dataset_config=DataConfig(datasets_to_split=["train"]),
    ), tau


def run_config(cfg: TrainConfig, callbacks: list | None = None, select_metric: str | None = None):
    """Storage, kept checkpoints (best 3 by `select_metric`, default the config's) and failure handling."""
    select_metric = select_metric or cfg.select_metric
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig

    return RunConfig(
        # the per-epoch line comes from `run_epochs`; Ray Train's INFO lines (each report's raw dict, worker
        # group start) are only written to its log files
        logging_config=LoggingConfig(log_level="WARNING"),
        name=cfg.name,
        storage_path=cfg.storage_path,  # absolute (or a URI) since the config was loaded
        checkpoint_config=CheckpointConfig(
            num_to_keep=3, checkpoint_score_attribute=select_metric, checkpoint_score_order="max"
        ),
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        callbacks=callbacks,
    )


def train_policy(cfg: TrainConfig, export_dir: str | Path | None = None) -> TrainOutcome:
    """Run training on the connected (or a new local) Ray cluster; export the best policy."""
    start = time.perf_counter()
    trainer, tau = build_trainer(cfg)
    return collect_outcome(trainer.fit(), tau, start, export_dir, select_metric=cfg.select_metric)


def export_policy(checkpoint_dir: str | Path, target: str | Path) -> str | Path:
    """Copy a (local) checkpoint's policy files to `target` (a folder or an s3:// / gs:// URI).

    An existing `target` is replaced only when it is empty or already holds a policy (`policy.json`): an
    export never deletes a folder of something else. A local target is replaced in one rename; a URI
    target gets each file in one PUT.
    """
    from barp_ray import storage
    from barp_ray.policy.checkpoint import SPEC_FILE

    target = storage.absolute(target)
    if _holds_something_else(target, SPEC_FILE):
        raise ValueError(
            f"export: {target} exists and is not a policy folder (no {SPEC_FILE}); refusing to "
            "replace it. Pass an empty or new folder, or a previous export"
        )
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch) / "policy"
        shutil.copytree(checkpoint_dir, tmp, ignore=shutil.ignore_patterns(TRAIN_STATE_FILE, "rng_rank*.pt"))
        load_policy(tmp)  # fail here, not later, if the export is unreadable
        if storage.is_uri(target):
            storage.upload_dir(tmp, target)
            return target
        staged = Path(target).with_name(f".{Path(target).name}.tmp-{time.time_ns()}")
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(tmp, staged)
        try:
            storage.replace_dir(staged, target)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    return Path(target)


def _holds_something_else(target: str, marker: str) -> bool:
    """Whether `target` exists with content but without `marker` (i.e. it is not ours to replace)."""
    from barp_ray import storage

    if storage.exists(storage.join(target, marker)):
        return False
    if storage.is_uri(target):
        return bool(storage.list_files(target))
    path = Path(target)
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def checkpoint_uri(checkpoint) -> str:
    """Where a Ray Train checkpoint lives, as a path or a URI that `load_policy` and `storage` accept."""
    scheme = checkpoint.filesystem.type_name
    return checkpoint.path if scheme == "local" else f"{'gs' if scheme == 'gcs' else scheme}://{checkpoint.path}"


def collect_outcome(
    result, tau: float, start: float, export_dir: str | Path | None = None, select_metric: str = "val_reward"
) -> TrainOutcome:
    """The best kept checkpoint (by `select_metric`) of a finished Ray Train run, exported as a policy.

    The export goes to `export_dir` (a folder or URI), by default `best_policy` beside the checkpoints.
    """
    if result.error:
        raise result.error
    kept = [dict(m) for _, m in (result.best_checkpoints or [])]
    history = sorted(kept, key=lambda m: m.get("epoch", -1))
    ranked = sorted(result.best_checkpoints or [], key=lambda cm: cm[1].get(select_metric, -np.inf))
    best_ckpt, best_metrics = ranked[-1] if ranked else (result.checkpoint, result.metrics)
    location = checkpoint_uri(best_ckpt)
    target = export_dir or location.rsplit("/", 1)[0] + "/best_policy"
    with best_ckpt.as_directory() as local_copy:
        policy_dir = export_policy(local_copy, target)
    return TrainOutcome(
        policy_dir=policy_dir,
        best_checkpoint=location,
        best_metrics=dict(best_metrics),
        latest_metrics=dict(result.metrics or {}),
        history=history,
        tau=tau,
        seconds=time.perf_counter() - start,
    )
