"""The router's decision log: parquet files on a local path or an object-store URI (barp_ray.storage).

Layout under the log root (the partition of a row is the time *in its decision id*, so a lookup by id
lists one folder)::

    decisions/date=<YYYY-MM-DD>/hour=<HH>/part-<first ms>-<last ms>-<writer>-<seq>.parquet
    feedback/date=<YYYY-MM-DD>/hour=<HH>/part-<first ms>-<last ms>-<writer>-<seq>.parquet
    policies/<policy_version>.json     the spec (model order, tau, encoder) of each policy, written atomically

Decision ids are time-ordered (`new_decision_id`: 12 hex digits of Unix milliseconds + 20 random hex
digits), files are immutable and named per writer (replica) with the id-time range they hold, so any number
of replicas append side by side and `DecisionLog.get` reads only the files of one hour whose range covers
the id (after the replica's own buffer and its index of recently written ids). Feedback is joined on
`decision_id` at read time (`read_decision_log`). Every decision and feedback row carries `key_hash`, the
caller's API-key id (`key_id`): lookups filter on it, so one key never sees another's decisions.

Guarantees (see docs/serving.md): the constructor never raises (an unwritable store is retried at every
flush); the buffer is bounded in bytes and every row dropped past it is counted (`dropped`); feedback is
group-committed (`commit_feedback`: concurrent callers share one file write and each returns only once it
is durable); `close()` flushes everything (also run at interpreter exit, e.g. on SIGTERM).
"""

from __future__ import annotations

import atexit
import json
import logging
import secrets
import threading
import time
import weakref
from collections import OrderedDict

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from barp_ray import storage
from barp_ray.serving.feedback_commit import FeedbackCommitter, LogUnavailable  # noqa: F401 (re-exported)
from barp_ray.serving.log_store import (  # noqa: F401 (re-exported: the log's public names live here too)
    DECISION_SCHEMA,
    DECISIONS_DIR,
    FEEDBACK_DIR,
    FEEDBACK_SCHEMA,
    POLICIES_DIR,
    decision_ms,
    key_id,
    new_decision_id,
    partition_of,
    read_decision_log,
    read_decisions,
    read_feedback,
    read_id_rows,
    read_policies,
    row_bytes,
    to_table,
    utcnow,
)

logger = logging.getLogger(__name__)

ANY_KEY = object()  # get()/exists(): no key filter (operators, tests)


