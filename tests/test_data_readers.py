"""Readers: RouterBench CSV / pickle, the generic wide format, the directory loader and malformed inputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from barp_ray.config import default_data_dir
from barp_ray.data.raw_formats import load_prices
from barp_ray.data.readers import RawLoad, load_raw, read_file
from barp_ray.data.table import prompt_hash

MODELS = ["model-b", "org/model-a", "model-c"]  # score-column order (not sorted on purpose)


def routerbench_frame(task: str, n: int, start: int = 0, seed: int = 0) -> pd.DataFrame:
    """A small RouterBench-style wide frame: list-literal prompts, score/response/cost columns per model."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(start, start + n):
        row = {
            "sample_id": f"{task}.{i}",
            "prompt": str([f"Question {i} of {task}?", "Answer:"]),
            "eval_name": task,
        }
        for m in MODELS:
            row[m] = float(rng.integers(0, 2))
        for m in reversed(MODELS):  # cost/response columns in another order than the score columns
            row[f"{m}|model_response"] = str([f"answer {i} by {m}"])
        for m in reversed(MODELS):
            row[f"{m}|total_cost"] = 0.001 * (1 + MODELS.index(m)) + 1e-6 * i
        row["oracle_model_to_route_to"] = MODELS[0]
        rows.append(row)
    return pd.DataFrame(rows)


def write_routerbench_dir(root, sizes: dict[str, tuple[int, int]]):
    """<task>_train.csv / <task>_test.csv per task, with the unnamed index column RouterBench has."""
    root.mkdir(parents=True, exist_ok=True)
    for task, (n_train, n_test) in sizes.items():
        stem = task.replace("-", "_")
        routerbench_frame(task, n_train, 0).to_csv(root / f"{stem}_train.csv")
        routerbench_frame(task, n_test, 1000, seed=1).to_csv(root / f"{stem}_test.csv")
    return root


def generic_frame(n: int = 4, split: str | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(n)],
            "prompt": [f"plain prompt [{i}]" for i in range(n)],
            "task": ["qa"] * n,
            "score|small": np.linspace(0, 1, n),
            "score|large": np.ones(n),
            "cost|small": np.full(n, 0.0001),
            "cost|large": np.full(n, 0.002),
        }
    )
    if split is not None:
        frame["split"] = split
    return frame


# ---- RouterBench --------------------------------------------------------------------------------------


def test_routerbench_directory_of_train_test_files(tmp_path):
    root = write_routerbench_dir(tmp_path / "rb", {"arc-challenge": (5, 3), "mbpp": (4, 2)})
    (root / "README.md").write_text("not data")  # ignored
    raw = load_raw(root)
    assert isinstance(raw, RawLoad)
    assert len(raw) == 14
    assert raw.models == MODELS  # score-column order, not the cost-column order
    assert sorted(set(raw.tasks.tolist())) == ["arc-challenge", "mbpp"]
    assert (raw.split == "train").sum() == 9 and (raw.split == "test").sum() == 5
    i = raw.prompt_ids.tolist().index("mbpp.1")
    assert raw.prompts[i] == "Question 1 of mbpp?\nAnswer:"
    assert raw.split[i] == "train" and raw.tasks[i] == "mbpp"
    np.testing.assert_allclose(raw.costs[i], [0.001 + 1e-6, 0.002 + 1e-6, 0.003 + 1e-6])
    assert raw.scores.shape == (14, 3) and raw.scores.dtype == np.float64
    assert raw.responses is None  # only on request
    assert raw.sources[i] == "mbpp_train.csv:1"
    assert len(raw.files) == 4
    frame = raw.to_frame()
    assert list(frame.columns[:5]) == ["prompt_id", "split", "task", "prompt", "source"]
    assert "score|org/model-a" in frame.columns and "cost|model-c" in frame.columns


def test_routerbench_responses_on_request(tmp_path):
    root = write_routerbench_dir(tmp_path / "rb", {"mbpp": (2, 1)})
    raw = load_raw(root, with_responses=True)
    assert raw.responses.shape == (3, 3)
    i = raw.prompt_ids.tolist().index("mbpp.0")
    assert raw.responses[i, MODELS.index("model-c")] == "answer 0 by model-c"


