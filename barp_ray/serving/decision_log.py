"""The router's decision log: parquet shards on a local path or an object-store URI (pyarrow.fs).

Layout under the log root::

    decisions/part-<utc time>-<writer>-<seq>.parquet   one row per routing decision (DECISION_SCHEMA)
    feedback/part-<utc time>-<writer>-<seq>.parquet    one row per POST /v1/feedback (FEEDBACK_SCHEMA)
    policies/<policy_version>.json                     the spec (model order, tau, encoder) of each policy

Files are immutable and named per writer (replica), so any number of replicas append side by side and a
restarted replica simply adds files. Feedback is joined on `decision_id` at read time
(`read_decision_log`). What off-policy training needs is in each decision row: the prompt (text and/or
hash), the preference w_c, the chosen model, pi(a|x,w) of it (`probability`), the serving rule's
propensity of it (`propensity`: 1 for greedy argmax, pi(a) when sampling, epsilon-mixed for epsilon), the
full probability vector in the order of `policies/<policy_version>.json`, the policy version, the model that
actually answered (fallbacks), its cost and the latencies.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

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
    ]
)

FEEDBACK_SCHEMA = pa.schema(
    [
        ("decision_id", pa.string()),
        ("score", pa.float64()),
        ("comment", pa.string()),
        ("recorded_at", TS),
        ("replica", pa.string()),
    ]
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root path) for a local folder or a URI pyarrow understands."""
    if "://" in uri and not uri.startswith("file://"):
        fs, root = pafs.FileSystem.from_uri(uri)
        return fs, root.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri.removeprefix("file://")).expanduser().resolve())


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


class DecisionLog:
    """Buffered, bounded appender. Thread-safe: the router appends on its event loop and flushes in a thread.

    Decisions are buffered and written when `flush_rows` are waiting or `flush_interval_s` has passed
    (`due()`), and on shutdown; at most `max_buffer_rows` are kept (oldest dropped, counted in `dropped`)
    if the store keeps failing. Feedback is written at once by `write_feedback` (durable before the reply).
    """

    def __init__(
        self, uri: str, writer: str | None = None, flush_rows: int = 512, flush_interval_s: float = 5.0,
        max_buffer_rows: int = 20_000,
    ) -> None:
        self.uri = uri
        self.fs, self.root = filesystem(uri)
        self.writer = (writer or uuid.uuid4().hex[:8]).replace("/", "_").replace("#", "_")
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.max_buffer_rows = max_buffer_rows
        self._buffer: list[dict] = []
        self._feedback: list[dict] = []
        self._first_at: float | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._seq = 0
        self.dropped = 0
        self.written = 0
        for sub in (DECISIONS_DIR, FEEDBACK_DIR, POLICIES_DIR):
            self.fs.create_dir(f"{self.root}/{sub}", recursive=True)

    # ---- writing ----------------------------------------------------------------------------------
    def append(self, row: dict) -> None:
        with self._lock:
            self._add(self._buffer, [row])

    def append_feedback(self, row: dict) -> None:
        """Buffer a feedback row (written by the next `flush`); `write_feedback` writes at once instead."""
        with self._lock:
            self._add(self._feedback, [row])

    def _add(self, buffer: list[dict], rows: list[dict], requeue: bool = False) -> None:
        """(lock held) Add `rows` to `buffer` (in front when re-queued after a failed write) and start the
        flush clock; beyond `max_buffer_rows` the oldest rows are dropped and counted in `dropped`."""
        if requeue:
            buffer[:0] = rows
            self._first_at = time.monotonic()  # retry a failed write after flush_interval_s, not at once
        else:
            buffer.extend(rows)
            if self._first_at is None:
                self._first_at = time.monotonic()
        overflow = len(buffer) - self.max_buffer_rows
        if overflow > 0:
            del buffer[:overflow]
            self.dropped += overflow

    @property
    def buffered(self) -> int:
        return len(self._buffer) + len(self._feedback)

    def due(self) -> bool:
        with self._lock:
            if not self._buffer and not self._feedback:
                return False
            return len(self._buffer) + len(self._feedback) >= self.flush_rows or (
                time.monotonic() - (self._first_at or 0.0) >= self.flush_interval_s
            )

    def flush(self) -> int:
        """Write the buffered decisions as one parquet file (and buffered feedback as another); returns the
        decision rows written (0 on failure: the rows stay buffered, within the bound)."""
        with self._lock:
            rows, self._buffer, self._first_at = self._buffer, [], None
            feedback, self._feedback = self._feedback, []
        if feedback:
            try:
                self.write_feedback(feedback)
            except Exception:
                logger.exception("decision log: writing %d feedback rows to %s failed; will retry", len(feedback),
                                 self.uri)
                with self._lock:
                    self._add(self._feedback, feedback, requeue=True)
        if not rows:
            return 0
        try:
            self._write(DECISIONS_DIR, _table(rows, DECISION_SCHEMA))
        except Exception:  # the store is down: keep the rows (bounded) and retry at the next flush
            logger.exception("decision log: writing %d rows to %s failed; will retry", len(rows), self.uri)
            with self._lock:
                self._add(self._buffer, rows, requeue=True)
            return 0
        self.written += len(rows)
        return len(rows)

    def write_feedback(self, rows: list[dict]) -> None:
        self._write(FEEDBACK_DIR, _table(rows, FEEDBACK_SCHEMA))

    def write_policy(self, version: str, spec: dict) -> None:
        path = f"{self.root}/{POLICIES_DIR}/{version}.json"
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            with self.fs.open_output_stream(path) as out:
                out.write(json.dumps({"policy_version": version, "spec": spec}, indent=2).encode())

    def _write(self, sub: str, table: pa.Table) -> str:
        with self._write_lock:
            self._seq += 1
            name = f"part-{utcnow():%Y%m%dT%H%M%S%f}-{self.writer}-{self._seq:06d}.parquet"
        final = f"{self.root}/{sub}/{name}"
        if isinstance(self.fs, pafs.LocalFileSystem):  # atomic: readers never see half a file
            tmp = f"{self.root}/{sub}/.tmp-{name}"
            pq.write_table(table, tmp, filesystem=self.fs)
            self.fs.move(tmp, final)
        else:  # object stores: one PUT is atomic
            pq.write_table(table, final, filesystem=self.fs)
        return final