class DecisionLog:
    """Buffered, byte-bounded, never-raising appender shared by a replica's event loop and a flush thread.

    Decisions are buffered and written as one file when `flush_rows` wait or `flush_interval_s` passed
    (`due()`; the `autoflush` thread checks every `flush_interval_s / 4`), and by `close()`. While the store
    fails, rows stay buffered up to `max_buffer_bytes` (and `max_buffer_rows` if set); beyond that the oldest
    are dropped and counted in `dropped`. `stats()` gives the counters the router exports as metrics.
    """

    def __init__(
        self,
        uri: str,
        writer: str | None = None,
        flush_rows: int = 512,
        flush_interval_s: float = 5.0,
        max_buffer_bytes: int = 64 * 1024**2,
        max_buffer_rows: int | None = None,
        feedback_window_s: float = 0.002,
        write_retries: int = 2,
        recent_ids: int = 50_000,
        autoflush: bool = False,
        on_stats=None,
    ) -> None:
        self.uri = str(uri)
        self.writer = (writer or secrets.token_hex(4)).replace("/", "_").replace("#", "_")
        self.flush_rows, self.flush_interval_s = flush_rows, flush_interval_s
        self.max_buffer_bytes, self.max_buffer_rows = max_buffer_bytes, max_buffer_rows
        self.feedback_window_s, self.write_retries = feedback_window_s, write_retries
        self.on_stats = on_stats
        self._buffer: OrderedDict[str, dict] = OrderedDict()  # decision_id -> row, oldest first
        self._buffer_bytes = 0
        self._feedback: list[dict] = []  # buffered feedback (append_feedback)
        self._policies: dict[str, dict] = {}  # policy specs not yet written
        self._recent: OrderedDict[str, tuple[str | None, str]] = OrderedDict()  # id -> (key_hash, file)
        self._recent_max = recent_ids
        self._first_at: float | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._seq = 0
        self._committer = FeedbackCommitter(self.write_feedback, feedback_window_s)
        self.dropped = self.dropped_bytes = self.written = self.feedback_written = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self.fs: pafs.FileSystem | None = None
        self.root = ""
        self._connect()
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if autoflush:
            self._thread = threading.Thread(target=self._autoflush, name=f"barp-log-{self.writer}", daemon=True)
            self._thread.start()
        ref = weakref.ref(self)
        atexit.register(lambda: ref() is not None and ref().close(timeout_s=5.0))

    # ---- the store -------------------------------------------------------------------------------
    def _connect(self) -> bool:
        """Resolve the filesystem and create the folders; False (logged, counted) when the store is down."""
        try:
            if self.fs is None:
                self.fs, self.root = storage.resolve(self.uri)
            for sub in (DECISIONS_DIR, FEEDBACK_DIR, POLICIES_DIR):
                self.fs.create_dir(f"{self.root}/{sub}", recursive=True)
            return True
        except Exception as exc:  # noqa: BLE001 - never raise: the router serves without its log store
            self._error("opening", exc)
            return False

    def _error(self, what: str, exc: BaseException) -> None:
        self.write_errors += 1
        self.last_error = f"{what} {self.uri}: {type(exc).__name__}: {exc}"[:500]
        logger.warning("decision log: %s", self.last_error)

    def _write(self, sub: str, rows: list[dict], schema: pa.Schema) -> dict[str, str]:
        """Write rows as one file per id-hour partition (temp + rename locally, one PUT on object stores);
        returns partition -> file."""
        if self.fs is None and not self._connect():
            raise OSError(self.last_error or f"{self.uri}: store unavailable")
        groups: dict[str, list[dict]] = {}
        for row in rows:
            groups.setdefault(partition_of(decision_ms(row["decision_id"])), []).append(row)
        paths = {}
        for part, group in groups.items():
            times = [decision_ms(r["decision_id"]) or 0 for r in group]
            with self._write_lock:
                self._seq += 1
                seq = self._seq
            name = f"part-{min(times):013d}-{max(times):013d}-{self.writer}-{seq:06d}.parquet"
            folder = f"{self.root}/{sub}/{part}"
            self.fs.create_dir(folder, recursive=True)
            final = f"{folder}/{name}"
            table = to_table(group, schema)
            if isinstance(self.fs, pafs.LocalFileSystem):  # readers never see half a file
                tmp = f"{folder}/.tmp-{name}"
                pq.write_table(table, tmp, filesystem=self.fs)
                self.fs.move(tmp, final)
            else:
                pq.write_table(table, final, filesystem=self.fs)
            paths[part] = final
        return paths

    def _write_retrying(self, sub: str, rows: list[dict], schema: pa.Schema) -> dict[str, str]:
        for attempt in range(self.write_retries + 1):
            try:
                return self._write(sub, rows, schema)
            except Exception as exc:  # noqa: BLE001
                self._error(f"writing {len(rows)} {sub} rows to", exc)
                if attempt == self.write_retries:
                    raise
                time.sleep(0.05 * 4**attempt)
        raise AssertionError("unreachable")

    # ---- decisions -------------------------------------------------------------------------------
    def append(self, row: dict) -> None:
        """Buffer one decision row (never raises, never blocks on the store)."""
        with self._lock:
            self._add([row])

    def _add(self, rows: list[dict], requeue: bool = False) -> None:
        """(lock held) Add rows (in front when re-queued after a failed write); drop the oldest past the bounds."""
        if requeue:
            merged = OrderedDict((r["decision_id"], r) for r in rows)
            merged.update(self._buffer)
            self._buffer = merged
            self._first_at = time.monotonic()  # retry after flush_interval_s, not at once
        else:
            for r in rows:
                self._buffer[r["decision_id"]] = r
            if self._first_at is None:
                self._first_at = time.monotonic()
        self._buffer_bytes += sum(row_bytes(r) for r in rows)
        while self._buffer and (
            self._buffer_bytes > self.max_buffer_bytes
            or (self.max_buffer_rows is not None and len(self._buffer) > self.max_buffer_rows)
        ):
            _, old = self._buffer.popitem(last=False)
            size = row_bytes(old)
            self._buffer_bytes -= size
            self.dropped += 1
            self.dropped_bytes += size

    @property
    def buffered(self) -> int:
        return len(self._buffer) + len(self._feedback)

    def due(self) -> bool:
        with self._lock:
            if not self._buffer and not self._feedback and not self._policies:
                return False
            return self.buffered >= self.flush_rows or (
                time.monotonic() - (self._first_at or 0.0) >= self.flush_interval_s
            )

    def flush(self) -> int:
        """Write buffered decisions (one file per hour), buffered feedback and pending policy specs.

        Returns the decision rows written; on failure they stay buffered (within the bounds) for the next try.
        """
        if self._policies:
            for version, spec in list(self._policies.items()):
                if self._put_policy(version, spec):
                    self._policies.pop(version, None)
        with self._lock:
            rows, self._buffer, self._buffer_bytes = list(self._buffer.values()), OrderedDict(), 0
            feedback, self._feedback = self._feedback, []
            self._first_at = None
        if feedback:
            try:
                self._write(FEEDBACK_DIR, feedback, FEEDBACK_SCHEMA)
                self.feedback_written += len(feedback)
            except Exception as exc:  # noqa: BLE001
                self._error(f"writing {len(feedback)} feedback rows to", exc)
                with self._lock:
                    self._feedback[:0] = feedback
                    self._first_at = time.monotonic()
        if not rows:
            self._report()
            return 0
        try:
            paths = self._write(DECISIONS_DIR, rows, DECISION_SCHEMA)
        except Exception as exc:  # noqa: BLE001 - the store is down: keep the rows (bounded), retry later
            self._error(f"writing {len(rows)} decision rows to", exc)
            with self._lock:
                self._add(rows, requeue=True)
            self._report()
            return 0
        self.written += len(rows)
        with self._lock:
            for r in rows:
                self._recent[r["decision_id"]] = (r.get("key_hash"), paths[partition_of(decision_ms(r["decision_id"]))])
            while len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)
        self._report()
        return len(rows)

    def _report(self) -> None:
        if self.on_stats is not None:
            try:
                self.on_stats(self.stats())
            except Exception:  # noqa: BLE001 - metrics never break the log
                logger.exception("decision log: on_stats failed")

    def stats(self) -> dict:
        """Counters for metrics and /healthz."""
        return {
            "buffered_rows": len(self._buffer),
            "buffered_bytes": self._buffer_bytes,
            "buffered_feedback": len(self._feedback),
            "written": self.written,
            "feedback_written": self.feedback_written,
            "feedback_commits": self.feedback_commits,
            "dropped": self.dropped,
            "dropped_bytes": self.dropped_bytes,
            "write_errors": self.write_errors,
            "last_error": self.last_error,
        }

    def _autoflush(self) -> None:
        period = max(0.05, self.flush_interval_s / 4)
        while not self._stop.wait(period):
            try:
                if self.due():
                    self.flush()
            except Exception:  # noqa: BLE001 - never let the flusher die silently
                logger.exception("decision log: flush failed")

    def close(self, timeout_s: float = 10.0) -> int:
        """Stop the flush thread and write everything buffered, retrying until `timeout_s`.

        Returns the rows that could not be written (counted in `dropped`). Safe to call more than once.
        """
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        while True:
            self.flush()
            if not self._buffer and not self._feedback and not self._policies:
                break
            if time.monotonic() >= deadline:
                with self._lock:
                    lost = len(self._buffer) + len(self._feedback)
                    self.dropped += lost
                    self._buffer, self._feedback, self._buffer_bytes = OrderedDict(), [], 0
                logger.error("decision log: %d rows not written at close (%s)", lost, self.last_error)
                self._report()
                return lost
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        self._closed = True
        return 0

    # ---- feedback --------------------------------------------------------------------------------
    def append_feedback(self, row: dict) -> None:
        """Buffer a feedback row (written with the next flush; not durable before it)."""
        with self._lock:
            self._feedback.append(row)
            if self._first_at is None:
                self._first_at = time.monotonic()

    def write_feedback(self, rows: list[dict]) -> None:
        """Write feedback rows now (one file per hour of their decisions); raises when the store fails."""
        self._write_retrying(FEEDBACK_DIR, rows, FEEDBACK_SCHEMA)
        self.feedback_written += len(rows)

    async def commit_feedback(self, row: dict) -> None:
        """Durable feedback with group commit: returns once `row` is in the store, raises LogUnavailable if not.

        Concurrent callers within `feedback_window_s` (and all that arrive while a write runs) share one file.
        """
        await self._committer.commit(row)

    @property
    def feedback_commits(self) -> int:
        return self._committer.commits

    # ---- policies --------------------------------------------------------------------------------
    def write_policy(self, version: str, spec: dict) -> bool:
        """Write policies/<version>.json atomically (once); if the store is down, retried at each flush."""
        if self._put_policy(version, spec):
            return True
        self._policies[version] = spec
        return False

    def _put_policy(self, version: str, spec: dict) -> bool:
        location = storage.join(self.uri, POLICIES_DIR, f"{version}.json")
        try:
            if not storage.exists(location):
                data = json.dumps({"policy_version": version, "spec": spec}, indent=2).encode()
                storage.write_bytes_atomic(location, data)
            return True
        except Exception as exc:  # noqa: BLE001
            self._error(f"writing policy {version} to", exc)
            return False

    # ---- lookups ---------------------------------------------------------------------------------
    def get(self, decision_id: str, key_hash=ANY_KEY) -> dict | None:
        """The decision (a DECISION_SCHEMA row + feedback_score/_at/_comment/_count), or None when unknown or
        logged under another key. Reads this replica's buffer, then only the files of the id's hour whose
        id-time range covers it. Raises OSError when the store cannot be read."""
        row = self._find(decision_id)
        if row is None or (key_hash is not ANY_KEY and row.get("key_hash") != key_hash):
            return None
        feedback = [f for f in self._feedback if f["decision_id"] == decision_id]
        feedback += self._read(FEEDBACK_DIR, decision_id, FEEDBACK_SCHEMA).to_pylist()
        feedback = [f for f in feedback if key_hash is ANY_KEY or f.get("key_hash") == key_hash]
        feedback.sort(key=lambda f: f["recorded_at"])
        last = feedback[-1] if feedback else {}
        return {
            **row,
            "feedback_score": last.get("score"),
            "feedback_at": last.get("recorded_at"),
            "feedback_comment": last.get("comment"),
            "feedback_count": len(feedback),
        }

    def exists(self, decision_id: str, key_hash=ANY_KEY) -> bool:
        """Whether the decision is logged (buffered or stored) under `key_hash`."""
        with self._lock:
            row = self._buffer.get(decision_id)
            recent = self._recent.get(decision_id)
        if row is not None:
            return key_hash is ANY_KEY or row.get("key_hash") == key_hash
        if recent is not None:
            return key_hash is ANY_KEY or recent[0] == key_hash
        row = self._find(decision_id)
        return row is not None and (key_hash is ANY_KEY or row.get("key_hash") == key_hash)

    def _find(self, decision_id: str) -> dict | None:
        with self._lock:
            row = self._buffer.get(decision_id)
            recent = self._recent.get(decision_id)
        if row is not None:
            return dict(row)
        files = [recent[1]] if recent is not None else None
        rows = self._read(DECISIONS_DIR, decision_id, DECISION_SCHEMA, files).to_pylist()
        return rows[0] if rows else None

    def _read(self, sub: str, decision_id: str, schema: pa.Schema, files: list[str] | None = None) -> pa.Table:
        if self.fs is None and not self._connect():
            raise OSError(self.last_error or f"{self.uri}: store unavailable")
        return read_id_rows(self.fs, self.root, sub, decision_id, schema, files)