def test_routerbench_prompt_that_is_not_a_list_literal_is_kept_verbatim(tmp_path):
    frame = routerbench_frame("mbpp", 3)
    frame.loc[0, "prompt"] = "plain text, not a list"
    frame.loc[1, "prompt"] = "[broken literal"
    frame.to_csv(tmp_path / "mbpp_train.csv")
    raw = load_raw(tmp_path / "mbpp_train.csv")
    assert raw.prompts[:2] == ["plain text, not a list", "[broken literal"]
    assert raw.prompts[2] == "Question 2 of mbpp?\nAnswer:"


def test_routerbench_empty_score_cells_are_nan(tmp_path):
    frame = routerbench_frame("arc-challenge", 3)
    frame.loc[1, "model-b"] = np.nan
    frame.to_csv(tmp_path / "arc_train.csv")
    raw = load_raw(tmp_path / "arc_train.csv")
    assert np.isnan(raw.scores[1, 0]) and not np.isnan(raw.scores[[0, 2]]).any()


def test_routerbench_pickle_with_split_column(tmp_path):
    frame = routerbench_frame("mbpp", 4)
    frame["prompt"] = [[f"pickled {i}", "second line"] for i in range(4)]  # real lists in the pickle
    frame["split"] = ["train", "train", "test", "Validation"]
    frame.to_pickle(tmp_path / "routerbench_0shot.pkl")
    with pytest.raises(ValueError, match=r"routerbench_0shot\.pkl: a pickle file.*--allow-pickle"):
        load_raw(tmp_path / "routerbench_0shot.pkl")  # unpickling runs code: only on request
    raw = load_raw(tmp_path / "routerbench_0shot.pkl", allow_pickle=True)
    assert raw.prompts[0] == "pickled 0\nsecond line"
    assert raw.split.tolist() == ["train", "train", "test", "val"]
    assert raw.models == MODELS


def test_pickle_without_split_needs_test_fraction(tmp_path):
    path = tmp_path / "routerbench_0shot.pkl"
    pd.concat([routerbench_frame("mbpp", 10), routerbench_frame("arc", 10)]).to_pickle(path)
    with pytest.raises(ValueError, match=r"routerbench_0shot\.pkl.*no split.*test_fraction"):
        load_raw(path, allow_pickle=True)
    raw = load_raw(path, test_fraction=0.3, seed=0, allow_pickle=True)
    for task in ("mbpp", "arc"):
        assert ((raw.tasks == task) & (raw.split == "test")).sum() == 3
    again = load_raw(path, test_fraction=0.3, seed=0, allow_pickle=True)
    assert raw.split.tolist() == again.split.tolist()


def test_models_argument_selects_and_orders(tmp_path):
    root = write_routerbench_dir(tmp_path / "rb", {"mbpp": (2, 1)})
    raw = load_raw(root, models=["model-c", "model-b"])
    full = load_raw(root)
    assert raw.models == ["model-c", "model-b"]
    np.testing.assert_array_equal(raw.scores, full.scores[:, [2, 0]])


# ---- generic wide format ----------------------------------------------------------------------------------


def test_generic_parquet_single_file_with_split_column(tmp_path):
    test_rows = generic_frame(2, "test").assign(prompt_id=["t0", "t1"])
    frame = pd.concat([generic_frame(4, "train"), test_rows], ignore_index=True)
    frame.loc[frame.index[-1], "split"] = "Validation"
    frame.to_parquet(tmp_path / "logs.parquet", index=False)
    raw = load_raw(tmp_path / "logs.parquet")
    assert raw.models == ["small", "large"]
    assert raw.split.tolist() == ["train"] * 4 + ["test", "val"]
    assert raw.prompts[1] == "plain prompt [1]"  # generic prompts are plain text, never literal-parsed
    np.testing.assert_allclose(raw.costs[0], [0.0001, 0.002])


def test_generic_directory_csv_and_parquet_mixed(tmp_path):
    generic_frame(3).to_csv(tmp_path / "qa_train.csv", index=False)
    generic_frame(2).assign(prompt_id=["x", "y"]).to_parquet(tmp_path / "qa_test.parquet")
    raw = load_raw(tmp_path)
    assert (raw.split == "train").sum() == 3 and (raw.split == "test").sum() == 2


