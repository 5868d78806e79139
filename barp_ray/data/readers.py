"""Readers for raw routing logs: RouterBench wide CSV / pickle and a documented generic wide format.

Every reader returns *raw, unvalidated* values (scores may be NaN, costs negative);
``barp_ray.data.validation`` decides what to keep. Entry point: ``load_raw(path) -> RawLoad``.

RouterBench wide format (CSV, or the public release's ``routerbench_0shot.pkl`` DataFrame)
    ``sample_id``, ``prompt`` (a Python list literal of strings, joined with newlines), ``eval_name`` (task),
    one score column per model named by the model id, ``<model>|total_cost`` and optionally
    ``<model>|model_response``. A model is every column ``X`` for which ``X|total_cost`` exists.

Generic wide format (parquet or CSV; pickle of a DataFrame works too)
    ``prompt`` (plain text), ``task``, optional ``prompt_id``, optional ``split``; per model
    ``score|<model>`` and either ``cost|<model>`` (USD) or ``input_tokens|<model>`` +
    ``output_tokens|<model>`` together with a ``prices={model: (usd_per_1k_input, usd_per_1k_output)}``
    argument; optionally ``response|<model>``.
    When both are available the recorded ``cost|<model>`` wins over the price-derived cost.

Splits come from the file name (stem ending in ``_train`` / ``_val`` / ``_test``) or from a ``split`` column
(values train / val / test, case-insensitive; ``validation`` and ``dev`` mean val).
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from barp_ray.data.table import prompt_hash

DATA_SUFFIXES = (".csv", ".parquet", ".pq", ".pkl", ".pickle")
SPLIT_SUFFIXES = {"_train": "train", "_val": "val", "_test": "test"}
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}

# RouterBench column conventions
RB_COST = "|total_cost"
RB_RESPONSE = "|model_response"
# generic wide-format column prefixes
G_SCORE, G_COST, G_RESPONSE = "score|", "cost|", "response|"
G_IN_TOKENS, G_OUT_TOKENS = "input_tokens|", "output_tokens|"

Prices = Mapping[str, tuple[float, float]]

_FORMAT_HELP = (
    "expected either RouterBench's wide format (prompt, eval_name, sample_id, one score column per model and "
    "'<model>|total_cost') or the generic wide format (prompt, task, optional prompt_id/split, "
    "'score|<model>' and 'cost|<model>' per model); see barp_ray/data/readers.py"
)


@dataclass
class RawLoad:
    """Raw rows from one or more files, before validation (RoutingTable-like, but NaNs allowed).

    ``scores``/``costs`` are (N, K) float64 and may hold NaN (missing) or out-of-range values. ``split`` holds
    the normalised split name per row, or the raw value when it is not a known split (validation drops it).
    ``sources`` names the file and 0-based data row of each row (``"arc_challenge_train.csv:17"``).
    """

    prompt_ids: np.ndarray  # (N,) object; generated as "h:<prompt hash>" when the source has no id
    prompts: list[str]  # (N,)
    tasks: np.ndarray  # (N,) object
    split: np.ndarray  # (N,) object
    models: list[str]  # (K,)
    scores: np.ndarray  # (N, K) float64, NaN = missing or non-numeric
    costs: np.ndarray  # (N, K) float64, NaN = missing or non-numeric
    sources: np.ndarray  # (N,) object, "<file name>:<row>"
    files: list[str]  # every file read, in read order
    responses: np.ndarray | None = None  # (N, K) object, when with_responses=True and the source has them
    prompt_missing: np.ndarray | None = None  # (N,) bool, True where the prompt cell was empty
    unsplit: np.ndarray | None = None  # (N,) bool, True for rows of files with no split suffix or column

    def __post_init__(self) -> None:
        if self.prompt_missing is None:
            self.prompt_missing = np.zeros(len(self.prompts), dtype=bool)
        if self.unsplit is None:
            self.unsplit = np.zeros(len(self.prompts), dtype=bool)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_models(self) -> int:
        return len(self.models)

    def to_frame(self) -> pd.DataFrame:
        """The raw rows as one wide pandas frame: ids, split, task, prompt, ``score|m`` and ``cost|m``."""
        frame = pd.DataFrame(
            {
                "prompt_id": self.prompt_ids,
                "split": self.split,
                "task": self.tasks,
                "prompt": self.prompts,
                "source": self.sources,
            }
        )
        scores = pd.DataFrame(self.scores, columns=[G_SCORE + m for m in self.models])
        costs = pd.DataFrame(self.costs, columns=[G_COST + m for m in self.models])
        return pd.concat([frame, scores, costs], axis=1)


# ---- small helpers ---------------------------------------------------------------------------------


def _join_text(value: object) -> str | None:
    """Text, a list of strings, or a Python list literal of strings -> one string (None if empty)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return "\n".join(str(v) for v in value)
    if isinstance(value, float) and np.isnan(value):
        return None
    text = str(value)
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            parsed = ast.literal_eval(stripped)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(parsed, (list, tuple)):
            return "\n".join(str(v) for v in parsed)
    return text


