"""Decision-log micro-benchmark (no Ray): group-committed feedback and the lookup of one decision.

    .venv/bin/python benchmarks/decision_log_bench.py [--hours 48] [--files-per-hour 20] [--rows 200]
                                                      [--feedback 200] [--out runs/<you>/decision_log_bench]

1. A log of `hours` x `files_per_hour` decision files (`rows` rows each, ids spread over the hours) is written;
   then 50 random ids are looked up (a) with `DecisionLog.get` from a fresh writer (no in-memory index: the
   cross-replica case) and (b) with a scan of the whole store (`read_decisions(path, id)`, what the router
   did before). Reported: median ms per lookup, files opened.
2. `feedback` concurrent `commit_feedback` calls: wall time, files written (group commit) and, for
   comparison, the same number of one-file-per-feedback writes (`write_feedback([row])` each).
Prints a markdown table and writes it to `<out>/report.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

from barp_ray.serving.decision_log import DecisionLog, key_id, new_decision_id, read_decisions, utcnow


def _row(decision_id: str) -> dict:
    return {
        "decision_id": decision_id,
        "decided_at": utcnow(),
        "endpoint": "route",
        "prompt": "p" * 200,
        "w_cost": 0.5,
        "chosen_model": "m",
        "chosen_index": 0,
        "probability": 1.0,
        "propensity": 1.0,
        "probabilities": [1.0],
        "policy_version": "v",
        "status": "route_only",
        "key_hash": key_id("k"),
    }


def lookups(root: Path, hours: int, files_per_hour: int, rows: int) -> dict:
    start_ms = 1_760_000_000_000
    writer = DecisionLog(str(root), writer="bench")
    ids = []
    for h in range(hours):
        for f in range(files_per_hour):
            base = start_ms + h * 3_600_000 + f * (3_600_000 // files_per_hour)
            batch = [new_decision_id(base + i) for i in range(rows)]
            ids += batch
            for i in batch:
                writer.append(_row(i))
            writer.flush()
    probe = random.Random(0).sample(ids, 50)
    fresh = DecisionLog(str(root), writer="reader")
    t_get = []
    for i in probe:
        t0 = time.perf_counter()
        assert fresh.get(i, key_id("k")) is not None
        t_get.append((time.perf_counter() - t0) * 1000)
    t_scan = []
    for i in probe[:10]:
        t0 = time.perf_counter()
        assert read_decisions(root, i).num_rows == 1
        t_scan.append((time.perf_counter() - t0) * 1000)
    return {
        "files": hours * files_per_hour,
        "rows": len(ids),
        "get_ms": statistics.median(t_get),
        "scan_ms": statistics.median(t_scan),
    }


def feedback(root: Path, n: int) -> dict:
    log = DecisionLog(str(root), writer="fb")
    rows = [
        {
            "decision_id": new_decision_id(),
            "score": 1.0,
            "comment": None,
            "recorded_at": utcnow(),
            "replica": "fb",
            "key_hash": key_id("k"),
        }
        for _ in range(n)
    ]

    async def grouped():
        await asyncio.gather(*(log.commit_feedback(r) for r in rows))

    t0 = time.perf_counter()
    asyncio.run(grouped())
    grouped_s = time.perf_counter() - t0
    files = len(list((root / "feedback").rglob("*.parquet")))
    single = DecisionLog(str(root / "single"), writer="one")
    t0 = time.perf_counter()
    for r in rows:
        single.write_feedback([r])
    single_s = time.perf_counter() - t0
    return {"n": n, "grouped_s": grouped_s, "grouped_files": files, "single_s": single_s, "single_files": n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hours", type=int, default=48)
    p.add_argument("--files-per-hour", type=int, default=20)
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--feedback", type=int, default=200)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lk = lookups(Path(tmp) / "log", args.hours, args.files_per_hour, args.rows)
        fb = feedback(Path(tmp) / "fb", args.feedback)
    report = "\n".join(
        [
            "| measure | value |",
            "| --- | --- |",
            f"| decision files / rows in the log | {lk['files']} / {lk['rows']} |",
            f"| lookup of one id, DecisionLog.get (fresh replica, no index), median | {lk['get_ms']:.1f} ms |",
            f"| lookup of one id, full scan (read_decisions with a filter), median | {lk['scan_ms']:.1f} ms |",
            f"| {fb['n']} concurrent feedback, group commit | {fb['grouped_s']:.2f} s, {fb['grouped_files']} files |",
            f"| {fb['n']} feedback, one file each | {fb['single_s']:.2f} s, {fb['single_files']} files |",
        ]
    )
    print(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
