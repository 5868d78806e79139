"""Ray Tune sweeps in which every trial is a Ray Train run of the core trainer: run one, collect its results.

Each trial is a Ray Train run built by `barp_ray.tuning.tuner` (the Tuner, its trial driver, searcher and
scheduler). Every epoch's Train report (with `val_aiq` / `val_reward` on the validation split carved from
train, and the checkpoint path) becomes one Tune result, so ASHA can stop weak trials between epochs.
The test split is never read. Here: `run_sweep` (claim the storage, fit, the trials table, the best config
and policy exported, the markdown summary).

Storage layout (`storage` is a local path or an object-store URI)::

    <storage>/<name>/                  Tune experiment: one folder per trial with progress.csv,
                                       result.json and TensorBoard event files
    <storage>/<name>-train/<trial_id>/ the trial's Ray Train run: checkpoints (each a policy folder)
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from barp_ray.policy.checkpoint import load_policy
from barp_ray.training.config import TrainConfig
from barp_ray.training.trainer import TRAIN_STATE_FILE
from barp_ray.tuning.config import SweepConfig
from barp_ray.tuning.tuner import build_tuner, trial_train_config

CHECKPOINT_KEY = "checkpoint_path"  # set by ray.tune.integration.ray_train.TuneReportCallback
DEFAULT_TAG = "is_default"


@dataclass
class SweepOutcome:
    """What a sweep produced (paths are local; `best_checkpoint` may be a URI)."""

    best_config: TrainConfig
    best_params: dict[str, Any]
    best_value: float
    best_trial: str
    best_checkpoint: str
    default_value: float | None  # the base config's trial, when it ran (None if excluded)
    default_epochs: int | None  # epochs the default trial ran before ASHA stopped it
    trials: pd.DataFrame
    seconds: float
    experiment_path: str
    paths: dict[str, Path] = field(default_factory=dict)


def _is_default(params: dict[str, Any], default: dict[str, Any] | None) -> bool:
    if default is None:
        return False
    return all(_same(params.get(k), v) for k, v in default.items())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return a == b


def trials_table(result_grid, cfg: SweepConfig) -> pd.DataFrame:
    """One row per trial: status, epochs run, best metric (and its epoch + checkpoint), the params."""
    default = cfg.default_point() if cfg.include_default else None
    rows = []
    for res in result_grid:
        df = res.metrics_dataframe
        params = {k: res.config.get(k) for k in cfg.space}
        row: dict[str, Any] = {
            "trial_id": (res.metrics or {}).get("trial_id") or Path(res.path).name,
            DEFAULT_TAG: _is_default(params, default),
            "status": "ERROR" if res.error else "OK",
            "epochs": 0,
            cfg.metric: float("nan"),
            "best_epoch": None,
            "val_aiq": float("nan"),
            "val_reward": float("nan"),
            CHECKPOINT_KEY: None,
            "error": str(res.error).splitlines()[0][:200] if res.error else "",
        }
        if df is not None and len(df) and cfg.metric in df:
            best = df.loc[df[cfg.metric].idxmax()]
            row.update(
                {
                    "epochs": int(df["training_iteration"].max()),
                    "best_epoch": int(best.get("epoch", best["training_iteration"] - 1)),
                    "val_aiq": float(best.get("val_aiq", float("nan"))),
                    "val_reward": float(best.get("val_reward", float("nan"))),
                    CHECKPOINT_KEY: best.get(CHECKPOINT_KEY),
                }
            )
            if "time_total_s" in df:
                row["trial_seconds"] = round(float(df["time_total_s"].max()), 1)
        row.update({f"param.{k}": v for k, v in params.items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(cfg.metric, ascending=False, na_position="last").reset_index(drop=True)


def export_checkpoint(checkpoint_path: str, dest: Path) -> Path:
    """Copy a Train checkpoint (local path or URI) to `dest` as a loadable policy folder."""
    from ray.train import Checkpoint

    if dest.exists():
        shutil.rmtree(dest)
    Checkpoint(checkpoint_path).to_directory(str(dest))
    (dest / TRAIN_STATE_FILE).unlink(missing_ok=True)
    load_policy(dest)  # fail here, not at serving time, if the copy is unreadable
    return dest


def _markdown(cfg: SweepConfig, outcome: SweepOutcome) -> str:
    t = outcome.trials
    cols = ["trial_id", DEFAULT_TAG, "status", "epochs", "best_epoch", "val_aiq", "val_reward"]
    cols += [c for c in t.columns if c.startswith("param.")]
    lines = [
        f"# Sweep `{cfg.name}`",
        "",
        f"- objective: **{cfg.metric}** (max) on the validation split carved from train; test split unused",
        f"- trials: {len(t)} (budget num_samples={cfg.num_samples}), search={cfg.search_alg}, "
        f"scheduler={cfg.scheduler} (grace {cfg.grace_period}, reduction {cfg.reduction_factor}, "
        f"max {cfg.base_config().epochs} epochs x {cfg.base_config().steps_per_epoch} steps), "
        f"{cfg.max_concurrent_trials} concurrent",
        f"- wall time: {outcome.seconds:.0f} s",
        f"- best: trial `{outcome.best_trial}` {cfg.metric}={outcome.best_value:.4f}",
        "- default config: "
        + (
            f"{cfg.metric}={outcome.default_value:.4f} after {outcome.default_epochs} epoch(s)"
            if outcome.default_value is not None
            else "not run"
        ),
        f"- Tune results (TensorBoard: `tensorboard --logdir {outcome.experiment_path}`)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for _, r in t.iterrows():
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f"{v:.4g}" if isinstance(v, float) and not isinstance(v, bool) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def connect_ray(cfg: SweepConfig, address: str | None = None) -> str | None:
    """Connect to `address` / $RAY_ADDRESS, else start a local Ray sized for the sweep; the dashboard URL.

    Locally: more logical CPUs than cores, since trial drivers and Train workers take fractions and Ray
    Data's read tasks need a whole free CPU (with none free, a trial's parquet read never starts).
    """
    from barp_ray.ray_connect import connect

    return connect(address, num_cpus=cfg.local_num_cpus, dashboard=cfg.local_dashboard)


def _claim_storage(cfg: SweepConfig) -> None:
    """Refuse to mix two sweeps in one experiment folder (TensorBoard, results), unless `overwrite`."""
    import pyarrow.fs as pafs

    storage = cfg.resolved_storage()
    fs, root = pafs.FileSystem.from_uri(storage) if "://" in storage else (pafs.LocalFileSystem(), storage)
    existing = [
        p
        for p in (f"{root}/{cfg.name}", f"{root}/{cfg.name}-train")
        if fs.get_file_info(p).type != pafs.FileType.NotFound
    ]
    if existing and not cfg.overwrite:
        raise ValueError(
            f"sweep {cfg.name!r} already exists under {storage}: pick another --name, or set overwrite: true"
        )
    for path in existing:
        fs.delete_dir(path)


def run_sweep(cfg: SweepConfig) -> SweepOutcome:
    """Run the sweep on the connected Ray cluster; write best_config.yaml, best_policy/ and the results."""
    start = time.perf_counter()
    _claim_storage(cfg)
    tuner = build_tuner(cfg)
    result_grid = tuner.fit()
    seconds = time.perf_counter() - start
    trials = trials_table(result_grid, cfg)
    ok = trials[trials[CHECKPOINT_KEY].notna()]
    if ok.empty:
        errors = "; ".join(e for e in trials["error"] if e) or "no trial reported a checkpoint"
        raise RuntimeError(f"sweep {cfg.name}: no successful trial ({errors})")
    best = ok.iloc[0]
    best_params = {k.removeprefix("param."): _plain(best[k]) for k in trials if k.startswith("param.")}

    base = cfg.base_config()
    best_cfg = trial_train_config(
        base.model_dump(mode="json", exclude={"storage_path", "name"}),
        best_params,
        base.storage_path,
        f"{cfg.name}-best",
    )
    defaults = trials[trials[DEFAULT_TAG]]
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    outcome = SweepOutcome(
        best_config=best_cfg,
        best_params=best_params,
        best_value=float(best[cfg.metric]),
        best_trial=str(best["trial_id"]),
        best_checkpoint=str(best[CHECKPOINT_KEY]),
        default_value=float(defaults.iloc[0][cfg.metric]) if len(defaults) else None,
        default_epochs=int(defaults.iloc[0]["epochs"]) if len(defaults) else None,
        trials=trials,
        seconds=seconds,
        experiment_path=result_grid.experiment_path,
    )
    best_cfg.to_yaml(out / "best_config.yaml")
    export_checkpoint(outcome.best_checkpoint, out / "best_policy")
    trials.to_csv(out / "sweep_results.csv", index=False)
    (out / "sweep_results.md").write_text(_markdown(cfg, outcome))
    cfg.to_yaml(out / "sweep_config.yaml")
    outcome.paths = {
        "best_config": out / "best_config.yaml",
        "best_policy": out / "best_policy",
        "results_csv": out / "sweep_results.csv",
        "results_md": out / "sweep_results.md",
        "experiment": Path(result_grid.experiment_path) if "://" not in result_grid.experiment_path else out,
    }
    return outcome


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (so YAML and pydantic see plain values)."""
    return value.item() if hasattr(value, "item") else value
