"""The decision log on its own (no Ray): bounded, never raising, group-committed, isolated, cheap lookups.

Real parquet on a local folder, and on a real S3-compatible server (moto, tests/s3_server.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from barp_ray.serving.decision_log import (
    ANY_KEY,
    DecisionLog,
    LogUnavailable,
    decision_ms,
    key_id,
    new_decision_id,
    read_decision_log,
    read_decisions,
    read_feedback,
    read_policies,
    utcnow,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for s3_server


def _row(decision_id: str, key: str | None = "k1", prompt: str = "a prompt") -> dict:
    return {
        "decision_id": decision_id,
        "decided_at": utcnow(),
        "endpoint": "route",
        "prompt_id": "p",
        "prompt_hash": "0" * 16,
        "prompt": prompt,
        "w_cost": 0.5,
        "chosen_model": "m1",
        "chosen_index": 1,
        "probability": 0.6,
        "propensity": 1.0,
        "probabilities": [0.4, 0.6],
        "policy_version": "v1",
        "status": "route_only",
        "key_hash": key_id(key),
    }


def _feedback(decision_id: str, score: float, key: str | None = "k1") -> dict:
    return {
        "decision_id": decision_id,
        "score": score,
        "comment": None,
        "recorded_at": utcnow(),
        "replica": "r",
        "key_hash": key_id(key),
    }


def test_decision_ids_are_time_ordered_hex():
    a = new_decision_id(1_700_000_000_000)
    b = new_decision_id()
    assert len(a) == 32 and all(c in "0123456789abcdef" for c in a)
    assert decision_ms(a) == 1_700_000_000_000 and decision_ms(b) > decision_ms(a)
    assert decision_ms("not-an-id") is None
    assert key_id("sk-1") == key_id("sk-1") != key_id("sk-2") and len(key_id("sk-1")) == 16


def test_lookup_reads_one_hour_and_only_files_covering_the_id(tmp_path):
    log = DecisionLog(str(tmp_path / "log"), writer="r1")
    hour = 3_600_000
    ids = [new_decision_id(1_700_000_000_000 + i * hour) for i in range(3)]  # three hours
    for i in ids:
        log.append(_row(i))
    assert log.flush() == 3
    files = sorted((tmp_path / "log" / "decisions").rglob("*.parquet"))
    assert len(files) == 3 and all("date=" in str(f.parent.parent) for f in files)
    fresh = DecisionLog(str(tmp_path / "log"), writer="r2")  # another replica: no index of these ids
    # poison every other file of the log: a lookup that scanned the store would fail on them
    for f in files[1:]:
        f.write_bytes(b"not parquet")
    same_hour = files[0].parent / "part-0000000000000-0000000000001-x-000001.parquet"
    same_hour.write_bytes(b"not parquet either (its id range does not cover the id)")
    got = fresh.get(ids[0], key_id("k1"))
    assert got is not None and got["decision_id"] == ids[0] and got["feedback_count"] == 0
    assert fresh.exists(ids[0], key_id("k1")) and not fresh.exists(new_decision_id(), key_id("k1"))


def test_keys_are_isolated(tmp_path):
    log = DecisionLog(str(tmp_path / "log"))
    a, b = new_decision_id(), new_decision_id()
    log.append(_row(a, key="key-a"))
    log.append(_row(b, key="key-b"))
    assert log.get(a, key_id("key-a"))["decision_id"] == a  # buffered
    assert log.get(a, key_id("key-b")) is None and not log.exists(a, key_id("key-b"))
    log.flush()
    other = DecisionLog(str(tmp_path / "log"))
    assert other.get(a, key_id("key-b")) is None and other.get(b, key_id("key-b"))["decision_id"] == b
    assert other.get(a, ANY_KEY)["key_hash"] == key_id("key-a")
    log.write_feedback([_feedback(a, 0.9, key="key-a")])
    assert other.get(a, key_id("key-a"))["feedback_score"] == 0.9


def test_buffer_is_bounded_in_bytes_and_drops_are_counted(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file: nothing can be created under it")
    log = DecisionLog(str(blocker / "log"), max_buffer_bytes=20_000, write_retries=0)  # never raises
    assert log.stats()["write_errors"] >= 1
    for _ in range(100):
        log.append(_row(new_decision_id(), prompt="x" * 1000))
    stats = log.stats()
    assert stats["buffered_bytes"] <= 20_000 and stats["buffered_rows"] < 100
    assert stats["dropped"] == 100 - stats["buffered_rows"] and stats["dropped"] > 0
    assert log.flush() == 0 and log.stats()["buffered_rows"] == stats["buffered_rows"]  # kept for a retry
    assert log.close(timeout_s=0) == stats["buffered_rows"] and log.dropped == 100


def test_store_down_then_up_loses_nothing(tmp_path):
    root = tmp_path / "log"
    root.write_text("the store is 'down': a file where the folder should be")
    log = DecisionLog(str(root), write_retries=0)
    assert not log.write_policy("v1", {"models": ["m0", "m1"]})  # kept for a retry, no exception
    ids = [new_decision_id() for _ in range(20)]
    for i in ids:
        log.append(_row(i))
    assert log.flush() == 0 and log.stats()["buffered_rows"] == 20
    root.unlink()  # the store comes back
    assert log.flush() == 20
    assert sorted(read_decisions(root)["decision_id"].to_pylist()) == sorted(ids)
    assert read_policies(root) == {"v1": {"models": ["m0", "m1"]}}
    assert log.dropped == 0


def test_feedback_group_commit_is_durable_before_returning(tmp_path):
    log = DecisionLog(str(tmp_path / "log"), feedback_window_s=0.01)
    ids = [new_decision_id() for _ in range(50)]

    async def post_all():
        await asyncio.gather(*(log.commit_feedback(_feedback(i, 0.5)) for i in ids))
        return read_feedback(tmp_path / "log").num_rows  # read right after the awaits returned

    assert asyncio.run(post_all()) == 50
    files = list((tmp_path / "log" / "feedback").rglob("*.parquet"))
    assert len(files) <= 3 and log.feedback_commits == len(files)  # 50 callers, a few file writes


def test_feedback_on_a_failing_store_raises_log_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    log = DecisionLog(str(blocker / "log"), write_retries=1)
    with pytest.raises(LogUnavailable, match="retry later"):
        asyncio.run(log.commit_feedback(_feedback(new_decision_id(), 1.0)))


def test_policy_json_is_atomic_and_a_torn_file_is_skipped(tmp_path):
    log = DecisionLog(str(tmp_path / "log"))
    assert log.write_policy("v1", {"models": ["a"]})
    (tmp_path / "log" / "policies" / "v2.json").write_text('{"policy_version": "v2", "spe')  # torn
    assert read_policies(tmp_path / "log") == {"v1": {"models": ["a"]}}
    assert not list((tmp_path / "log" / "policies").glob(".*"))  # no temp file left behind
    assert json.loads((tmp_path / "log" / "policies" / "v1.json").read_text())["spec"] == {"models": ["a"]}


def test_close_flushes_everything_and_autoflush_writes_in_the_background(tmp_path):
    log = DecisionLog(str(tmp_path / "log"), flush_interval_s=0.2, autoflush=True)
    ids = [new_decision_id() for _ in range(5)]
    for i in ids:
        log.append(_row(i))
    log.append_feedback(_feedback(ids[0], 0.3))
    deadline = asyncio.run(_wait_rows(tmp_path / "log", 5))
    assert deadline
    log.append(_row(new_decision_id()))
    assert log.close() == 0 and read_decisions(tmp_path / "log").num_rows == 6
    frame = read_decision_log(tmp_path / "log").set_index("decision_id")
    assert frame.loc[ids[0]]["feedback_score"] == 0.3


async def _wait_rows(root: Path, n: int, timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.05)):
        try:
            if read_decisions(root).num_rows >= n:
                return True
        except OSError:
            pass
        await asyncio.sleep(0.05)
    return False


def test_decision_log_on_s3(tmp_path):
    from s3_server import s3_server

    with s3_server() as env:
        uri = f"s3://{env['BUCKET']}/barp/log"
        log = DecisionLog(uri, writer="r1")
        a = new_decision_id()
        log.append(_row(a))
        assert log.write_policy("v1", {"models": ["m0"]})
        assert log.flush() == 1
        asyncio.run(log.commit_feedback(_feedback(a, 0.7)))
        other = DecisionLog(uri, writer="r2")
        got = other.get(a, key_id("k1"))
        assert got["feedback_score"] == 0.7 and other.get(a, key_id("other")) is None
        assert read_policies(uri) == {"v1": {"models": ["m0"]}} and len(read_decision_log(uri)) == 1


# ---- round trips, file URIs, a row bound ----------------------------------------------------------------
def _numbered_row(i: int) -> dict:
    """A chat decision with id i (32 hex digits), logged without an API key."""
    return {**_row(f"{i:032x}", key=None, prompt=f"prompt {i}"), "endpoint": "chat", "status": "ok", "cost_usd": 0.001}


def test_decision_log_roundtrip_and_feedback_join(tmp_path):
    log = DecisionLog(str(tmp_path / "log"), writer="r1", flush_rows=2, flush_interval_s=60)
    log.write_policy("v1", {"models": ["m0", "m1"]})
    log.append(_numbered_row(1))
    assert not log.due()
    log.append(_numbered_row(2))
    assert log.due() and log.flush() == 2 and log.buffered == 0
    other = DecisionLog(str(tmp_path / "log"), writer="r2")  # a second replica appends beside it
    other.append(_numbered_row(3))
    other.append_feedback({"decision_id": f"{3:032x}", "score": 0.5, "comment": None, "recorded_at": utcnow()})
    assert other.buffered == 2
    other.flush()
    assert other.buffered == 0
    log.write_feedback([{"decision_id": f"{1:032x}", "score": 0.2, "comment": None, "recorded_at": utcnow()}])
    log.write_feedback([{"decision_id": f"{1:032x}", "score": 0.9, "comment": "later", "recorded_at": utcnow()}])
    frame = read_decision_log(tmp_path / "log").set_index("decision_id")
    assert len(frame) == 3
    first = frame.loc[f"{1:032x}"]
    assert first["feedback_score"] == 0.9 and first["feedback_count"] == 2 and first["feedback_comment"] == "later"
    assert np.isnan(frame.loc[f"{2:032x}"]["feedback_score"]) and frame.loc[f"{2:032x}"]["feedback_count"] == 0
    assert list(frame.loc[f"{3:032x}"]["probabilities"]) == pytest.approx([0.4, 0.6])
    assert read_policies(tmp_path / "log") == {"v1": {"models": ["m0", "m1"]}}
    assert frame.loc[f"{3:032x}"]["feedback_score"] == 0.5  # buffered feedback, written by flush
    assert len(read_decisions(tmp_path / "log", f"{2:032x}")) == 1 and len(read_feedback(tmp_path / "log")) == 3
    files = list((tmp_path / "log" / "decisions").rglob("*.parquet"))
    assert len(files) == 2 and not list((tmp_path / "log" / "decisions").rglob(".tmp-*"))
    assert pq.read_schema(files[0]).field("decided_at").type.tz == "UTC"


def test_decision_log_without_feedback_and_via_file_uri(tmp_path):
    log = DecisionLog(f"file://{tmp_path}/log2")
    log.append(_numbered_row(7))
    log.flush()
    frame = read_decision_log(f"file://{tmp_path}/log2")
    assert len(frame) == 1 and frame["feedback_count"].tolist() == [0]
    assert read_decision_log(tmp_path / "empty").empty


def test_decision_log_is_bounded_and_survives_a_failing_store(tmp_path):
    log = DecisionLog(str(tmp_path / "log"), flush_rows=1000, max_buffer_rows=5)
    for i in range(8):
        log.append(_numbered_row(i))
    assert log.buffered == 5 and log.dropped == 3
    decisions = tmp_path / "log" / "decisions"
    decisions.rmdir()
    decisions.write_text("not a folder")  # the store fails
    assert log.flush() == 0 and log.buffered == 5  # rows kept for the next try
    decisions.unlink()
    decisions.mkdir()
    assert log.flush() == 5
    assert sorted(read_decisions(tmp_path / "log")["decision_id"].to_pylist()) == [f"{i:032x}" for i in range(3, 8)]
