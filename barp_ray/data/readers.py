"""Loading raw routing logs: one file or a directory of split files into one ``RawLoad``.

Every reader returns *raw, unvalidated* values (scores may be NaN, costs negative);
``barp_ray.data.validation`` decides what to keep. Entry point: ``load_raw(path) -> RawLoad``.
The file formats (RouterBench wide, generic wide) and their parsing are in ``barp_ray.data.raw_formats``.

Splits come from the file name (stem ending in ``_train`` / ``_val`` / ``_test``) or from a ``split`` column
(values train / val / test, case-insensitive; ``validation`` and ``dev`` mean val).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from barp_ray.data.raw_formats import (
    DATA_SUFFIXES,
    FORMAT_HELP,
    G_COST,
    G_SCORE,
    Prices,
    detect_format,
    parse_generic,
    parse_routerbench,
    plain_text,
    read_frame,
    require_columns,
)
from barp_ray.data.table import prompt_hash

SPLIT_SUFFIXES = {"_train": "train", "_val": "val", "_test": "test"}
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}


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
        models, parsed = parse_routerbench(frame, path, with_responses)
    elif fmt == "generic":
        models, parsed = parse_generic(frame, path, prices, with_responses)
    else:
        require_columns(frame, path, "generic")
        raise ValueError(
            f"{path}: no model columns found (no '<model>|total_cost' and no 'score|<model>' columns); {FORMAT_HELP}"
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
    tasks = np.array([plain_text(v) or "" for v in parsed["tasks"].tolist()], dtype=object)
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
