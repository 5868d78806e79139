"""SweepConfig / search space / CLI registration (no Ray cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from barp_ray.training.config import TrainConfig
from barp_ray.tuning.config import TAU_SCALE, ParamSpec, SweepConfig, default_space

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["sweep.yaml", "quick.yaml"])
def test_committed_sweep_configs_load(name):
    cfg = SweepConfig.from_yaml(REPO / "tune" / name, data="/some/data")
    assert cfg.metric == "val_aiq" and cfg.data == "/some/data"
    base = cfg.base_config()
    assert isinstance(base, TrainConfig) and base.data == "/some/data"
    assert cfg.default_point() is not None  # the default config is a point of the space: it runs as a trial
    assert "SweepConfig:" in cfg.describe()
    SweepConfig.model_validate_json(cfg.model_dump_json())  # round-trips


def test_issue_search_space_is_covered():
    space = SweepConfig.from_yaml(REPO / "tune" / "sweep.yaml").space
    for key in (
        "lr",
        "beta_start",
        "beta_end",
        "beta_decay_fraction",
        "hidden_dim",
        "pref_dim",
        TAU_SCALE,
        "batch_size",
        "head",
    ):
        assert key in space, key
    assert set(default_space()) <= set(space) | {"tau_rule"}


def test_rejects_bad_sweeps():
    with pytest.raises(ValidationError, match="not TrainConfig fields"):
        SweepConfig(space={"learning_rate": ParamSpec(type="uniform", low=0, high=1)})
    with pytest.raises(ValidationError, match="both fixed"):
        SweepConfig(base={"lr": 0.01})
    with pytest.raises(ValidationError, match="set by the sweep"):
        SweepConfig(base={"data": "x"})
    with pytest.raises(ValidationError):
        SweepConfig(base={"epochs": 0})  # an invalid TrainConfig fails at load time, not inside a trial
    with pytest.raises(ValidationError):
        ParamSpec(type="loguniform", low=0, high=1)
    with pytest.raises(ValidationError):
        ParamSpec(type="choice", values=[])
    with pytest.raises(ValidationError):
        SweepConfig(unknown_field=1)


def test_param_specs_map_to_tune_domains():
    from ray.tune.search.sample import Categorical, Float, Integer

    assert isinstance(ParamSpec(type="loguniform", low=1e-4, high=1e-2).to_tune(), Float)
    assert isinstance(ParamSpec(type="randint", low=1, high=4).to_tune(), Integer)
    assert isinstance(ParamSpec(type="choice", values=["mlp", "linear"]).to_tune(), Categorical)
    spec = ParamSpec(type="uniform", low=0.3, high=1.0)
    assert spec.contains(0.7) and not spec.contains(1.5) and not spec.contains("x")
    assert ParamSpec(type="randint", low=1, high=4).contains(3) and not ParamSpec(
        type="randint", low=1, high=4
    ).contains(4)


def test_default_point_and_outside_space():
    cfg = SweepConfig()
    point = cfg.default_point()
    base = TrainConfig()
    assert point["lr"] == base.lr and point["head"] == base.head and point[TAU_SCALE] == 1.0
    narrow = SweepConfig(space={"hidden_dim": ParamSpec(type="choice", values=[64])})
    assert narrow.default_point() is None  # 256 not in the space: the default is not run as a trial


def test_trial_config_turns_tau_scale_into_a_concrete_tau(tmp_path):
    import numpy as np

    from barp_ray.data.shards import write_shards
    from barp_ray.data.table import RoutingTable
    from barp_ray.tuning.tuner import join_storage, trial_train_config

    n = 12
    table = RoutingTable(
        prompt_ids=[f"p{i}" for i in range(n)],
        prompts=[f"q {i}" for i in range(n)],
        tasks=np.array(["t"] * n),
        models=["a", "b"],
        scores=np.ones((n, 2), np.float32),
        costs=np.tile(np.array([1e-4, 1e-3]), (n, 1)),
        split=np.array(["train"] * 8 + ["val"] * 2 + ["test"] * 2),
    )
    write_shards(table, tmp_path / "d", num_shards=1)
    base = {"data": str(tmp_path / "d"), "epochs": 1}
    cfg = trial_train_config(base, {TAU_SCALE: 2.0, "lr": 0.002}, "/s", "t1")
    assert cfg.tau == pytest.approx(2 * 1e-3) and cfg.lr == 0.002 and cfg.name == "t1"  # max mean cost x 2
    assert join_storage("s3://b/p/", "x-train") == "s3://b/p/x-train"
    assert join_storage("/a/b", "x") == "/a/b/x"


def test_barp_tune_is_registered_in_the_cli():
    from barp_ray import cli

    cli.register_optional_commands()
    parser = cli.build_parser()
    argv = ["tune", "--data", "d", "--num-samples", "8", "--out", "o", "--config", "c.yaml"]
    args = parser.parse_args(argv)
    assert args.command == "tune" and str(args.config) == "c.yaml"
    from barp_ray.cli_support import flag_overrides

    assert flag_overrides(args) == {"data": "d", "num_samples": 8, "out_dir": "o"}


def test_build_tuner_uses_a_function_trainable_asha_and_optuna(tmp_path):
    """The Tuner gets a driver *function* (not a Trainer), fractional driver CPU, ASHA, Optuna (no fit)."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from barp_ray.tuning.tuner import build_tuner

    cfg = SweepConfig.from_yaml(REPO / "tune" / "sweep.yaml", data=str(tmp_path), out_dir=tmp_path)
    tuner = build_tuner(cfg)
    internal = tuner._local_tuner
    trainable = internal._trainable
    assert callable(trainable) and not hasattr(trainable, "fit")
    assert trainable._resources.required_resources == {"CPU": cfg.driver_cpus}
    tc = internal._tune_config
    assert isinstance(tc.scheduler, ASHAScheduler)
    searcher = tc.search_alg.searcher if isinstance(tc.search_alg, ConcurrencyLimiter) else tc.search_alg
    assert isinstance(searcher, OptunaSearch)
    assert tc.metric == "val_aiq" and tc.mode == "max" and tc.num_samples == cfg.num_samples
