"""Validation split, leave-one-task-out folds, parquet shards (pyarrow and Ray Data) and `prepare`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from barp_ray.config import default_data_dir
from barp_ray.data.prepare import PrepareConfig, prepare, prepare_from_config
from barp_ray.data.shards import (
    dataset_to_table,
    read_manifest,
    read_shards,
    read_shards_ray,
    read_split_columns,
    write_shards,
)
from barp_ray.data.splits import assign_validation_split, loto_folds
from barp_ray.data.table import META_MODELS, RoutingTable

MODELS = ["small", "medium", "large"]


def make_table(tasks: dict[str, tuple[int, int]], seed: int = 0, embed_dim: int | None = None) -> RoutingTable:
    """A synthetic train/test table: tasks -> (n_train, n_test)."""
    rng = np.random.default_rng(seed)
    ids, prompts, task_col, split = [], [], [], []
    for task, (n_train, n_test) in tasks.items():
        for name, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                ids.append(f"{task}.{name}.{i}")
                prompts.append(f"{task} {name} prompt {i}")
                task_col.append(task)
                split.append(name)
    n = len(ids)
    return RoutingTable(
        prompt_ids=np.array(ids, dtype=object),
        prompts=prompts,
        tasks=np.array(task_col, dtype=object),
        models=list(MODELS),
        scores=rng.integers(0, 2, size=(n, len(MODELS))).astype(np.float32),
        costs=rng.uniform(0.0001, 0.01, size=(n, len(MODELS))),
        split=np.array(split, dtype=object),
        embeddings=None if embed_dim is None else rng.normal(size=(n, embed_dim)).astype(np.float32),
        encoder=None if embed_dim is None else "test-encoder",
    )


def split_of(table: RoutingTable) -> dict[str, str]:
    return dict(zip(table.prompt_ids.tolist(), table.split.tolist(), strict=True))


# ---- assign_validation_split --------------------------------------------------------------------------


def test_validation_split_is_stratified_per_task():
    table = make_table({"a": (100, 20), "b": (40, 10), "c": (1, 5)})
    out = assign_validation_split(table, fraction=0.15, seed=0)
    counts = pd.crosstab(out.tasks, out.split)
    assert counts.loc["a", "val"] == 15 and counts.loc["a", "train"] == 85
    assert counts.loc["b", "val"] == 6 and counts.loc["b", "train"] == 34
    assert counts.loc["c", "val"] == 0 and counts.loc["c", "train"] == 1  # a lone train row stays in train
    assert (out.split[table.split == "test"] == "test").all()
    assert table.split.tolist().count("val") == 0  # the input is not modified


def test_validation_split_is_deterministic_and_order_independent():
    table = make_table({"a": (60, 5), "b": (30, 5)})
    first = split_of(assign_validation_split(table, 0.2, seed=3))
    assert first == split_of(assign_validation_split(table, 0.2, seed=3))
    shuffled = table.take(np.random.default_rng(1).permutation(len(table)))
    assert first == split_of(assign_validation_split(shuffled, 0.2, seed=3))
    assert first != split_of(assign_validation_split(table, 0.2, seed=4))


def test_validation_split_is_idempotent_and_zero_fraction():
    table = make_table({"a": (50, 5)})
    once = assign_validation_split(table, 0.3, seed=0)
    assert split_of(assign_validation_split(once, 0.3, seed=0)) == split_of(once)
    assert "val" not in assign_validation_split(once, 0.0).split.tolist()


def test_validation_split_errors():
    table = make_table({"a": (5, 1)})
    with pytest.raises(ValueError, match=r"val fraction must be in \[0, 1\)"):
        assign_validation_split(table, 1.0)
    table.split = None
    with pytest.raises(ValueError, match="no split column"):
        assign_validation_split(table)


# ---- leave-one-task-out -------------------------------------------------------------------------------


def test_loto_folds_hold_out_each_task():
    table = assign_validation_split(make_table({"a": (40, 10), "b": (20, 6), "c": (30, 8)}), 0.25, seed=0)
    folds = loto_folds(table, val_fraction=0.25, seed=0)
    assert [f.held_out_task for f in folds] == ["a", "b", "c"]
    for fold in folds:
        held_out = fold.held_out_task
        assert held_out not in set(fold.train.tasks) | set(fold.val.tasks)
        assert set(fold.test.tasks) == {held_out} and set(fold.test.split) == {"test"}
        others = table.where_tasks([held_out], keep=False)
        assert len(fold.train) + len(fold.val) == int(np.isin(others.split, ["train", "val"]).sum())
        assert len(fold.test) == int(((table.tasks == held_out) & (table.split == "test")).sum())
        # same fraction and seed: the fold's val rows are the table's own val rows of those tasks
        assert set(fold.val.prompt_ids) == set(others.where_split("val").prompt_ids)
    assert "LotoFold(held_out_task='b', train=" in repr(folds[1])


def test_loto_needs_two_tasks():
    with pytest.raises(ValueError, match="at least two tasks"):
        loto_folds(make_table({"a": (5, 2)}))


# ---- parquet shards (pyarrow) -------------------------------------------------------------------------


def test_write_and_read_shards_roundtrip(tmp_path):
    table = assign_validation_split(make_table({"a": (30, 7), "b": (12, 4)}, embed_dim=5), 0.2)
    manifest_path = write_shards(table, tmp_path / "shards", num_shards=3, extra_manifest={"note": "x"})
    manifest = json.loads(manifest_path.read_text())
    assert [f["file"] for f in manifest["files"]] == [f"part-0000{i}.parquet" for i in range(3)]
    assert sum(f["num_rows"] for f in manifest["files"]) == len(table) == manifest["num_rows"]
    assert manifest["models"] == MODELS and manifest["encoder"] == "test-encoder" and manifest["note"] == "x"
    assert manifest["per_split"] == {s: int((table.split == s).sum()) for s in ("test", "train", "val")}
    assert manifest["per_task"] == {"a": 37, "b": 16}
    assert manifest["per_task_split"]["b"]["test"] == 4
    assert manifest["embedding_dim"] == 5
    schema = pq.read_schema(tmp_path / "shards" / "part-00001.parquet")
    assert json.loads(schema.metadata[META_MODELS]) == MODELS
    back = read_shards(tmp_path / "shards")
    assert back.prompt_ids.tolist() == table.prompt_ids.tolist() and back.prompts == table.prompts
    assert back.split.tolist() == table.split.tolist() and back.tasks.tolist() == table.tasks.tolist()
    np.testing.assert_array_equal(back.scores, table.scores)
    np.testing.assert_array_equal(back.costs, table.costs)
    np.testing.assert_array_equal(back.embeddings, table.embeddings)
    assert back.encoder == "test-encoder" and back.models == MODELS


def test_read_split_columns_with_a_row_cap_reads_a_seeded_subset_across_shards(tmp_path):
    table = assign_validation_split(make_table({"a": (60, 5), "b": (40, 5)}, embed_dim=4), 0.3)
    write_shards(table, tmp_path, num_shards=4)
    columns = ["prompt_id", "task", "embedding"]
    whole = read_split_columns(tmp_path, columns, split="val")
    n_val = int((table.split == "val").sum())
    assert len(whole["prompt_id"]) == n_val and whole["embedding"].shape == (n_val, 4)
    # a cap at or above the split's size changes nothing
    same = read_split_columns(tmp_path, columns, split="val", max_rows=n_val)
    assert same["prompt_id"].tolist() == whole["prompt_id"].tolist()
    # below it: exactly max_rows distinct rows of that split, in shard order, the same for the same seed
    capped = read_split_columns(tmp_path, columns, split="val", max_rows=7, seed=3)
    ids = capped["prompt_id"].tolist()
    assert len(ids) == len(set(ids)) == 7 and set(ids) <= set(whole["prompt_id"].tolist())
    order = {pid: i for i, pid in enumerate(whole["prompt_id"].tolist())}
    assert [order[pid] for pid in ids] == sorted(order[pid] for pid in ids)
    row_of = {pid: i for i, pid in enumerate(table.prompt_ids.tolist())}
    np.testing.assert_array_equal(capped["embedding"], table.embeddings[[row_of[pid] for pid in ids]])
    assert read_split_columns(tmp_path, columns, split="val", max_rows=7, seed=3)["prompt_id"].tolist() == ids
    assert read_split_columns(tmp_path, columns, split="val", max_rows=7, seed=4)["prompt_id"].tolist() != ids
    # the cap applies after exclude_tasks
    only_a = read_split_columns(tmp_path, columns, split="val", exclude_tasks=["b"], max_rows=5)
    assert len(only_a["prompt_id"]) == 5 and set(only_a["task"].tolist()) == {"a"}


def test_read_split_columns_parts_are_disjoint_and_cover_the_split(tmp_path):
    """`part=(rank, world)`: a training worker's share of the train split, read straight from the shards."""
    table = assign_validation_split(make_table({"a": (50, 5), "b": (31, 5)}, embed_dim=4), 0.2)
    write_shards(table, tmp_path, num_shards=3)
    columns = ["prompt_id", "task", "embedding"]
    whole = read_split_columns(tmp_path, columns, split="train")["prompt_id"].tolist()
    for world in (1, 2, 3):
        parts = [read_split_columns(tmp_path, columns, split="train", part=(r, world)) for r in range(world)]
        ids = [p["prompt_id"].tolist() for p in parts]
        together = [pid for share in ids for pid in share]
        assert sorted(together) == sorted(whole) and len(set(together)) == len(whole)
        assert max(map(len, ids)) - min(map(len, ids)) <= 1  # balanced to one row
        assert ids[0] == whole[::world]  # every world-th row of the split, in shard order
        row_of = {pid: i for i, pid in enumerate(table.prompt_ids.tolist())}
        np.testing.assert_array_equal(parts[-1]["embedding"], table.embeddings[[row_of[p] for p in ids[-1]]])
    # after exclude_tasks, and combined with a row cap (a part of the capped subset)
    only_b = read_split_columns(tmp_path, columns, split="train", exclude_tasks=["a"], part=(1, 2))
    assert set(only_b["task"].tolist()) == {"b"} and len(only_b["prompt_id"]) == int(
        ((table.split == "train") & (table.tasks == "b")).sum() // 2
    )
    capped = read_split_columns(tmp_path, columns, split="train", max_rows=9, seed=1)["prompt_id"].tolist()
    assert read_split_columns(tmp_path, columns, split="train", max_rows=9, seed=1, part=(0, 2))[
        "prompt_id"
    ].tolist() == [capped[i] for i in range(len(capped)) if whole.index(capped[i]) % 2 == 0]
    with pytest.raises(ValueError, match="part must be"):
        read_split_columns(tmp_path, columns, split="train", part=(2, 2))