# ---- reading --------------------------------------------------------------------------------------------
def _read_dir(uri: str, sub: str, schema: pa.Schema, filter_expr=None) -> pa.Table:
    import pyarrow.dataset as ds

    fs, root = filesystem(uri)
    path = f"{root}/{sub}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return schema.empty_table()
    dataset = ds.dataset(path, filesystem=fs, format="parquet", schema=schema)
    return dataset.to_table(filter=filter_expr)


def read_decisions(uri: str | os.PathLike, decision_id: str | None = None) -> pa.Table:
    import pyarrow.dataset as ds

    expr = ds.field("decision_id") == decision_id if decision_id else None
    return _read_dir(str(uri), DECISIONS_DIR, DECISION_SCHEMA, expr)


def read_feedback(uri: str | os.PathLike, decision_id: str | None = None) -> pa.Table:
    import pyarrow.dataset as ds

    expr = ds.field("decision_id") == decision_id if decision_id else None
    return _read_dir(str(uri), FEEDBACK_DIR, FEEDBACK_SCHEMA, expr)


def read_policies(uri: str | os.PathLike) -> dict[str, dict]:
    """policy_version -> spec (its `models` give the order of `probabilities`)."""
    fs, root = filesystem(str(uri))
    out: dict[str, dict] = {}
    selector = pafs.FileSelector(f"{root}/{POLICIES_DIR}", allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.path.endswith(".json"):
            with fs.open_input_stream(info.path) as src:
                doc = json.loads(src.read())
            out[doc["policy_version"]] = doc["spec"]
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
        feedback_score=("score", "last"), feedback_at=("recorded_at", "last"),
        feedback_comment=("comment", "last"), feedback_count=("score", "size"),
    )
    out = decisions.merge(latest, how="left", left_on="decision_id", right_index=True)
    out["feedback_count"] = out["feedback_count"].fillna(0).astype("int64")
    return out