def _plain_text(value: object) -> str | None:
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


def _ids(values: pd.Series | None, prompts: list[str]) -> np.ndarray:
    """Source ids as strings; empty cells (or no id column) get "h:<prompt hash>"."""
    out = np.empty(len(prompts), dtype=object)
    raw = [None] * len(prompts) if values is None else values.tolist()
    for i, (value, prompt) in enumerate(zip(raw, prompts, strict=True)):
        missing = value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""
        out[i] = f"h:{prompt_hash(prompt)}" if missing else str(value).strip()
    return out


def _split_from_stem(stem: str) -> str | None:
    for suffix, split in SPLIT_SUFFIXES.items():
        if stem.lower().endswith(suffix):
            return split
    return None


def _normalise_split(values: pd.Series) -> np.ndarray:
    """Known split names are normalised (e.g. 'Validation' -> 'val'); anything else is kept as text."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values.tolist()):
        text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()
        out[i] = SPLIT_ALIASES.get(text.lower(), text)
    return out


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
        raise ValueError(f"{path}: cannot read the file ({reason}); {_FORMAT_HELP}") from exc
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(
            f"{path}: expected a pandas DataFrame, the file holds a {type(frame).__name__}; {_FORMAT_HELP}"
        )
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


def _require_columns(frame: pd.DataFrame, path: Path, fmt: str) -> tuple[str, str]:
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


def _parse_routerbench(
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
        raise ValueError(f"{path}: no model columns found; {_FORMAT_HELP}")
    prompt_col, task_col = _require_columns(frame, path, "routerbench")
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


def _parse_generic(
    frame: pd.DataFrame, path: Path, prices: Prices | None, with_responses: bool
) -> tuple[list[str], dict[str, np.ndarray | list]]:
    columns = list(frame.columns)
    models = [c[len(G_SCORE) :] for c in columns if c.startswith(G_SCORE)]
    if not models:
        raise ValueError(f"{path}: no model columns found; {_FORMAT_HELP}")
    cost_only = [c[len(G_COST) :] for c in columns if c.startswith(G_COST) and c[len(G_COST) :] not in models]
    if cost_only:
        raise ValueError(
            f"{path}: model(s) {cost_only} have a 'cost|<model>' column but no 'score|<model>' column; "
            "add the score column or drop the cost column"
        )
    prompt_col, task_col = _require_columns(frame, path, "generic")
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
    prompts_raw = [_plain_text(v) for v in frame[prompt_col].tolist()]
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
        parsed["responses"] = _responses(frame, models, G_RESPONSE, suffix=False, parse=_plain_text)
    return models, parsed


def _responses(frame: pd.DataFrame, models: list[str], marker: str, suffix: bool, parse) -> np.ndarray:
    out = np.full((len(frame), len(models)), None, dtype=object)
    for k, model in enumerate(models):
        column = model + marker if suffix else marker + model
        if column in frame.columns:
            out[:, k] = [parse(v) for v in frame[column].tolist()]
    return out


def read_file(
    path: str | os.PathLike,
    split: str | None = None,
    prices: Prices | None = None,
    with_responses: bool = False,
    allow_pickle: bool = False,
) -> RawLoad:
    """Read one RouterBench or generic wide file into a RawLoad.

    ``split`` (from the file name) wins over a ``split`` column; without either the rows' split is "".
    """
    path = Path(path)
    frame = read_frame(path, allow_pickle=allow_pickle)
    fmt = detect_format(frame)
    if fmt == "routerbench":
        models, parsed = _parse_routerbench(frame, path, with_responses)
    elif fmt == "generic":
        models, parsed = _parse_generic(frame, path, prices, with_responses)
    else:
        _require_columns(frame, path, "generic")
        raise ValueError(
            f"{path}: no model columns found (no '<model>|total_cost' and no 'score|<model>' columns); {_FORMAT_HELP}"
        )
    prompts_raw = parsed["prompts_raw"]
    prompt_missing = np.array([p is None or p.strip() == "" for p in prompts_raw], dtype=bool)
    prompts = ["" if p is None else p for p in prompts_raw]
    n = len(frame)
    has_split = split is not None or "split" in frame.columns
    if split is not None:
        splits = np.full(n, split, dtype=object)
    elif "split" in frame.columns:
        splits = _normalise_split(frame["split"])
    else:
        splits = np.full(n, "", dtype=object)
    tasks = np.array([_plain_text(v) or "" for v in parsed["tasks"].tolist()], dtype=object)
    return RawLoad(
        prompt_ids=_ids(parsed["ids"], prompts),
        prompts=prompts,
        tasks=tasks,
        split=splits,
        models=models,
        scores=parsed["scores"],
        costs=parsed["costs"],
        sources=np.array([f"{path.name}:{i}" for i in range(n)], dtype=object),
        files=[str(path)],
        responses=parsed.get("responses"),
        prompt_missing=prompt_missing,
        unsplit=np.full(n, not has_split, dtype=bool),
    )


# ---- combining ----------------------------------------------------------------------------------------


def concat_raw(parts: list[RawLoad], models: list[str] | None = None) -> RawLoad:
    """Row-wise concatenation; every part must have the same models (or a superset of ``models``)."""
    if not parts:
        raise ValueError("nothing to concatenate")
    wanted = list(models) if models is not None else list(parts[0].models)
    for part in parts:
        lacking = [m for m in wanted if m not in part.models]
        if lacking:
            reference = parts[0].files[0] if models is None else "models="
            raise ValueError(
                f"{part.files[0]}: model(s) {lacking} missing (present in {reference}); every file must have "
                "the same models: add their columns, or pass models=[...] to load only the shared ones"
            )
        if models is None:
            extra = [m for m in part.models if m not in wanted]
            if extra:
                raise ValueError(
                    f"{part.files[0]}: model(s) {extra} are not in {parts[0].files[0]}; every file must "
                    "have the same models: add their columns, or pass models=[...] to load only the "
                    "shared ones"
                )

    def columns_of(part: RawLoad, matrix: np.ndarray) -> np.ndarray:
        index = [part.models.index(m) for m in wanted]
        return matrix[:, index]

    with_responses = all(p.responses is not None for p in parts)
    return RawLoad(
        prompt_ids=np.concatenate([p.prompt_ids for p in parts]),
        prompts=[x for p in parts for x in p.prompts],
        tasks=np.concatenate([p.tasks for p in parts]),
        split=np.concatenate([p.split for p in parts]),
        models=wanted,
        scores=np.concatenate([columns_of(p, p.scores) for p in parts]),
        costs=np.concatenate([columns_of(p, p.costs) for p in parts]),
        sources=np.concatenate([p.sources for p in parts]),
        files=[f for p in parts for f in p.files],
        responses=np.concatenate([columns_of(p, p.responses) for p in parts]) if with_responses else None,
        prompt_missing=np.concatenate([p.prompt_missing for p in parts]),
        unsplit=np.concatenate([p.unsplit for p in parts]),
    )


def _assign_test_split(raw: RawLoad, test_fraction: float, seed: int) -> None:
    """Deterministic per-task train/test split of the unsplit rows (by a seeded hash of the prompt id)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    for task in sorted(set(raw.tasks[raw.unsplit].tolist())):
        rows = np.flatnonzero((raw.tasks == task) & raw.unsplit)
        keys = [prompt_hash(f"{seed}:{raw.prompt_ids[i]}:{i}") for i in rows]
        ordered = rows[np.argsort(keys, kind="stable")]
        n_test = round(test_fraction * len(rows))
        raw.split[ordered[:n_test]] = "test"
        raw.split[ordered[n_test:]] = "train"


