"""Validation of raw routing rows: drop bad rows, count each reason, and report what is left.

Row-level checks run first, so a bad row never takes good rows down with it: a row with an empty score cell
cannot make a later, complete copy of the same prompt count as a duplicate, and a train row that is itself
dropped does not make a test row count as leaked. Each dropped row is counted once, under the first reason
it meets, in the order of ``DROP_REASONS``.

Raw ``val`` rows are merged into ``train`` (validation is carved later by ``assign_validation_split``), so the
output's split is "train" or "test".
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from barp_ray.data.readers import RawLoad
from barp_ray.data.table import RoutingTable

# reason -> meaning, in the order the checks run
DROP_REASONS: dict[str, str] = {
    "unknown_split": "split is not train, val or test",
    "missing_prompt": "prompt text is empty",
    "missing_task": "task is empty",
    "missing_score": "a model's score is empty or not a number",
    "score_out_of_range": "a model's score is outside [0, 1]",
    "missing_cost": "a model's cost is empty, not a number or infinite",
    "negative_cost": "a model's cost is negative",
    "duplicate_prompt_text": "same prompt text as an earlier kept row of the same split",
    "duplicate_prompt_id": "same prompt id as an earlier kept row of the same split",
    "leaked_prompt_text": "test prompt whose text is also in train",
    "leaked_prompt_id": "test prompt whose id is also in train",
}
OUTPUT_SPLITS = ("train", "test")


class ValidationReport(BaseModel):
    """What validation read, dropped (per reason) and kept (per split and task)."""

    models: list[str]
    files: list[str] = Field(default_factory=list)
    rows_read: int
    rows_kept: int
    read_per_split: dict[str, int]
    dropped: dict[str, int]  # every reason of DROP_REASONS, zeros included
    dropped_per_task: dict[str, dict[str, int]]  # task -> {reason: n}, non-zero only
    kept_per_split: dict[str, int]
    kept_per_task: dict[str, int]
    kept_per_task_split: dict[str, dict[str, int]]
    val_rows_merged_into_train: int = 0
    examples: dict[str, list[str]] = Field(default_factory=dict)  # reason -> a few "file:row" sources

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict:
        """JSON-ready dict (goes into the shard manifest)."""
        return self.model_dump(mode="json")

    def to_markdown(self) -> str:
        """A readable summary: totals, drops per reason with examples, kept rows per task and split."""
        lines = [
            f"Validation: read {self.rows_read} rows, kept {self.rows_kept}, dropped {self.rows_dropped} "
            f"({len(self.models)} models).",
            "",
            "| reason | dropped | meaning | examples |",
            "| --- | ---: | --- | --- |",
        ]
        for reason, count in self.dropped.items():
            examples = ", ".join(self.examples.get(reason, []))
            lines.append(f"| {reason} | {count} | {DROP_REASONS.get(reason, '')} | {examples} |")
        if self.val_rows_merged_into_train:
            lines += ["", f"{self.val_rows_merged_into_train} raw 'val' rows were merged into train."]
        splits = list(OUTPUT_SPLITS)
        header = "| task | " + " | ".join(splits) + " | total |"
        lines += ["", header, "| --- |" + " ---: |" * (len(splits) + 1)]
        for task, total in self.kept_per_task.items():
            per_split = self.kept_per_task_split.get(task, {})
            cells = " | ".join(str(per_split.get(s, 0)) for s in splits)
            lines.append(f"| {task} | {cells} | {total} |")
        cells = " | ".join(str(self.kept_per_split.get(s, 0)) for s in splits)
        lines.append(f"| **all** | {cells} | {self.rows_kept} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def _row_reasons(raw: RawLoad) -> np.ndarray:
    """First row-level drop reason per row ("" = passes), in DROP_REASONS order."""
    n = len(raw)
    reasons = np.full(n, "", dtype=object)
    scores, costs = raw.scores, raw.costs
    with np.errstate(invalid="ignore"):
        checks = [
            ("unknown_split", ~np.isin(raw.split, ["train", "val", "test"])),
            ("missing_prompt", np.asarray(raw.prompt_missing, dtype=bool)),
            ("missing_task", np.array([str(t).strip() == "" for t in raw.tasks], dtype=bool)),
            ("missing_score", np.isnan(scores).any(axis=1)),
            ("score_out_of_range", ((scores < 0.0) | (scores > 1.0)).any(axis=1)),
            ("missing_cost", (~np.isfinite(costs)).any(axis=1)),
            ("negative_cost", (costs < 0.0).any(axis=1)),
        ]
    for reason, failed in checks:
        reasons[(reasons == "") & failed.reshape(n)] = reason
    return reasons


def _dedupe_reasons(reasons: np.ndarray, split: np.ndarray, prompts: list[str], ids: np.ndarray) -> None:
    """Mark later copies (same text, then same id) within each split among rows still kept, in place."""
    for name in OUTPUT_SPLITS:
        for reason, keys in (("duplicate_prompt_text", prompts), ("duplicate_prompt_id", ids)):
            rows = np.flatnonzero((reasons == "") & (split == name))
            duplicated = pd.Series([keys[i] for i in rows], dtype=object).duplicated(keep="first").to_numpy()
            reasons[rows[duplicated]] = reason


def _leakage_reasons(reasons: np.ndarray, split: np.ndarray, prompts: list[str], ids: np.ndarray) -> None:
    """Mark kept test rows whose text (then id) also belongs to a kept train row, in place."""
    train_rows = np.flatnonzero((reasons == "") & (split == "train"))
    train_texts = {prompts[i] for i in train_rows}
    train_ids = {ids[i] for i in train_rows}
    for i in np.flatnonzero((reasons == "") & (split == "test")):
        if prompts[i] in train_texts:
            reasons[i] = "leaked_prompt_text"
        elif ids[i] in train_ids:
            reasons[i] = "leaked_prompt_id"


def _nested_counts(outer: np.ndarray, inner: np.ndarray) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for a, b in zip(outer.tolist(), inner.tolist(), strict=True):
        counts.setdefault(str(a), Counter())[str(b)] += 1
    return {a: dict(sorted(c.items())) for a, c in sorted(counts.items())}


def validate(
    raw: RawLoad,
    *,
    max_examples: int = 5,
) -> tuple[RoutingTable, ValidationReport]:
    """Drop bad rows of ``raw`` and count them per reason; returns the clean table and the report.

    Checks, in order (each row counted under its first failing reason): split known, prompt and task not
    empty, every score present and in [0, 1], every cost present, finite and >= 0; then, among surviving rows,
    later duplicates within a split (same prompt text, or same prompt id) and test rows that also occur in
    train (by text or id). Raw ``val`` rows count as train. ``max_examples`` sources are listed per reason.
    The output's prompt ids are unique. Raises ValueError if no row survives.
    """
    split = np.array([("train" if s == "val" else s) for s in raw.split.tolist()], dtype=object)
    merged_val = int(np.sum(raw.split == "val"))
    ids = np.asarray(raw.prompt_ids, dtype=object)
    reasons = _row_reasons(raw)
    _dedupe_reasons(reasons, split, raw.prompts, ids)
    _leakage_reasons(reasons, split, raw.prompts, ids)

    kept = reasons == ""
    reason_counts = Counter(reasons[~kept].tolist())
    examples = {
        reason: [str(s) for s in raw.sources[reasons == reason][:max_examples]]
        for reason in DROP_REASONS
        if reason_counts.get(reason)
    }
    dropped_per_task = _nested_counts(raw.tasks[~kept], reasons[~kept])
    kept_per_task_split = _nested_counts(raw.tasks[kept], split[kept])
    report = ValidationReport(
        models=list(raw.models),
        files=list(raw.files),
        rows_read=len(raw),
        rows_kept=int(kept.sum()),
        read_per_split=dict(sorted(Counter(str(s) for s in raw.split.tolist()).items())),
        dropped={reason: int(reason_counts.get(reason, 0)) for reason in DROP_REASONS},
        dropped_per_task=dropped_per_task,
        kept_per_split={s: int(np.sum(split[kept] == s)) for s in OUTPUT_SPLITS},
        kept_per_task={task: sum(c.values()) for task, c in kept_per_task_split.items()},
        kept_per_task_split=kept_per_task_split,
        val_rows_merged_into_train=merged_val,
        examples=examples,
    )
    if not kept.any():
        raise ValueError(
            f"no rows survive validation of {len(raw)} rows from {raw.files}: "
            + ", ".join(f"{r}={c}" for r, c in report.dropped.items() if c)
            + ". Fix the data (see the reasons above and barp_ray/data/raw_formats.py for the format)"
        )
    index = np.flatnonzero(kept)
    table = RoutingTable(
        prompt_ids=ids[index],
        prompts=[raw.prompts[i] for i in index],
        tasks=raw.tasks[index],
        models=list(raw.models),
        scores=raw.scores[index].astype(np.float32),
        costs=raw.costs[index],
        split=split[index],
        responses=None if raw.responses is None else raw.responses[index],
    )
    return table, report
