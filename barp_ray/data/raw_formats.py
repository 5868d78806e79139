"""Raw routing-log file formats: reading one file into a frame, detecting its format, parsing its columns.

RouterBench wide format (CSV, or the public release's ``routerbench_0shot.pkl`` DataFrame)
    ``sample_id``, ``prompt`` (a Python list literal of strings, joined with newlines), ``eval_name`` (task),
    one score column per model named by the model id, ``<model>|total_cost`` and optionally
    ``<model>|model_response``. A model is every column ``X`` for which ``X|total_cost`` exists.

Generic wide format (parquet or CSV; pickle of a DataFrame works too)
    ``prompt`` (plain text), ``task``, optional ``prompt_id``, optional ``split``; per model
    ``score|<model>`` and either ``cost|<model>`` (USD) or ``input_tokens|<model>`` +
    ``output_tokens|<model>`` together with a ``prices={model: (usd_per_1k_input, usd_per_1k_output)}``
    argument (``load_prices`` reads them from YAML/JSON); optionally ``response|<model>``.
    When both are available the recorded ``cost|<model>`` wins over the price-derived cost.

Parsers return *raw, unvalidated* values; ``barp_ray.data.readers`` turns them into a ``RawLoad``.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

DATA_SUFFIXES = (".csv", ".parquet", ".pq", ".pkl", ".pickle")

# RouterBench column conventions
RB_COST = "|total_cost"
RB_RESPONSE = "|model_response"
# generic wide-format column prefixes
G_SCORE, G_COST, G_RESPONSE = "score|", "cost|", "response|"
G_IN_TOKENS, G_OUT_TOKENS = "input_tokens|", "output_tokens|"

Prices = Mapping[str, tuple[float, float]]

FORMAT_HELP = (
    "expected either RouterBench's wide format (prompt, eval_name, sample_id, one score column per model and "
    "'<model>|total_cost') or the generic wide format (prompt, task, optional prompt_id/split, "
    "'score|<model>' and 'cost|<model>' per model); see barp_ray/data/raw_formats.py"
)


# ---- small helpers ---------------------------------------------------------------------------------


def _join_text(value: object) -> str | None:
    """Text, a list of strings, or a Python list literal of strings -> one string (None if empty)."""
    text = plain_text(value)
    if text is None or isinstance(value, (list, tuple, np.ndarray)):
        return text
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            parsed = ast.literal_eval(stripped)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(parsed, (list, tuple)):
            return "\n".join(str(v) for v in parsed)
    return text


def plain_text(value: object) -> str | None:
    """A generic-format text cell as a string (None if empty); list-like objects are joined with newlines."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return "\n".join(str(v) for v in value)
    if isinstance(value, float) and np.isnan(value):
        return None
    return str(value)


def _numeric(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Columns as an (N, len(columns)) float64 matrix; empty or non-numeric cells become NaN."""
    if not columns:
        return np.zeros((len(frame), 0), dtype=np.float64)
    block = frame[columns].apply(pd.to_numeric, errors="coerce")
    return block.to_numpy(dtype=np.float64, na_value=np.nan)


def load_prices(path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """Per-model token prices from YAML/JSON: ``{model: [usd_per_1k_input, usd_per_1k_output]}`` or
    ``{model: {input: ..., output: ...}}``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the prices file ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a mapping model -> [usd_per_1k_input, usd_per_1k_output], got {type(data).__name__}"
        )
    prices: dict[str, tuple[float, float]] = {}
    for model, value in data.items():
        try:
            if isinstance(value, dict):
                pair = (float(value["input"]), float(value["output"]))
            else:
                usd_in, usd_out = value
                pair = (float(usd_in), float(usd_out))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{path}: price of {model!r} must be [usd_per_1k_input, usd_per_1k_output] or "
                f"{{input: ..., output: ...}}, got {json.dumps(value, default=str)}"
            ) from exc
        prices[str(model)] = pair
    return prices


# ---- file reading ------------------------------------------------------------------------------------


PICKLE_SUFFIXES = (".pkl", ".pickle")


def check_pickle_allowed(path: str | os.PathLike, allow_pickle: bool) -> None:
    """Refuse to unpickle `path` unless the caller opted in: unpickling runs code from the file."""
    if Path(path).suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise ValueError(
            f"{path}: a pickle file; reading it runs code stored in it, so it is read only on request: pass "
            "--allow-pickle (allow_pickle: true) if you trust the file, or convert it to parquet"
        )