def test_generic_costs_from_token_prices(tmp_path):
    frame = generic_frame(2, "train").drop(columns=["cost|small"])
    frame["input_tokens|small"] = [1000, 2000]
    frame["output_tokens|small"] = [500, 0]
    frame["input_tokens|large"] = [1, 1]  # large keeps its recorded cost column, which wins
    frame["output_tokens|large"] = [1, 1]
    frame.to_csv(tmp_path / "qa.csv", index=False)
    prices = {"small": (0.5, 1.5), "large": (100.0, 100.0)}
    raw = load_raw(tmp_path / "qa.csv", prices=prices)
    np.testing.assert_allclose(raw.costs[:, 0], [0.5 + 0.75, 1.0])
    np.testing.assert_allclose(raw.costs[:, 1], [0.002, 0.002])


def test_generic_without_prompt_id_gets_content_ids(tmp_path):
    generic_frame(2, "train").drop(columns=["prompt_id"]).to_csv(tmp_path / "qa.csv", index=False)
    raw = load_raw(tmp_path / "qa.csv")
    expected = [f"h:{prompt_hash(f'plain prompt [{i}]')}" for i in range(2)]
    assert raw.prompt_ids.tolist() == expected


def test_generic_responses(tmp_path):
    frame = generic_frame(2, "train")
    frame["response|large"] = ["yes", "no"]
    frame.to_parquet(tmp_path / "qa.parquet")
    raw = load_raw(tmp_path / "qa.parquet", with_responses=True)
    assert raw.responses[:, 1].tolist() == ["yes", "no"]
    assert raw.responses[:, 0].tolist() == [None, None]


def test_load_prices_yaml_and_json_forms(tmp_path):
    (tmp_path / "p.yaml").write_text("small: [0.5, 1.5]\nlarge: {input: 10, output: 30}\n")
    assert load_prices(tmp_path / "p.yaml") == {"small": (0.5, 1.5), "large": (10.0, 30.0)}
    (tmp_path / "p.json").write_text(json.dumps({"small": [1, 2]}))
    assert load_prices(tmp_path / "p.json") == {"small": (1.0, 2.0)}
    (tmp_path / "bad.yaml").write_text("small: cheap\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*'small'"):
        load_prices(tmp_path / "bad.yaml")


# ---- malformed inputs -----------------------------------------------------------------------------------


def test_missing_prompt_column_is_named(tmp_path):
    routerbench_frame("mbpp", 2).drop(columns=["prompt"]).to_csv(tmp_path / "mbpp_train.csv")
    with pytest.raises(ValueError, match=r"mbpp_train\.csv: missing required column\(s\) 'prompt'"):
        load_raw(tmp_path)


def test_missing_task_column_is_named(tmp_path):
    generic_frame(2, "train").drop(columns=["task"]).to_parquet(tmp_path / "qa.parquet")
    with pytest.raises(ValueError, match=r"qa\.parquet: missing required column\(s\) 'task' or 'eval_name'"):
        load_raw(tmp_path / "qa.parquet")


