"""Training-side safety without a cluster: export never deletes a non-policy folder, shard folders are
published atomically, and a resumed run must have the config it was trained with."""

from __future__ import annotations

import json

import numpy as np
import pytest

from barp_ray.data.shards import read_manifest, read_shards, write_shards
from barp_ray.data.table import RoutingTable
from barp_ray.policy import BarpPolicy, PolicySpec, load_policy, save_policy
from barp_ray.training.config import TrainConfig
from barp_ray.training.trainer import check_resume, export_policy


def _checkpoint(tmp_path):
    spec = PolicySpec(models=["a", "b"], tau=0.01, encoder="toy", embed_dim=4, pref_dim=2, hidden_dim=8)
    ckpt = tmp_path / "checkpoint_2026"
    save_policy(BarpPolicy(spec), ckpt, extra={"epoch": 0})
    (ckpt / "train_state.pt").write_bytes(b"optimizer state")
    (ckpt / "rng_rank0.pt").write_bytes(b"rng")
    return ckpt


def test_export_refuses_a_folder_that_is_not_a_policy(tmp_path):
    ckpt = _checkpoint(tmp_path)
    other = tmp_path / "my-notes"
    other.mkdir()
    (other / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match=r"my-notes exists and is not a policy folder"):
        export_policy(ckpt, other)
    assert (other / "notes.txt").read_text() == "precious"

    target = export_policy(ckpt, tmp_path / "policy")  # new folder
    assert sorted(p.name for p in target.iterdir()) == ["policy.json", "policy.pt"]  # no training state
    export_policy(ckpt, target)  # a previous export is replaced
    assert load_policy(target).spec.models == ["a", "b"]
    assert not list(tmp_path.glob(".policy.*"))  # no temp folder left


def _table(n: int, tag: str) -> RoutingTable:
    return RoutingTable(
        prompt_ids=np.array([f"{tag}{i}" for i in range(n)]),
        prompts=[f"p{tag}{i}" for i in range(n)],
        tasks=np.full(n, "t"),
        models=["a", "b"],
        scores=np.zeros((n, 2)),
        costs=np.ones((n, 2)),
        split=np.full(n, "train"),
    )


def test_shard_folder_is_published_whole_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "data"
    write_shards(_table(8, "old"), out, num_shards=2)
    (out / "README.md").write_text("kept")
    import pyarrow.parquet as pq

    calls = {"n": 0}
    real = pq.write_table

    def failing(table, where, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(table, where, *a, **kw)

    monkeypatch.setattr(pq, "write_table", failing)
    with pytest.raises(OSError, match="disk full"):
        write_shards(_table(6, "new"), out, num_shards=3)
    monkeypatch.setattr(pq, "write_table", real)
    assert read_shards(out).prompt_ids.tolist()[0] == "old0" and read_manifest(out)["num_rows"] == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temp folder is gone

    write_shards(_table(6, "new"), out, num_shards=3)
    assert read_manifest(out)["num_rows"] == 6 and (out / "README.md").read_text() == "kept"


def test_resume_refuses_a_changed_config(tmp_path):
    cfg = TrainConfig(data=str(tmp_path / "d1"), storage_path=str(tmp_path / "ray"), name="run")
    check_resume(cfg)  # nothing there yet
    ckpt = tmp_path / "ray" / "run" / "checkpoint_2026-01-01"
    ckpt.mkdir(parents=True)
    (ckpt / "policy.json").write_text(json.dumps({"extra": {"config": cfg.model_dump(mode="json")}}))
    check_resume(cfg)
    check_resume(cfg.model_copy(update={"epochs": cfg.epochs + 5, "num_workers": 2}))  # how it runs: fine
    with pytest.raises(ValueError, match=r"data: .*d1.* -> .*d2.*another --name"):
        check_resume(cfg.model_copy(update={"data": str(tmp_path / "d2")}))
    with pytest.raises(ValueError, match=r"lr: 0.001 -> 0.01"):
        check_resume(cfg.model_copy(update={"lr": 0.01}))
