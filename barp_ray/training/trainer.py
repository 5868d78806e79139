"""REINFORCE on Ray Train (V2): one TorchTrainer worker per GPU, or fractional-CPU workers without one.

The driver side: the TorchTrainer (what each worker runs is `training/worker.py`), its run config, and the
export of the best checkpoint. Each worker reads its Ray Data shard into memory once, or, when its share of
the logs exceeds `worker_memory_budget_mb`, streams shuffled batches from it (`training/ingest.py`). The
driver reads only the cost column (tau, schedule), one shard file at a time. Rank 0 checkpoints every epoch;
a rerun with the same storage path and name resumes, and `FailureConfig` restarts a crashed worker group
from the last checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from barp_ray.data.shards import iter_shard_columns, read_manifest, read_shards_ray
from barp_ray.objective import CostScale
from barp_ray.policy.checkpoint import load_policy
from barp_ray.training.config import TrainConfig
from barp_ray.training.ingest import TRAIN_COLUMNS, choose_mode
from barp_ray.training.worker import TRAIN_STATE_FILE, quiet_data_execution_logs, train_loop_per_worker

log = logging.getLogger(__name__)

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
    scale: CostScale  # the reward's cost scale the policy was trained with
    seconds: float

    @property
    def tau(self) -> float:
        return self.scale.tau


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


def resolve_cost_scale(cfg: TrainConfig, train_costs: np.ndarray | None = None) -> CostScale:
    """The run's cost scale: as configured, the rest derived from the training split's costs."""
    if cfg.tau is not None and (cfg.cost_scale == "linear" or cfg.cost_floor is not None):
        return cfg.resolve_cost_scale(None)
    return cfg.resolve_cost_scale(training_costs(cfg) if train_costs is None else train_costs)


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

    if cfg.pooling != "mean" or cfg.encoder_finetune != "none":
        raise ValueError(
            f"pooling: {cfg.pooling} / encoder_finetune: {cfg.encoder_finetune} need per-token inputs, which "
            "the training shards do not hold (they store pooled embeddings): the Ray Train job trains with "
            "pooling: mean and encoder_finetune: none; run those levers in process (benchmarks/barp_defaults.py "
            "--token-states, benchmarks/lora_finetune.py)"
        )
    manifest = read_manifest(cfg.data)
    if not manifest.get("encoder"):
        raise ValueError(f"{cfg.data} has no embeddings yet: run `barp embed --data {cfg.data}` first")
    quiet_data_execution_logs()  # the driver's DataContext travels with the datasets to the split coordinator
    costs = training_costs(cfg)
    cfg = cfg.for_data(len(costs))  # the pass-based schedule, fixed in the driver for every worker
    check_resume(cfg)
    scale = resolve_cost_scale(cfg, costs)
    ingest = choose_mode(
        cfg.ingest, {**manifest, "per_split": {"train": len(costs)}}, cfg.num_workers, cfg.worker_memory_budget_mb
    )
    # Streamed ingestion pulls the train split through Ray Data (`get_dataset_shard`); in memory, each worker
    # reads its share with pyarrow (`worker.read_train_table`). Every worker reads the val split itself.
    data_kwargs = {}
    if ingest == "stream":
        data_kwargs = {
            "datasets": {"train": _read_split(cfg, "train", TRAIN_COLUMNS)},
            "dataset_config": DataConfig(datasets_to_split=["train"]),
        }
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train_config": cfg.model_dump(),
            "models": manifest["models"],
            "encoder": manifest["encoder"],
            "tau": scale.tau,
            "cost_floor": scale.floor,
            "ingest": ingest,
            "embedding_dim": manifest["embedding_dim"],
            "started_at": time.time(),
        },
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=run_config(cfg, callbacks),
        **data_kwargs,
    ), scale


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
    trainer, scale = build_trainer(cfg)
    return collect_outcome(trainer.fit(), scale, start, export_dir, select_metric=cfg.select_metric)


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
    result, scale: CostScale, start: float, export_dir: str | Path | None = None, select_metric: str = "val_reward"
) -> TrainOutcome:
    """The best kept checkpoint (by `select_metric`) of a finished Ray Train run, exported as a policy.

    The export goes to `export_dir` (a folder or URI), by default `best_policy` beside the checkpoints.
    """
    if result.error:
        raise result.error
    kept = [dict(m) for _, m in (result.best_checkpoints or [])]
    history = sorted(kept, key=lambda m: m.get("epoch", -1))
    # the best by `select_metric`; on a tie the earlier epoch (as in `EarlyStopping`: a tie is not better)
    ranked = sorted(
        result.best_checkpoints or [], key=lambda cm: (cm[1].get(select_metric, -np.inf), -cm[1].get("epoch", 0))
    )
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
        scale=scale,
        seconds=time.perf_counter() - start,
    )