def test_rewrite_removes_stale_shards_and_caps_shard_count(tmp_path):
    write_shards(make_table({"a": (20, 5)}), tmp_path, num_shards=4)
    small = make_table({"a": (1, 1)})
    write_shards(small, tmp_path, num_shards=4, validation_report={"dropped": {}})
    shard_names = sorted(p.name for p in tmp_path.glob("part-*.parquet"))
    assert shard_names == ["part-00000.parquet", "part-00001.parquet"]
    assert read_manifest(tmp_path)["validation"] == {"dropped": {}}
    assert len(read_shards(tmp_path)) == 2


def test_read_shards_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no manifest\.json; .*barp prepare"):
        read_shards(tmp_path)
    write_shards(make_table({"a": (4, 2)}), tmp_path, num_shards=2)
    (tmp_path / "part-00001.parquet").unlink()
    with pytest.raises(ValueError, match=r"part-00001\.parquet.*missing"):
        read_shards(tmp_path)


# ---- Ray Data read-back -------------------------------------------------------------------------------


@pytest.mark.ray
def test_read_shards_ray_roundtrip(tmp_path, ray_cluster):
    table = assign_validation_split(make_table({"a": (40, 10), "b": (20, 6)}, embed_dim=4), 0.25)
    write_shards(table, tmp_path, num_shards=3)
    models = read_manifest(tmp_path)["models"]
    columns = ["prompt_id", "prompt", "task", "scores", "costs", "embedding"]
    val_ds = read_shards_ray(tmp_path, split="val", columns=columns).materialize()  # one execution
    assert sorted(val_ds.schema().names) == sorted([*columns, "split"])  # the filter column is kept

    val = dataset_to_table(val_ds, models)
    expected = table.where_split("val")
    assert len(val) == len(expected) == 15 and set(val.split) == {"val"}
    order = {pid: i for i, pid in enumerate(val.prompt_ids.tolist())}
    aligned = val.take([order[pid] for pid in expected.prompt_ids.tolist()])  # block order may differ
    assert aligned.prompts == expected.prompts and aligned.tasks.tolist() == expected.tasks.tolist()
    np.testing.assert_array_equal(aligned.scores, expected.scores)
    np.testing.assert_array_equal(aligned.costs, expected.costs)
    np.testing.assert_array_equal(aligned.embeddings, expected.embeddings)


