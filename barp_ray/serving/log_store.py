"""The decision log's format: parquet schemas, time-ordered decision ids, partitions, and whole-log readers.

Written by `barp_ray.serving.decision_log.DecisionLog` (see its module doc for the layout and guarantees);
read by off-policy training (`read_decision_log`), reports and tests. Files of older logs without a column
(e.g. `key_hash`) read with it null.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from barp_ray import storage

logger = logging.getLogger(__name__)

DECISIONS_DIR, FEEDBACK_DIR, POLICIES_DIR = "decisions", "feedback", "policies"
TS = pa.timestamp("us", tz="UTC")

DECISION_SCHEMA = pa.schema(
    [
        ("decision_id", pa.string()),
        ("decided_at", TS),
        ("endpoint", pa.string()),  # "chat" | "route"
        ("prompt_id", pa.string()),  # the caller's id, else "h:<prompt_hash>"
        ("prompt_hash", pa.string()),  # sha256(prompt)[:16], as in the shards
        ("prompt", pa.string()),  # null when log_prompt_text is off
        ("prompt_chars", pa.int32()),
        ("w_cost", pa.float64()),
        ("preference_source", pa.string()),  # body | header | budget | default | default_budget
        ("budget_kind", pa.string()),
        ("budget_value", pa.float64()),
        ("policy_version", pa.string()),
        ("chosen_model", pa.string()),
        ("chosen_index", pa.int16()),
        ("probability", pa.float64()),  # pi(chosen | x, w)
        ("propensity", pa.float64()),  # P(serving rule picks chosen | x, w)
        ("exploration", pa.string()),  # greedy | sample | epsilon | forced
        ("explored", pa.bool_()),
        ("probabilities", pa.list_(pa.float32())),  # pi(. | x, w) in policy model order
        ("expected_cost_usd", pa.float64()),  # sum_k pi_k * mean cost_k
        ("served_model", pa.string()),  # model that answered (null: route only / all failed)
        ("served_index", pa.int16()),
        ("status", pa.string()),  # ok | fallback | route_only | upstream_failed | stream_error
        ("fallback_count", pa.int16()),
        ("attempts", pa.string()),  # JSON [{"model", "ok", "error", "latency_ms"}]
        ("cost_usd", pa.float64()),  # cost of the served answer, as the upstream reported it
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("decision_latency_ms", pa.float64()),
        ("upstream_latency_ms", pa.float64()),
        ("total_latency_ms", pa.float64()),
        ("stream", pa.bool_()),
        ("batch_size", pa.int16()),
        ("replica", pa.string()),
        ("key_hash", pa.string()),  # key_id() of the calling API key (null: auth off)
    ]
)

FEEDBACK_SCHEMA = pa.schema(
    [
        ("decision_id", pa.string()),
        ("score", pa.float64()),
        ("comment", pa.string()),
        ("recorded_at", TS),
        ("replica", pa.string()),
        ("key_hash", pa.string()),
    ]
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def key_id(api_key: str | None) -> str | None:
    """The id of an API key stored with its decisions: sha256(key)[:16] (None when auth is off)."""
    return None if api_key is None else hashlib.sha256(api_key.encode()).hexdigest()[:16]


def new_decision_id(now_ms: int | None = None) -> str:
    """A time-ordered decision id: 12 hex digits of Unix ms + 20 random hex digits (32 lowercase hex)."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{ms & 0xFFFFFFFFFFFF:012x}{secrets.token_hex(10)}"


def decision_ms(decision_id: str) -> int | None:
    """Unix ms encoded in a decision id (None: not 32 hex digits)."""
    if len(decision_id) != 32:
        return None
    try:
        return int(decision_id[:12], 16)
    except ValueError:
        return None


def partition_of(ms: int | None) -> str:
    if ms is None:
        return "date=unknown/hour=00"
    t = datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)
    return f"date={t:%Y-%m-%d}/hour={t:%H}"


