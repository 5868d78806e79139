"""What each Ray Train worker runs: read its shard (in memory or streamed), REINFORCE epochs, per-epoch
validation, early stopping, and checkpoints it can resume from (`run_epochs`, shared with off-policy training).
The driver side (TorchTrainer, run config, export) is `training/trainer.py`."""

from __future__ import annotations

import logging
import resource
import tempfile
import time
from pathlib import Path

import torch

from barp_ray.data.shards import read_split_columns
from barp_ray.data.table import RoutingTable
from barp_ray.objective import CostScale
from barp_ray.policy.checkpoint import save_policy
from barp_ray.policy.model import BarpPolicy
from barp_ray.training.config import TrainConfig
from barp_ray.training.early_stopping import EarlyStopping
from barp_ray.training.ingest import StreamingPolicyData
from barp_ray.training.loop import PolicyData, ReinforceLearner, policy_spec, validation_metrics

log = logging.getLogger(__name__)

TRAIN_STATE_FILE = "train_state.pt"
RANK_STATE_FILE = "rng_rank{rank}.pt"  # each rank's sampling RNG state


def process_memory_mb() -> dict[str, float]:
    """This process's memory (MiB): `peak_rss` (all resident pages, incl. shared object-store pages the
    process has touched), and on Linux the current `rss_anon` (private heap: what the process itself holds)
    and `rss_shmem` (mapped shared memory, i.e. Ray's object store, owned by the node, not the process)."""
    out = {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux
        return out
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssShmem"):
            out[key.replace("Rss", "rss_").lower()] = int(value.split()[0]) / 1024
    return out


#: The columns a worker's in-memory table needs (`RoutingTable.from_columns`, the canonical row order, the
#: validation metrics).
TABLE_COLUMNS = ["prompt_id", "prompt", "task", "scores", "costs", "embedding"]


def read_train_table(cfg: TrainConfig, models: list[str], encoder: str | None, rank: int, world: int) -> RoutingTable:
    """This worker's share of the train split (minus `exclude_tasks`) for in-memory ingestion: every
    `world`-th row from position `rank` on, read straight from the shard files with pyarrow (local or a URI).
    A Ray Data split of logs that fit in memory costs 10-25 s of start-up per run on a small machine (actors,
    read tasks, new worker processes); streamed ingestion, for logs that do not fit, keeps Ray Data."""
    columns = read_split_columns(
        cfg.data, TABLE_COLUMNS, split="train", exclude_tasks=cfg.exclude_tasks, part=(rank, world)
    )
    if not len(columns["prompt_id"]):
        raise ValueError(f"{cfg.data}: worker {rank} of {world} got no train rows: use fewer workers or more data")
    return RoutingTable.from_columns(columns, models, encoder)


def read_val_table(cfg: TrainConfig, models: list[str], encoder: str | None) -> RoutingTable:
    """The validation split (minus `exclude_tasks`; a seeded subset of `val_max_rows` rows when larger), which
    every worker holds: read straight from the shard files with pyarrow (local or a URI), since a Ray Data
    pipeline for a few thousand rows costs seconds of start-up per worker and run. The row order does not
    matter: `PolicyData` sorts it canonically."""
    columns = read_split_columns(
        cfg.data, TABLE_COLUMNS, split="val", exclude_tasks=cfg.exclude_tasks, max_rows=cfg.val_max_rows, seed=cfg.seed
    )
    if not len(columns["prompt_id"]):
        raise ValueError(f"{cfg.data}: the val split has no rows (after exclude_tasks): nothing to validate on")
    return RoutingTable.from_columns(columns, models, encoder)


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
    models, encoder = loop_config["models"], loop_config["encoder"]
    scale = CostScale(loop_config["tau"], loop_config.get("cost_floor"))
    rank, world, device = worker_setup(cfg)

    if loop_config["ingest"] == "stream":
        train_shard = ray.train.get_dataset_shard("train")
        train_data = StreamingPolicyData(train_shard, cfg.shuffle_buffer_rows, device, seed=cfg.seed + 1000 * rank)
    else:
        train_data = PolicyData.from_table(read_train_table(cfg, models, encoder, rank, world), device)
    val_data = PolicyData.from_table(read_val_table(cfg, models, encoder), device)

    policy = BarpPolicy(policy_spec(cfg, models, scale, encoder, loop_config["embedding_dim"])).to(device)
    model = ray.train.torch.prepare_model(policy)  # DDP when world > 1
    per_worker_batch = max(2, cfg.batch_size // world)
    learner = ReinforceLearner(model, cfg, scale, per_worker_batch, seed=cfg.seed + 1000 * rank)

    run_epochs(
        cfg,
        policy,
        learner,
        train_data,
        rank,
        world * per_worker_batch,
        lambda: validation_metrics(learner.judged_policy, val_data, cfg.val_grid_points),
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
            **{f"worker_{name}_mb": round(mb, 1) for name, mb in process_memory_mb().items()},
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
        live = state.get("live_policy")  # saved when the exported policy is the weight average
        if live is None:
            live = torch.load(ckpt / "policy.pt", map_location=device, weights_only=True)
        policy.load_state_dict(live)
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
            # the exported policy is what was validated (the weight average with ema_epochs); the live weights
            # travel in the train state, for resume
            exported = learner.judged_policy
            extra = {"epoch": epoch, "metrics": metrics, "config": cfg.model_dump(mode="json")}
            save_policy(exported, tmp, extra=extra)
            state = {"epoch": epoch, "learner": learner.state_dict()}
            if exported is not policy:
                state["live_policy"] = policy.state_dict()
            if stopper is not None:
                state["early_stopping"] = stopper.state_dict()
            torch.save(state, Path(tmp) / TRAIN_STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
