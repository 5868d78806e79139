"""Ray Tune sweeps in which every trial is a Ray Train run of the core trainer.

Each trial runs `_trial_driver`, a Tune *function* trainable that builds the `TorchTrainer` with
`build_trainer` and Tune's `TuneReportCallback` (Train V2's way into Tune; a Trainer is never passed to a
Tuner). Every epoch's Train report (with `val_aiq` / `val_reward` on the validation split carved from
train, and the checkpoint path) becomes one Tune result, so ASHA can stop weak trials between epochs.
The test split is never read.

Storage layout (`storage` is a local path or an object-store URI)::

    <storage>/<name>/                  Tune experiment: one folder per trial with progress.csv,
                                       result.json and TensorBoard event files
    <storage>/<name>-train/<trial_id>/ the trial's Ray Train run: checkpoints (each a policy folder)
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from barp_ray.policy.checkpoint import load_policy
from barp_ray.training.config import TrainConfig
from barp_ray.training.trainer import TRAIN_STATE_FILE, build_trainer, resolve_cost_scale
from barp_ray.tuning.config import TAU_SCALE, SweepConfig

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "checkpoint_path"  # set by ray.tune.integration.ray_train.TuneReportCallback
DEFAULT_TAG = "is_default"
PG_KEY = "train_placement_group"  # the trial's Train worker-group placement group (hex id)
CONTROLLER_KEY = "train_controller"  # the trial's Train controller actor (hex id)
REAP_INTERVAL_S = 5.0


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


def join_storage(root: str, *parts: str) -> str:
    """Join path parts onto a local path or a URI."""
    if "://" in root:
        return "/".join([root.rstrip("/"), *parts])
    return str(Path(root, *parts))


def trial_train_config(base: dict[str, Any], params: dict[str, Any], storage: str, name: str) -> TrainConfig:
    """The TrainConfig of one trial: base fields, then the sampled params (`tau_scale` -> a concrete tau)."""
    params = dict(params)
    scale = params.pop(TAU_SCALE, None)
    cfg = TrainConfig.model_validate({**base, **params, "storage_path": storage, "name": name})
    if scale is not None:
        cfg = cfg.model_copy(update={"tau": resolve_cost_scale(cfg).tau * float(scale)})
        cfg = TrainConfig.model_validate(cfg.model_dump())  # re-validate (tau > 0)
    return cfg


def _report_callbacks() -> list:
    """TuneReportCallback, plus the ids the driver needs to free a stopped trial's Train placement group.

    When ASHA stops a trial, Tune ends the trial actor while its Train run is still going: the Train
    controller dies with it and never removes its worker group's placement group. Ray Train's own
    PlacementGroupCleaner frees it only where the State API (the dashboard) is up; without it the CPUs stay
    reserved and later trials wait forever for Ray Data read tasks. So every report also carries the
    controller's actor id and the worker group's placement group id, and `PlacementGroupReaper` (a Tune
    callback in the driver) removes that group once the controller is dead.
    """
    import ray
    from ray.tune.integration.ray_train import TuneReportCallback

    from barp_ray.ray_compat import placement_group_id, worker_group_callback_base

    class WorkerGroupProbe(worker_group_callback_base()):
        """Runs in the Train controller: remembers the current worker group's placement group."""

        def __init__(self) -> None:
            self.pg_id: str | None = None

        def after_worker_group_start(self, worker_group) -> None:
            self.pg_id = placement_group_id(worker_group)

    class ReportWithIds(TuneReportCallback):
        def __init__(self, probe: WorkerGroupProbe) -> None:
            super().__init__()
            self._probe = probe

        def after_report(self, run_context, metrics, checkpoint):
            ids = {CONTROLLER_KEY: ray.get_runtime_context().get_actor_id(), PG_KEY: self._probe.pg_id}
            super().after_report(run_context, [{**metrics[0], **ids}, *metrics[1:]], checkpoint)

    probe = WorkerGroupProbe()
    return [probe, ReportWithIds(probe)]  # pickled together: the report callback sees the probe's id


