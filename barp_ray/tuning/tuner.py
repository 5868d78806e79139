"""The Ray Tune `Tuner` of a sweep: the per-trial driver (one Ray Train run), searcher, scheduler, cleanup.

Each trial runs `_trial_driver`, a Tune *function* trainable that builds the `TorchTrainer` with
`build_trainer` and Tune's `TuneReportCallback` (Train V2's way into Tune; a Trainer is never passed to a
Tuner). Every epoch's Train report becomes one Tune result, so ASHA can stop weak trials between epochs;
`PlacementGroupReaper` frees the Train placement group of a trial ASHA stopped. `barp_ray.tuning.sweep`
runs the Tuner and collects the results.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from barp_ray.training.config import TrainConfig
from barp_ray.training.trainer import build_trainer, resolve_cost_scale
from barp_ray.tuning.config import TAU_SCALE, SweepConfig

log = logging.getLogger(__name__)

PG_KEY = "train_placement_group"  # the trial's Train worker-group placement group (hex id)
CONTROLLER_KEY = "train_controller"  # the trial's Train controller actor (hex id)
REAP_INTERVAL_S = 5.0


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