def read_frame(path: str | os.PathLike, allow_pickle: bool = False) -> pd.DataFrame:
    """One data file (.csv, .parquet, .pkl) as a pandas DataFrame; a clear ValueError if it cannot be read.

    Pickle files are read only with ``allow_pickle=True`` (see `check_pickle_allowed`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    check_pickle_allowed(path, allow_pickle)
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".pkl", ".pickle"):
            frame = pd.read_pickle(path)
        else:
            raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(DATA_SUFFIXES)}")
    except Exception as exc:  # parser, pickle and IO errors all mean "unreadable"
        if isinstance(exc, ValueError) and str(exc).startswith(str(path)):
            raise
        reason = f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{path}: cannot read the file ({reason}); {FORMAT_HELP}") from exc
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{path}: expected a pandas DataFrame, the file holds a {type(frame).__name__}; {FORMAT_HELP}")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def detect_format(frame: pd.DataFrame) -> str:
    """'routerbench' if a ``<model>|total_cost`` column exists, 'generic' if a ``score|<model>``, else ''."""
    columns = list(frame.columns)
    if any(c.endswith(RB_COST) for c in columns):
        return "routerbench"
    if any(c.startswith(G_SCORE) for c in columns):
        return "generic"
    return ""


def require_columns(frame: pd.DataFrame, path: Path, fmt: str) -> tuple[str, str]:
    """Check the prompt and task columns exist; returns their names."""
    task_candidates = ("eval_name", "task") if fmt == "routerbench" else ("task", "eval_name")
    task_column = next((c for c in task_candidates if c in frame.columns), None)
    missing = []
    if "prompt" not in frame.columns:
        missing.append("'prompt' (the prompt text)")
    if task_column is None:
        missing.append("'task' or 'eval_name' (the task of each prompt)")
    if missing:
        raise ValueError(
            f"{path}: missing required column(s) {' and '.join(missing)}; add them to the file. "
            f"Columns found: {list(frame.columns)[:12]}{' ...' if len(frame.columns) > 12 else ''}"
        )
    return "prompt", task_column


def parse_routerbench(
    frame: pd.DataFrame, path: Path, with_responses: bool
) -> tuple[list[str], dict[str, np.ndarray | list]]:
    columns = list(frame.columns)
    cost_models = [c[: -len(RB_COST)] for c in columns if c.endswith(RB_COST)]
    # model order: the order of the score columns in the file (cost columns may be in another order)
    models = [c for c in columns if c in set(cost_models)]
    missing_scores = [m for m in cost_models if m not in columns]
    if missing_scores:
        raise ValueError(
            f"{path}: model(s) {missing_scores} have a '<model>|total_cost' column but no score column named "
            "by the model id; add the score column or drop the cost column"
        )
    if not models:
        raise ValueError(f"{path}: no model columns found; {FORMAT_HELP}")
    prompt_col, task_col = require_columns(frame, path, "routerbench")
    prompts_raw = [_join_text(v) for v in frame[prompt_col].tolist()]
    parsed: dict[str, np.ndarray | list] = {
        "prompts_raw": prompts_raw,
        "ids": frame["sample_id"]
        if "sample_id" in columns
        else (frame["prompt_id"] if "prompt_id" in columns else None),
        "tasks": frame[task_col],
        "scores": _numeric(frame, models),
        "costs": _numeric(frame, [m + RB_COST for m in models]),
    }
    if with_responses:
        parsed["responses"] = _responses(frame, models, RB_RESPONSE, suffix=True, parse=_join_text)
    return models, parsed


def parse_generic(
    frame: pd.DataFrame, path: Path, prices: Prices | None, with_responses: bool
) -> tuple[list[str], dict[str, np.ndarray | list]]:
    columns = list(frame.columns)
    models = [c[len(G_SCORE) :] for c in columns if c.startswith(G_SCORE)]
    if not models:
        raise ValueError(f"{path}: no model columns found; {FORMAT_HELP}")
    cost_only = [c[len(G_COST) :] for c in columns if c.startswith(G_COST) and c[len(G_COST) :] not in models]
    if cost_only:
        raise ValueError(
            f"{path}: model(s) {cost_only} have a 'cost|<model>' column but no 'score|<model>' column; "
            "add the score column or drop the cost column"
        )
    prompt_col, task_col = require_columns(frame, path, "generic")
    prices = dict(prices or {})
    costs = np.full((len(frame), len(models)), np.nan)
    problems = []
    for k, model in enumerate(models):
        if G_COST + model in columns:
            costs[:, k] = _numeric(frame, [G_COST + model])[:, 0]
            continue
        has_tokens = G_IN_TOKENS + model in columns and G_OUT_TOKENS + model in columns
        if has_tokens and model in prices:
            usd_in, usd_out = prices[model]
            tokens = _numeric(frame, [G_IN_TOKENS + model, G_OUT_TOKENS + model])
            costs[:, k] = tokens[:, 0] / 1000.0 * usd_in + tokens[:, 1] / 1000.0 * usd_out
        elif has_tokens:
            problems.append(f"{model!r} has token columns but no entry in prices")
        else:
            problems.append(
                f"{model!r} has a score column but no 'cost|{model}' column (nor "
                f"'input_tokens|{model}'/'output_tokens|{model}' with prices)"
            )
    if problems:
        raise ValueError(
            f"{path}: no cost for model(s): {'; '.join(problems)}. Add a 'cost|<model>' column in USD, or "
            "'input_tokens|<model>' and 'output_tokens|<model>' columns plus "
            "prices={model: (usd_per_1k_input, usd_per_1k_output)} (CLI: --prices-file)"
        )
    prompts_raw = [plain_text(v) for v in frame[prompt_col].tolist()]
    parsed: dict[str, np.ndarray | list] = {
        "prompts_raw": prompts_raw,
        "ids": frame["prompt_id"]
        if "prompt_id" in columns
        else (frame["sample_id"] if "sample_id" in columns else None),
        "tasks": frame[task_col],
        "scores": _numeric(frame, [G_SCORE + m for m in models]),
        "costs": costs,
    }
    if with_responses:
        parsed["responses"] = _responses(frame, models, G_RESPONSE, suffix=False, parse=plain_text)
    return models, parsed


def _responses(frame: pd.DataFrame, models: list[str], marker: str, suffix: bool, parse) -> np.ndarray:
    out = np.full((len(frame), len(models)), None, dtype=object)
    for k, model in enumerate(models):
        column = model + marker if suffix else marker + model
        if column in frame.columns:
            out[:, k] = [parse(v) for v in frame[column].tolist()]
    return out