def test_no_model_columns(tmp_path):
    pd.DataFrame({"prompt": ["a"], "task": ["t"], "split": ["train"]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(ValueError, match=r"x\.csv: no model columns found"):
        load_raw(tmp_path / "x.csv")


def test_generic_score_without_cost_is_named(tmp_path):
    generic_frame(2, "train").drop(columns=["cost|large"]).to_csv(tmp_path / "qa.csv", index=False)
    message = r"qa\.csv: no cost for model\(s\): 'large' has a score column but no 'cost\|large'"
    with pytest.raises(ValueError, match=message):
        load_raw(tmp_path / "qa.csv")


def test_generic_tokens_without_price_is_named(tmp_path):
    frame = generic_frame(2, "train").drop(columns=["cost|large"])
    frame["input_tokens|large"] = 1
    frame["output_tokens|large"] = 1
    frame.to_csv(tmp_path / "qa.csv", index=False)
    message = r"qa\.csv: no cost .*'large' has token columns but no entry in prices"
    with pytest.raises(ValueError, match=message):
        load_raw(tmp_path / "qa.csv", prices={"small": (1.0, 1.0)})


def test_generic_cost_without_score_is_named(tmp_path):
    generic_frame(2, "train").assign(**{"cost|ghost": 1.0}).to_csv(tmp_path / "qa.csv", index=False)
    message = r"qa\.csv: model\(s\) \['ghost'\] have a 'cost\|<model>' column but no 'score\|<model>'"
    with pytest.raises(ValueError, match=message):
        load_raw(tmp_path / "qa.csv")


def test_routerbench_cost_without_score_column_is_named(tmp_path):
    routerbench_frame("mbpp", 2).drop(columns=["model-c"]).to_csv(tmp_path / "mbpp_train.csv")
    message = r"mbpp_train\.csv: model\(s\) \['model-c'\] have a '<model>\|total_cost' column but no score"
    with pytest.raises(ValueError, match=message):
        load_raw(tmp_path)


def test_unreadable_file(tmp_path):
    (tmp_path / "qa_train.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(ValueError, match=r"qa_train\.parquet: cannot read the file"):
        load_raw(tmp_path)


def test_pickle_that_is_not_a_dataframe(tmp_path):
    pd.to_pickle({"not": "a frame"}, tmp_path / "x_train.pkl")
    with pytest.raises(ValueError, match=r"x_train\.pkl: expected a pandas DataFrame, the file holds a dict"):
        load_raw(tmp_path, allow_pickle=True)


def test_empty_directory(tmp_path):
    (tmp_path / "README.md").write_text("no data here")
    with pytest.raises(ValueError, match=r"empty directory .*<task>_train\.csv"):
        load_raw(tmp_path)


def test_no_split_suffix_and_no_split_column(tmp_path):
    routerbench_frame("mbpp", 2).to_csv(tmp_path / "mbpp.csv")
    with pytest.raises(ValueError, match=r"no split for file\(s\) \['mbpp\.csv'\].*'split' column"):
        load_raw(tmp_path)


def test_files_with_different_models(tmp_path):
    routerbench_frame("mbpp", 2).to_csv(tmp_path / "mbpp_train.csv")
    extra = routerbench_frame("mbpp", 2, 10)
    extra["model-d"] = 1.0
    extra["model-d|total_cost"] = 0.1
    extra.to_csv(tmp_path / "mbpp_test.csv")
    with pytest.raises(ValueError, match=r"mbpp_train\.csv: model\(s\) \['model-d'\] missing"):
        load_raw(tmp_path)
    assert load_raw(tmp_path, models=MODELS).models == MODELS


def test_missing_path(tmp_path):
    with pytest.raises(ValueError, match=r"nowhere: no such file or directory"):
        load_raw(tmp_path / "nowhere")


def test_read_file_directly(tmp_path):
    routerbench_frame("mbpp", 2).to_csv(tmp_path / "a.csv")
    raw = read_file(tmp_path / "a.csv", split="test")
    assert raw.split.tolist() == ["test", "test"] and not raw.unsplit.any()


# ---- real RouterBench data -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_raw() -> RawLoad:
    data_dir = default_data_dir()
    if not data_dir.is_dir() or not any(data_dir.glob("*_test.csv")):
        pytest.skip(f"RouterBench data not found at {data_dir} (set BARP_DATA_DIR to the routerbench folder)")
    return load_raw(data_dir)


def test_real_routerbench_shape(real_raw):
    assert real_raw.num_models == 11
    assert "gpt-4-1106-preview" in real_raw.models and "zero-one-ai/Yi-34B-Chat" in real_raw.models
    assert len(real_raw) == 1039 + 445 + 299 + 128 + 887 + 380
    assert sorted(set(real_raw.tasks.tolist())) == ["arc-challenge", "mbpp", "winogrande"]
    assert int(np.isnan(real_raw.scores).any(axis=1).sum()) == 28
    assert not any(p.startswith("['") for p in real_raw.prompts)  # list literals were parsed


def test_real_reference_figures_on_complete_test_rows(real_raw):
    """README: 945 complete test rows; always gpt-4-1106-preview scores 0.8794 at $0.005003."""
    complete_test = (real_raw.split == "test") & ~np.isnan(real_raw.scores).any(axis=1)
    assert complete_test.sum() == 945
    k = real_raw.models.index("gpt-4-1106-preview")
    assert real_raw.scores[complete_test, k].mean() == pytest.approx(0.8794, abs=5e-4)
    assert real_raw.costs[complete_test, k].mean() == pytest.approx(0.005003, abs=5e-7)
