"""Validation: one test per drop rule with exact counts, the report, and the real RouterBench figures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from barp_ray.data.readers import load_raw
from barp_ray.data.table import RoutingTable
from barp_ray.data.validation import DROP_REASONS, ValidationReport, validate

MODELS = ["small", "large"]


def rows(n: int, split: str = "train", task: str = "qa", start: int = 0) -> pd.DataFrame:
    """n clean generic-format rows with ids/prompts numbered from `start`."""
    index = range(start, start + n)
    return pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in index],
            "prompt": [f"prompt {i}" for i in index],
            "task": task,
            "split": split,
            "score|small": 0.5,
            "score|large": 1.0,
            "cost|small": 0.001,
            "cost|large": 0.01,
        }
    )


def run(tmp_path, *frames: pd.DataFrame) -> tuple[RoutingTable, ValidationReport]:
    path = tmp_path / "logs.parquet"
    pd.concat(frames, ignore_index=True).to_parquet(path, index=False)
    return validate(load_raw(path))


def only_drops(report: ValidationReport) -> dict[str, int]:
    return {reason: count for reason, count in report.dropped.items() if count}


def test_clean_rows_all_kept(tmp_path):
    table, report = run(tmp_path, rows(5), rows(3, "test", start=10))
    assert len(table) == 8 and only_drops(report) == {}
    assert report.kept_per_split == {"train": 5, "test": 3}
    assert report.kept_per_task == {"qa": 8}
    assert list(report.dropped) == list(DROP_REASONS)
    assert table.models == MODELS
    assert table.scores.dtype == np.float32 and table.costs.dtype == np.float64


def test_missing_scores(tmp_path):
    frame = rows(6)
    frame.loc[1, "score|small"] = np.nan
    frame.loc[4, "score|large"] = np.nan
    table, report = run(tmp_path, frame)
    assert only_drops(report) == {"missing_score": 2}
    assert sorted(table.prompt_ids) == ["p0", "p2", "p3", "p5"]
    assert report.examples["missing_score"] == ["logs.parquet:1", "logs.parquet:4"]


def test_non_numeric_score_counts_as_missing(tmp_path):
    frame = rows(3)
    frame.to_csv(tmp_path / "logs.csv", index=False)
    text = (tmp_path / "logs.csv").read_text().replace("prompt 1,qa,train,0.5", "prompt 1,qa,train,n/a")
    (tmp_path / "logs.csv").write_text(text)
    _, report = validate(load_raw(tmp_path / "logs.csv"))
    assert only_drops(report) == {"missing_score": 1}


def test_scores_outside_unit_interval(tmp_path):
    frame = rows(5)
    frame.loc[0, "score|small"] = 1.5
    frame.loc[3, "score|large"] = -0.1
    frame.loc[4, "score|large"] = 1.0  # the boundary is fine
    table, report = run(tmp_path, frame)
    assert only_drops(report) == {"score_out_of_range": 2}
    assert sorted(table.prompt_ids) == ["p1", "p2", "p4"]


def test_missing_and_non_finite_costs(tmp_path):
    frame = rows(5)
    frame.loc[0, "cost|large"] = np.nan
    frame.loc[2, "cost|small"] = np.inf
    _, report = run(tmp_path, frame)
    assert only_drops(report) == {"missing_cost": 2}


def test_negative_costs(tmp_path):
    frame = rows(4)
    frame.loc[3, "cost|small"] = -0.001
    frame.loc[2, "cost|large"] = 0.0  # free is fine
    table, report = run(tmp_path, frame)
    assert only_drops(report) == {"negative_cost": 1}
    assert len(table) == 3


def test_duplicate_prompt_text_within_split_keeps_first(tmp_path):
    frame = rows(5)
    frame.loc[2, "prompt"] = "prompt 0"
    frame.loc[4, "prompt"] = "prompt 0"
    table, report = run(tmp_path, frame)
    assert only_drops(report) == {"duplicate_prompt_text": 2}
    assert sorted(table.prompt_ids) == ["p0", "p1", "p3"]


def test_duplicate_prompt_id_within_split_keeps_first(tmp_path):
    frame = rows(4)
    frame.loc[3, "prompt_id"] = "p1"
    table, report = run(tmp_path, frame)
    assert only_drops(report) == {"duplicate_prompt_id": 1}
    assert table.prompts[table.prompt_ids.tolist().index("p1")] == "prompt 1"


def test_duplicates_within_test_split(tmp_path):
    test = rows(3, "test", start=10)
    test.loc[2, "prompt_id"] = "p10"
    _, report = run(tmp_path, rows(2), test)
    assert only_drops(report) == {"duplicate_prompt_id": 1}
    assert report.kept_per_split == {"train": 2, "test": 2}


def test_leakage_by_prompt_text_drops_from_test(tmp_path):
    test = rows(4, "test", start=10)
    test.loc[1, "prompt"] = "prompt 0"  # same text as a train prompt, different id
    test.loc[3, "prompt"] = "prompt 2"
    _table, report = run(tmp_path, rows(3), test)
    assert only_drops(report) == {"leaked_prompt_text": 2}
    assert report.kept_per_split == {"train": 3, "test": 2}


def test_leakage_by_prompt_id_drops_from_test(tmp_path):
    test = rows(3, "test", start=10)
    test.loc[0, "prompt_id"] = "p1"  # same id as a train prompt, different text
    table, report = run(tmp_path, rows(3), test)
    assert only_drops(report) == {"leaked_prompt_id": 1}
    assert "p1" in table.where_split("train").prompt_ids
    assert len(set(table.prompt_ids.tolist())) == len(table)


def test_bad_row_never_takes_good_rows_down(tmp_path):
    train = rows(3)
    train.loc[0, "score|small"] = np.nan  # bad first copy of p0 ...
    train = pd.concat([train, rows(1)], ignore_index=True)  # ... then a good copy of p0 (same id and text)
    test = rows(2, "test", start=10)
    train.loc[1, "score|large"] = np.nan  # bad train row p1 ...
    test.loc[0, ["prompt_id", "prompt"]] = ["p1", "prompt 1"]  # ... so the good test p1 is not a leak
    table, report = run(tmp_path, train, test)
    assert only_drops(report) == {"missing_score": 2}
    assert sorted(table.where_split("train").prompt_ids) == ["p0", "p2"]
    assert sorted(table.where_split("test").prompt_ids) == ["p1", "p11"]


def test_each_row_counted_once_under_first_reason(tmp_path):
    frame = rows(3)
    frame.loc[1, "score|small"] = np.nan
    frame.loc[1, "cost|small"] = -1.0
    frame.loc[1, "prompt"] = "prompt 0"
    _, report = run(tmp_path, frame)
    assert only_drops(report) == {"missing_score": 1}
    assert report.rows_read == 3 and report.rows_kept == 2 and report.rows_dropped == 1


def test_unknown_split_and_missing_prompt(tmp_path):
    frame = rows(4)
    frame.loc[0, "split"] = "holdout"
    frame.loc[1, "prompt"] = None
    frame.loc[2, "task"] = ""
    _, report = run(tmp_path, frame)
    assert only_drops(report) == {"unknown_split": 1, "missing_prompt": 1, "missing_task": 1}


def test_val_rows_are_merged_into_train(tmp_path):
    table, report = run(tmp_path, rows(3), rows(2, "val", start=5), rows(1, "test", start=9))
    assert set(table.split.tolist()) == {"train", "test"}
    assert report.kept_per_split == {"train": 5, "test": 1}
    assert report.val_rows_merged_into_train == 2
    assert report.read_per_split == {"test": 1, "train": 3, "val": 2}


def test_per_task_counts(tmp_path):
    other = rows(2, task="math", start=20)
    other.loc[0, "score|small"] = 2.0
    _, report = run(tmp_path, rows(3), other, rows(2, "test", task="math", start=30))
    assert report.kept_per_task == {"math": 3, "qa": 3}
    assert report.kept_per_task_split == {"math": {"test": 2, "train": 1}, "qa": {"train": 3}}
    assert report.dropped_per_task == {"math": {"score_out_of_range": 1}}


def test_no_surviving_rows_is_a_clear_error(tmp_path):
    frame = rows(2)
    frame["score|small"] = np.nan
    with pytest.raises(ValueError, match=r"no rows survive validation of 2 rows .*missing_score=2"):
        run(tmp_path, frame)


def test_report_dict_and_markdown(tmp_path):
    frame = rows(3)
    frame.loc[0, "cost|small"] = -1.0
    _, report = run(tmp_path, frame, rows(1, "test", start=8))
    as_dict = report.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["dropped"]["negative_cost"] == 1 and as_dict["kept_per_split"] == {"train": 2, "test": 1}
    text = report.to_markdown()
    assert "read 4 rows, kept 3, dropped 1" in text
    assert "| negative_cost | 1 |" in text and "| qa | 2 | 1 | 3 |" in text
    assert str(report) == text


def test_output_keeps_responses(tmp_path):
    frame = rows(3)
    frame["response|large"] = ["a", "b", "c"]
    frame.loc[1, "score|small"] = np.nan
    frame.to_parquet(tmp_path / "r.parquet")
    table, _ = validate(load_raw(tmp_path / "r.parquet", with_responses=True))
    assert table.responses[:, 1].tolist() == ["a", "c"]


# ---- real RouterBench data -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_validated(routerbench_dir) -> tuple[RoutingTable, ValidationReport]:
    return validate(load_raw(routerbench_dir))


def test_real_drop_counts(real_validated):
    """All 28 empty-score rows are the README's duplicated ARC ids (14 split pairs: 7 inside train,
    6 across train/test, 1 inside test), so once they go no id duplicate or id leak is left; 2 MBPP test
    prompts have the same text as train prompts (under other ids)."""
    _, report = real_validated
    assert only_drops(report) == {"missing_score": 28, "leaked_prompt_text": 2}
    assert report.dropped_per_task == {
        "arc-challenge": {"missing_score": 28},
        "mbpp": {"leaked_prompt_text": 2},
    }
    assert report.rows_read == 3178 and report.rows_kept == 3148


def test_real_kept_counts(real_validated):
    table, report = real_validated
    assert table.num_models == 11
    assert report.kept_per_split == {"train": 2205, "test": 943}
    assert report.kept_per_task_split == {
        "arc-challenge": {"test": 437, "train": 1019},
        "mbpp": {"test": 126, "train": 299},
        "winogrande": {"test": 380, "train": 887},
    }
    assert len(set(table.prompt_ids.tolist())) == len(table)
    assert np.all((table.scores >= 0) & (table.scores <= 1)) and np.all(table.costs >= 0)


def test_real_gpt4_reference_after_validation(real_validated):
    """README's 0.8794 / $0.005003 is over the 945 complete test rows; validation also drops the 2 leaked
    MBPP prompts, which moves the kept-test figure to 0.8802 / $0.004993 over 943 rows."""
    table, _ = real_validated
    test = table.where_split("test")
    k = table.models.index("gpt-4-1106-preview")
    assert len(test) == 943
    assert test.scores[:, k].mean() == pytest.approx(0.8802, abs=5e-4)
    assert test.costs[:, k].mean() == pytest.approx(0.004993, abs=5e-7)
