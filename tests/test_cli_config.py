"""CLI flags generated from the configs, configs that compose (YAML + flags) and resolve paths once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from barp_ray.cli import build_parser
from barp_ray.cli_support import COMMANDS, field_info, load_config
from barp_ray.config import JobConfig

REPO = Path(__file__).resolve().parents[1]


def _config_classes() -> set[type[JobConfig]]:
    build_parser()
    out: set[type] = set()

    def walk(cls):
        if cls in out:
            return
        out.add(cls)
        for info in cls.model_fields.values():
            sub = info.annotation
            if isinstance(sub, type) and issubclass(sub, JobConfig):
                walk(sub)

    for cmd in COMMANDS.values():
        if cmd.config is not None:
            walk(cmd.config)
    return out


def test_every_config_field_has_a_description():
    missing = [
        f"{cls.__name__}.{name}"
        for cls in _config_classes()
        for name, info in cls.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert not missing, f"config fields without a description: {missing}"


def test_every_flag_shows_its_description_and_default(capsys):
    parser = build_parser()
    for name, cmd in COMMANDS.items():
        if cmd.config is None:
            continue
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for flag, path in cmd.flags.items():
            assert f"--{flag.replace('_', '-')}" in text
            description = " ".join(field_info(cmd.config, path).description.split())
            assert description[:30].replace("%%", "%") in text, (name, flag)


def test_train_help_lists_defaults_from_pydantic(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs INT validation points (checkpoints) over the run (default: 20)" in text
    assert "--tau-rule {p99_top_model,max_cost,max_mean_cost,median_max_cost,p90_cost}" in text


def test_yaml_and_flags_compose_and_nest(tmp_path, monkeypatch):
    from barp_ray.pipeline import DemoConfig
    from barp_ray.training.config import TrainConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({"epochs": 3, "lr": 0.002, "data": "rel/data"}))
    args = build_parser().parse_args(["train", "--config", "train.yaml", "--epochs", "5", "--exclude-task", "mbpp"])
    cfg = load_config(TrainConfig, args, echo=False)
    assert (cfg.epochs, cfg.lr, cfg.exclude_tasks) == (5, 0.002, ["mbpp"])  # flag wins, YAML kept
    assert cfg.data == str(tmp_path / "rel" / "data")  # relative path in YAML: absolute at load

    (tmp_path / "demo.yaml").write_text(yaml.safe_dump({"train": {"epochs": 4, "lr": 0.003}, "seeds": [1, 2]}))
    args = build_parser().parse_args(["demo", "--config", "demo.yaml", "--epochs", "2", "--no-loto", "--out", "o"])
    demo = load_config(DemoConfig, args, echo=False)
    assert (demo.train.epochs, demo.train.lr, demo.seeds, demo.loto) == (2, 0.003, [1, 2], False)
    assert demo.out_dir == tmp_path / "o"


def test_paths_resolved_once_and_uris_kept(tmp_path, monkeypatch):
    """A config made in one directory means the same files when re-read elsewhere (Tune trial, Ray Job)."""
    from barp_ray.offpolicy.config import LogSource
    from barp_ray.training.config import TrainConfig
    from barp_ray.tuning.config import SweepConfig

    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(data="runs/demo/data", storage_path="s3://bucket/ray")
    assert cfg.data == str(tmp_path / "runs" / "demo" / "data") and cfg.storage_path == "s3://bucket/ray"
    assert TrainConfig().data == str(tmp_path / "runs" / "demo" / "data")  # defaults too
    sweep = SweepConfig(data="d", out_dir=Path("o"))
    assert sweep.base_config().data == str(tmp_path / "d") and sweep.out_dir == tmp_path / "o"
    assert LogSource(logs="~/logs").logs == str(Path.home() / "logs")
    dumped = cfg.model_dump()
    monkeypatch.chdir(REPO)
    assert TrainConfig.model_validate(dumped).data == cfg.data


def test_cli_modules_do_not_import_back_from_barp_ray_cli():
    offenders = []
    for path in (REPO / "barp_ray").rglob("*.py"):
        if path.name == "cli.py" and path.parent.name == "barp_ray":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "barp_ray.cli":
                offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"import from barp_ray.cli_support instead: {offenders}"


def test_one_way_to_connect_to_ray():
    """Only barp_ray/ray_connect.py starts or joins a cluster (`ray.init(ignore_reinit_error=True)` only
    reads the running one's context)."""
    callers = [
        str(p.relative_to(REPO))
        for p in (REPO / "barp_ray").rglob("*.py")
        if p.name != "ray_connect.py"
        and p.read_text().count("ray.init(") > p.read_text().count("ray.init(ignore_reinit_error=True)")
    ]
    assert not callers, callers
