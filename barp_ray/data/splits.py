"""Train / val / test assignment and leave-one-task-out (LOTO) folds.

The validation carve-out is deterministic and order-independent: within each task, train rows are ranked by
``sha256(f"{seed}:{prompt_id}")`` and the first ``round(fraction * n)`` become "val". Re-running it (with the
same seed) on a table that already has a val split gives the same assignment.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from barp_ray.data.table import RoutingTable


def _rank_key(seed: int, prompt_id: str) -> str:
    return hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest()


def assign_validation_split(table: RoutingTable, fraction: float = 0.15, seed: int = 0) -> RoutingTable:
    """Carve "val" out of "train", stratified per task, deterministic by ``seed``; "test" is untouched.

    Existing "val" rows are first returned to train, so the result only depends on (rows, fraction, seed).
    Each task with train rows gets ``round(fraction * n_train)`` val rows (at least one when fraction > 0 and
    the task has two or more train rows).
    """
    if table.split is None:
        raise ValueError("table has no split column; validate() the raw data first (it sets train/test)")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val fraction must be in [0, 1), got {fraction}")
    split = np.array([("train" if s == "val" else s) for s in table.split.tolist()], dtype=object)
    for task in sorted(set(table.tasks.tolist())):
        rows = np.flatnonzero((table.tasks == task) & (split == "train"))
        if fraction == 0.0 or len(rows) == 0:
            continue
        n_val = round(fraction * len(rows))
        if len(rows) >= 2:
            n_val = min(max(n_val, 1), len(rows) - 1)
        keys = [_rank_key(seed, str(table.prompt_ids[i])) for i in rows]
        split[rows[np.argsort(keys, kind="stable")[:n_val]]] = "val"
    out = table.take(np.arange(len(table)))
    out.split = split
    return out


@dataclass
class LotoFold:
    """One leave-one-task-out fold: fit on the other tasks, test on the held-out task."""

    held_out_task: str
    train: RoutingTable  # other tasks' train rows, minus val
    val: RoutingTable  # carved from the other tasks' train rows
    test: RoutingTable  # the held-out task's test rows

    def __repr__(self) -> str:
        return (
            f"LotoFold(held_out_task={self.held_out_task!r}, train={len(self.train)}, val={len(self.val)}, "
            f"test={len(self.test)})"
        )


def loto_folds(table: RoutingTable, val_fraction: float = 0.15, seed: int = 0) -> list[LotoFold]:
    """One fold per task (sorted by name): train/val from the other tasks' train (+val) rows, test = the
    held-out task's test rows. Val is re-carved per fold with ``assign_validation_split(val_fraction, seed)``,
    which matches the table's own val rows when they were made with the same fraction and seed."""
    if table.split is None:
        raise ValueError("table has no split column; validate() the raw data first (it sets train/test)")
    tasks = table.task_names
    if len(tasks) < 2:
        raise ValueError(f"leave-one-task-out needs at least two tasks, the table has {tasks}")
    fit_rows = np.isin(table.split, ["train", "val"])
    folds = []
    for task in tasks:
        others = assign_validation_split(table.take(fit_rows & (table.tasks != task)), val_fraction, seed)
        test = table.take((table.split == "test") & (table.tasks == task))
        folds.append(
            LotoFold(
                held_out_task=task,
                train=others.where_split("train"),
                val=others.where_split("val"),
                test=test,
            )
        )
    return folds