# ---- prepare ------------------------------------------------------------------------------------------


def write_generic(root, n_train: int, n_test: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, n, start in (("train", n_train, 0), ("test", n_test, 100)):
        frame = pd.DataFrame(
            {
                "prompt_id": [f"q{i}" for i in range(start, start + n)],
                "prompt": [f"question {i}" for i in range(start, start + n)],
                "task": ["qa", "math"] * (n // 2) + ["qa"] * (n % 2),
                "score|small": 0.0,
                "score|large": 1.0,
                "input_tokens|small": 100,
                "output_tokens|small": 10,
                "cost|large": 0.01,
            }
        )
        frame.to_csv(root / f"all_{name}.csv", index=False)


def test_prepare_writes_validated_split_shards(tmp_path):
    write_generic(tmp_path / "raw", 40, 10)
    prices_file = tmp_path / "prices.yaml"
    prices_file.write_text("small: [0.1, 0.2]\n")
    config = PrepareConfig(data_dir=tmp_path / "raw", out_dir=tmp_path / "out", num_shards=2, prices_file=prices_file)
    result = prepare_from_config(config)
    assert result.counts_per_split == {"train": 34, "val": 6, "test": 10}
    manifest = read_manifest(tmp_path / "out")
    assert manifest["validation"]["kept_per_split"] == {"train": 40, "test": 10}
    assert manifest["prepare"]["val_fraction"] == 0.15 and len(manifest["files"]) == 2
    back = read_shards(tmp_path / "out")
    assert back.split.tolist() == result.table.split.tolist()
    np.testing.assert_allclose(back.costs[:, 0], 100 / 1000 * 0.1 + 10 / 1000 * 0.2)


def test_prepare_config_defaults_and_yaml(tmp_path):
    config = PrepareConfig()
    assert config.data_dir == default_data_dir().resolve()
    assert (config.val_fraction, config.seed, config.num_shards, config.prices_file) == (0.15, 0, 4, None)
    path = tmp_path / "prepare.yaml"
    PrepareConfig(out_dir=tmp_path / "o", seed=7).to_yaml(path)
    loaded = PrepareConfig.from_yaml(path, num_shards=2)
    assert loaded.seed == 7 and loaded.num_shards == 2 and loaded.out_dir == tmp_path / "o"
    with pytest.raises(ValueError):
        PrepareConfig(val_fraction=1.5)


def test_prepare_real_routerbench(routerbench_dir, tmp_path):
    result = prepare(routerbench_dir, tmp_path / "prepared", val_fraction=0.15, seed=0, num_shards=4)
    assert result.counts_per_split == {"train": 1874, "val": 331, "test": 943}
    manifest = read_manifest(tmp_path / "prepared")
    assert manifest["validation"]["dropped"]["missing_score"] == 28
    assert manifest["per_task_split"]["mbpp"] == {"test": 126, "train": 254, "val": 45}
    assert len(read_shards(tmp_path / "prepared")) == 3148