def _trial_driver(config: dict[str, Any], base: dict[str, Any], train_storage: str) -> None:
    """Tune function trainable: one Ray Train run per trial, metrics forwarded by TuneReportCallback."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_train_config(base, config, train_storage, trial_id)
    trainer, _ = build_trainer(cfg, callbacks=_report_callbacks())
    result = trainer.fit()
    if result.error:
        raise result.error


def _placement_group_reaper():
    from ray import tune

    class PlacementGroupReaper(tune.Callback):
        """Driver side: frees the Train placement group of every finished trial whose controller is dead."""

        def __init__(self) -> None:
            self.pending: dict[str, str] = {}  # placement group id -> Train controller actor id
            self.removed: list[str] = []
            self._last = 0.0

        def _note(self, trial) -> None:
            result = trial.last_result or {}
            if result.get(PG_KEY) and result.get(CONTROLLER_KEY):
                self.pending[result[PG_KEY]] = result[CONTROLLER_KEY]

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._note(trial)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._note(trial)

        def on_step_begin(self, iteration, trials, **info) -> None:
            if self.pending and time.monotonic() - self._last > REAP_INTERVAL_S:
                self._last = time.monotonic()
                self.reap()

        def on_experiment_end(self, trials, **info) -> None:
            deadline = time.monotonic() + 30
            while self.pending and time.monotonic() < deadline:
                self.reap()
                if self.pending:
                    time.sleep(1.0)

        def reap(self) -> None:
            import ray
            from ray.util.placement_group import PlacementGroup, remove_placement_group

            from barp_ray.ray_compat import actor_state

            for pg_id, controller in list(self.pending.items()):
                try:
                    if actor_state(controller) != "DEAD":
                        continue  # a live controller removes its own group (or still uses it)
                    pg = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id)))
                    if ray.util.placement_group_table(pg).get("state") not in (None, "REMOVED"):
                        remove_placement_group(pg)
                        self.removed.append(pg_id)
                        log.info("freed placement group %s of a stopped trial", pg_id)
                except Exception as exc:  # noqa: BLE001 - never fail the sweep over cleanup
                    log.warning("could not free placement group %s: %s", pg_id, exc)
                del self.pending[pg_id]

    return PlacementGroupReaper()


def _search_alg(cfg: SweepConfig):
    points = []
    if cfg.include_default:
        point = cfg.default_point()
        if point is None:
            log.warning("the base config lies outside the search space: not evaluating it as a trial")
        else:
            points.append(point)
    if cfg.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=cfg.metric, mode="max", points_to_evaluate=points or None, seed=cfg.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=points or None, random_state=cfg.seed)


def _scheduler(cfg: SweepConfig, epochs: int):
    if cfg.scheduler == "fifo":
        from ray.tune.schedulers import FIFOScheduler

        return FIFOScheduler()
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",  # one Tune iteration = one Train epoch report
        # epochs + 1: a trial that reaches its last epoch ends by itself (its Train run shuts down cleanly)
        # instead of being stopped by ASHA while the run is still finishing.
        max_t=epochs + 1,
        grace_period=min(cfg.grace_period, epochs),
        reduction_factor=cfg.reduction_factor,
    )


def build_tuner(cfg: SweepConfig):
    """The `ray.tune.Tuner` of a sweep (driver function trainable, searcher, ASHA, storage)."""
    from ray import tune

    base_cfg = cfg.base_config()
    storage = cfg.resolved_storage()
    base = base_cfg.model_dump(mode="json")
    base.pop("storage_path")
    base.pop("name")
    train_storage = join_storage(storage, f"{cfg.name}-train")
    trainable = tune.with_parameters(_trial_driver, base=base, train_storage=train_storage)
    # The driver only waits on the Train controller: a fractional CPU, so the workers and Ray Data fit.
    trainable = tune.with_resources(trainable, {"CPU": cfg.driver_cpus})
    return tune.Tuner(
        trainable,
        param_space={k: spec.to_tune() for k, spec in cfg.space.items()},
        tune_config=tune.TuneConfig(
            metric=cfg.metric,
            mode="max",
            num_samples=cfg.num_samples,
            max_concurrent_trials=cfg.max_concurrent_trials,
            search_alg=_search_alg(cfg),
            scheduler=_scheduler(cfg, base_cfg.epochs),
            time_budget_s=cfg.time_budget_s,
            trial_dirname_creator=lambda trial: trial.trial_id,
            trial_name_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name=cfg.name, storage_path=storage, verbose=1, callbacks=[_placement_group_reaper()]
        ),
    )


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