def load_raw(
    path: str | os.PathLike,
    prices: Prices | None = None,
    with_responses: bool = False,
    models: list[str] | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    allow_pickle: bool = False,
) -> RawLoad:
    """Load raw routing rows from a directory of ``<name>_train`` / ``<name>_test`` files or one file.

    ``path`` is either a directory holding data files (.csv/.parquet/.pkl) whose stem ends in ``_train``,
    ``_val`` or ``_test`` (one file per task, or one in all; other files such as README.md are ignored, data
    files without a split suffix must have a ``split`` column), or a single data file with a ``split`` column.
    ``prices`` turns token counts into costs for the generic format. ``with_responses`` also parses the
    recorded answers (big). ``models`` restricts (and orders) the models loaded. ``test_fraction`` splits
    rows that have no split (e.g. RouterBench's ``routerbench_0shot.pkl``) per task, deterministically by
    ``seed``; without it such rows are an error. ``.pkl`` files are read only with ``allow_pickle``.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"{path}: no such file or directory; point it at the RouterBench CSVs (e.g. $BARP_DATA_DIR) "
            "or a generic wide parquet/CSV file"
        )
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
        if not files:
            raise ValueError(
                f"{path}: empty directory (no .csv, .parquet or .pkl data files); add files named "
                "<task>_train.csv / <task>_test.csv (or one file with a 'split' column)"
            )
        parts = [
            read_file(
                f,
                split=_split_from_stem(f.stem),
                prices=prices,
                with_responses=with_responses,
                allow_pickle=allow_pickle,
            )
            for f in files
        ]
    else:
        parts = [
            read_file(
                path,
                split=_split_from_stem(path.stem),
                prices=prices,
                with_responses=with_responses,
                allow_pickle=allow_pickle,
            )
        ]
    raw = concat_raw(parts, models=models)
    no_split = raw.unsplit
    if no_split.any():
        if test_fraction is not None:
            _assign_test_split(raw, test_fraction, seed)
        else:
            unsplit = sorted({str(s).rsplit(":", 1)[0] for s in raw.sources[no_split]})
            raise ValueError(
                f"{path}: no split for file(s) {unsplit}: neither a '_train'/'_test' suffix in the file "
                "name nor a 'split' column (train/test). Rename the files to <task>_train.csv / "
                "<task>_test.csv, add a 'split' column, or pass test_fraction=0.3 to split each task "
                "deterministically"
            )
    return raw
