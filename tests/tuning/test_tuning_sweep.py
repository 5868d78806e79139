"""A real Ray Tune sweep (2 tiny trials, each a Ray Train run) via `barp tune`, on real embedded shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from barp_ray.policy.checkpoint import load_policy
from barp_ray.training.config import TrainConfig

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(480)]
REPO = Path(__file__).resolve().parents[2]


def _poison_test_split(src: Path, dst: Path) -> Path:
    """A copy of the shards whose *test* rows have NaN scores, costs and embeddings: if a sweep ever read
    them (training batches, tau, validation), its losses, rewards and val_aiq would be NaN, or it fails."""
    from barp_ray.data.shards import read_manifest, read_shards, write_shards

    table = read_shards(src)
    test = table.split == "test"
    assert test.any() and (table.split == "val").any()
    for name in ("scores", "costs", "embeddings"):
        values = getattr(table, name).copy()  # arrays read back from arrow are read-only
        values[test] = np.nan
        setattr(table, name, values)
    manifest = read_manifest(src)
    keep = {k: v for k, v in manifest.items() if k in ("prepare", "validation")}
    write_shards(table, dst, num_shards=len(manifest["files"]), extra_manifest=keep)
    return dst


def test_barp_tune_runs_a_real_sweep_and_exports_the_best(tuning_data, tmp_path, capsys, monkeypatch):
    from barp_ray import cli
    from barp_ray.cli_support import load_config

    data = _poison_test_split(tuning_data, tmp_path / "data")
    out = tmp_path / "tune"
    # relative paths, as tune/README.md writes them: trial drivers run in other working directories, so the
    # config resolves them once at load (this failed in every trial before)
    monkeypatch.chdir(tmp_path)
    code = cli.main(
        [
            "tune",
            "--config",
            str(REPO / "tune" / "quick.yaml"),
            "--data",
            "data",
            "--out",
            "tune",
            "--num-samples",
            "2",
            "--storage-path",
            "storage",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "SweepConfig:" in printed and "best trial" in printed and "tensorboard --logdir" in printed

    # best_config.yaml is a TrainConfig that `barp train --config` takes as is
    best = TrainConfig.from_yaml(out / "best_config.yaml")
    assert best.data == str(data) and best.tau is not None and np.isfinite(best.tau) and best.tau > 0
    args = cli.build_parser().parse_args(["train", "--config", str(out / "best_config.yaml")])
    assert load_config(TrainConfig, args) == best
    quick = yaml.safe_load((REPO / "tune" / "quick.yaml").read_text())
    assert best.epochs == quick["base"]["epochs"] and best.steps_per_epoch == quick["base"]["steps_per_epoch"]

    # the best checkpoint's policy, loadable
    policy = load_policy(out / "best_policy")
    assert policy.spec.tau == pytest.approx(best.tau) and policy.spec.hidden_dim == best.hidden_dim
    assert not (out / "best_policy" / "train_state.pt").exists()

    # one row per trial, the default config among them; the best row is the exported one
    results = pd.read_csv(out / "sweep_results.csv")
    assert len(results) == 2 and results["is_default"].sum() == 1
    assert (results["status"] == "OK").all() and results["epochs"].between(1, 2).all()
    top = results.iloc[0]
    assert top["val_aiq"] == results["val_aiq"].max() and 0 <= top["val_aiq"] <= 1
    assert best.lr == pytest.approx(top["param.lr"]) and best.head == top["param.head"]
    assert "| trial_id |" in (out / "sweep_results.md").read_text()

    # Tune wrote TensorBoard event files per trial; Train checkpoints live beside the experiment
    experiment = tmp_path / "storage" / "barp-quick"
    trial_dirs = [d for d in experiment.iterdir() if d.is_dir()]
    assert len(trial_dirs) == 2
    assert all(list(d.glob("events.out.tfevents.*")) for d in trial_dirs)
    train_groups = set()
    for d in trial_dirs:  # the poisoned test split never reached training, tau or validation
        progress = pd.read_csv(d / "progress.csv")
        assert np.isfinite(progress[["loss", "reward", "val_aiq", "val_reward"]].to_numpy()).all()
        train_groups |= set(progress["train_placement_group"].dropna())

    # no trial's Train worker group keeps its CPUs reserved after the sweep (ASHA stops included)
    import ray
    from ray.util.placement_group import PlacementGroup

    assert train_groups
    for pg_id in train_groups:
        state = ray.util.placement_group_table(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
        assert state.get("state") == "REMOVED", (pg_id, state)
    assert list((tmp_path / "storage" / "barp-quick-train").glob("*/checkpoint_*"))

    # a second sweep of the same name refuses to mix into the same folder
    with pytest.raises(ValueError, match="already exists"):
        from barp_ray.tuning import SweepConfig, run_sweep

        run_sweep(
            SweepConfig.from_yaml(
                REPO / "tune" / "quick.yaml", data=str(data), out_dir=out, storage_path=str(tmp_path / "storage")
            )
        )
