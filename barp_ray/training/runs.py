"""Many small training runs (seeds x leave-one-task-out folds) at once, in one Ray job, without paying a
Ray Train start per run.

Each run is the in-process BaRP loop (`training.bare.train_in_process`: the learner Ray Train workers run,
with the same schedule, validation and best-epoch selection), executed as one Ray task with a fraction of
the cluster. The table is read once by the driver and put in the object store once; runs start in about a
second each and run concurrently. The driver exports every run's best policy.

    runs = [RunSpec(seed=s) for s in range(5)] + [RunSpec(seed=0, held_out_task=t) for t in tasks]
    results = train_runs(cfg, runs, export_root=Path("runs/demo/runs"))
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from barp_ray.data.table import RoutingTable
from barp_ray.training.config import TrainConfig


@dataclass(frozen=True)
class RunSpec:
    """One run: a seed, and optionally the task held out (leave-one-task-out fold)."""

    seed: int
    held_out_task: str | None = None

    @property
    def name(self) -> str:
        return f"seed{self.seed}" + (f"-loto-{self.held_out_task}" if self.held_out_task else "")


@dataclass
class RunResult:
    """A finished run: its best validation metrics, history, tau, wall time and exported policy."""

    spec: RunSpec
    best: dict
    history: list[dict] = field(default_factory=list)
    tau: float = 0.0
    seconds: float = 0.0
    policy_dir: Path | None = None
    policy: object | None = None  # the BarpPolicy (best epoch), also exported to policy_dir


def grid(seeds: Sequence[int], held_out_tasks: Sequence[str | None] = (None,)) -> list[RunSpec]:
    """Every (seed, fold) pair; `None` in `held_out_tasks` is the all-tasks run."""
    return [RunSpec(seed=s, held_out_task=t) for t in held_out_tasks for s in seeds]


def fold_tables(
    table: RoutingTable, spec: RunSpec, val_fraction: float, split_seed: int
) -> tuple[RoutingTable, RoutingTable]:
    """(train, val) of a run: the table's own splits, or the leave-one-task-out fold of `data.splits`."""
    if spec.held_out_task is None:
        return table.where_split("train"), table.where_split("val")
    from barp_ray.data.splits import loto_folds

    folds = {f.held_out_task: f for f in loto_folds(table, val_fraction, split_seed)}
    if spec.held_out_task not in folds:
        raise ValueError(f"held_out_task {spec.held_out_task!r} is not a task of the data: {sorted(folds)}")
    fold = folds[spec.held_out_task]
    return fold.train, fold.val


def _run_one(
    cfg_dict: dict, spec: RunSpec, table: RoutingTable, val_fraction: float, split_seed: int, num_threads: int
) -> dict:
    """Ray task body: one in-process run; returns the best policy's state and its metrics."""
    from barp_ray.training.bare import train_in_process

    cfg = TrainConfig.model_validate({**cfg_dict, "seed": spec.seed})
    train, val = fold_tables(table, spec, val_fraction, split_seed)
    outcome = train_in_process(cfg, train, val, num_threads=num_threads)
    return {
        "policy": outcome.policy,
        "best": outcome.best,
        "history": outcome.history,
        "tau": outcome.tau,
        "seconds": outcome.seconds,
    }


def train_runs(
    cfg: TrainConfig,
    runs: Sequence[RunSpec],
    table: RoutingTable | None = None,
    export_root: str | Path | None = None,
    cpus_per_run: float = 1.0,
    num_threads: int = 1,
    echo: bool = True,
) -> list[RunResult]:
    """Train every run of `runs` concurrently as Ray tasks on the connected cluster; results in `runs` order.

    `table` defaults to `read_shards(cfg.data)` (read once here). LOTO folds re-carve val from the other
    tasks with the prepared data's own `val_fraction` and seed (`data.splits.loto_folds`). With
    `export_root`, run r's best policy is saved to `<export_root>/<r.name>/policy`. `echo` prints one line
    per finished run.
    """
    import ray

    from barp_ray.data.shards import read_manifest, read_shards
    from barp_ray.policy.checkpoint import save_policy

    if not runs:
        return []
    if len(set(runs)) != len(runs):
        raise ValueError("runs: each (seed, held_out_task) pair may appear once")
    prepare = read_manifest(cfg.data).get("prepare", {}) if table is None else {}
    table = table if table is not None else read_shards(cfg.data)
    if table.embeddings is None:
        raise ValueError(f"{cfg.data} has no embeddings yet: run `barp embed --data {cfg.data}` first")
    val_fraction, split_seed = float(prepare.get("val_fraction", 0.15)), int(prepare.get("seed", 0))
    task = ray.remote(num_cpus=cpus_per_run)(_run_one)
    table_ref = ray.put(table)
    cfg_dict = cfg.model_dump(mode="json")
    start = time.perf_counter()
    pending = {
        task.remote(cfg_dict, spec, table_ref, val_fraction, split_seed, num_threads): i for i, spec in enumerate(runs)
    }
    results: list[RunResult | None] = [None] * len(runs)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(done[0])
        out = ray.get(done[0])
        spec = runs[i]
        policy_dir = None
        if export_root is not None:
            policy_dir = save_policy(
                out["policy"],
                Path(export_root) / spec.name / "policy",
                extra={"run": spec.name, "metrics": out["best"], "tau": out["tau"]},
            )
        results[i] = RunResult(
            spec=spec,
            best=out["best"],
            history=out["history"],
            tau=out["tau"],
            seconds=out["seconds"],
            policy_dir=policy_dir,
            policy=out["policy"],
        )
        if echo:
            best = out["best"]
            print(
                f"run {spec.name:28s} best epoch {best.get('epoch')}: val AIQ {best.get('val_aiq', float('nan')):.4f}"
                f"  ({out['seconds']:.1f}s; {len(runs) - len(pending)}/{len(runs)} done, "
                f"{time.perf_counter() - start:.0f}s)",
                flush=True,
            )
    return [r for r in results if r is not None]


__all__ = ["RunResult", "RunSpec", "fold_tables", "grid", "train_runs"]