def row_bytes(row: dict) -> int:
    """A cheap estimate of a row's memory (strings by length, numbers 8 bytes, 64 bytes overhead)."""
    size = 64
    for value in row.values():
        if isinstance(value, str):
            size += len(value) + 8
        elif isinstance(value, (list, tuple)):
            size += 8 * len(value) + 8
        else:
            size += 8
    return size


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def read_id_rows(
    fs: pafs.FileSystem, root: str, sub: str, decision_id: str, schema: pa.Schema, files: list[str] | None = None
) -> pa.Table:
    """The rows of one decision id under `root/sub`: reads only `files`, else the files of the id's hour whose
    id-time range (in their names) covers it."""
    ms = decision_ms(decision_id)
    if files is None:
        folder = f"{root}/{sub}/{partition_of(ms)}"
        files = []
        for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
            name = info.path.rsplit("/", 1)[-1]
            if info.type != pafs.FileType.File or not name.startswith("part-"):
                continue
            lo, hi = name.split("-")[1:3]
            if ms is None or int(lo) <= ms <= int(hi):
                files.append(info.path)
    if not files:
        return schema.empty_table()
    dataset = ds.dataset(files, filesystem=fs, format="parquet", schema=schema)
    return dataset.to_table(filter=ds.field("decision_id") == decision_id)


# ---- reading the whole log (off-policy training, reports) ------------------------------------------------
def _read_dir(uri: str, sub: str, schema: pa.Schema, filter_expr=None) -> pa.Table:
    fs, root = storage.resolve(uri)
    path = f"{root}/{sub}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return schema.empty_table()
    # files of older logs (without key_hash) read with the column null
    dataset = ds.dataset(path, filesystem=fs, format="parquet", schema=schema, partitioning=None)
    return dataset.to_table(filter=filter_expr)


def read_decisions(uri: str | os.PathLike, decision_id: str | None = None) -> pa.Table:
    expr = ds.field("decision_id") == decision_id if decision_id else None
    return _read_dir(str(uri), DECISIONS_DIR, DECISION_SCHEMA, expr)


def read_feedback(uri: str | os.PathLike, decision_id: str | None = None) -> pa.Table:
    expr = ds.field("decision_id") == decision_id if decision_id else None
    return _read_dir(str(uri), FEEDBACK_DIR, FEEDBACK_SCHEMA, expr)


def read_policies(uri: str | os.PathLike) -> dict[str, dict]:
    """policy_version -> spec (its `models` give the order of `probabilities`); unreadable files are skipped."""
    fs, root = storage.resolve(str(uri))
    out: dict[str, dict] = {}
    selector = pafs.FileSelector(f"{root}/{POLICIES_DIR}", allow_not_found=True)
    for info in fs.get_file_info(selector):
        name = info.path.rsplit("/", 1)[-1]
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            with fs.open_input_stream(info.path) as src:
                doc = json.loads(src.read())
            out[doc["policy_version"]] = doc["spec"]
        except (ValueError, KeyError, OSError) as exc:
            logger.warning("decision log: skipping unreadable policy file %s: %s", info.path, exc)
    return out


def read_decision_log(uri: str | os.PathLike, decision_id: str | None = None):
    """Decisions joined with their feedback, as a pandas DataFrame.

    Adds `feedback_score` and `feedback_at` (the latest feedback of each decision), `feedback_count` and
    `feedback_comment`; decisions without feedback get NaN / NaT / 0.
    """
    decisions = read_decisions(uri, decision_id).to_pandas()
    feedback = read_feedback(uri, decision_id).to_pandas()
    if feedback.empty:
        decisions["feedback_score"] = float("nan")
        decisions["feedback_at"] = None
        decisions["feedback_at"] = decisions["feedback_at"].astype("datetime64[us, UTC]")
        decisions["feedback_comment"] = None
        decisions["feedback_count"] = 0
        return decisions
    feedback = feedback.sort_values("recorded_at", kind="stable")
    latest = feedback.groupby("decision_id", sort=False).agg(
        feedback_score=("score", "last"),
        feedback_at=("recorded_at", "last"),
        feedback_comment=("comment", "last"),
        feedback_count=("score", "size"),
    )
    out = decisions.merge(latest, how="left", left_on="decision_id", right_index=True)
    out["feedback_count"] = out["feedback_count"].fillna(0).astype("int64")
    return out
