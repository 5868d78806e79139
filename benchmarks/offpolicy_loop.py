"""Close the loop, as a simulation on real RouterBench data: serve a weak policy v0 with exploration, replay
prompts through the HTTP API with feedback from the recorded scores, train v1 from the decision logs alone,
evaluate it on the test split, check OPE against the truth, and roll v1 out to the running router.

    .venv/bin/python benchmarks/offpolicy_loop.py [--data runs/demo/data] [--reference runs/demo/policy]

1. v0: on-policy BaRP trained on one task only (`--v0-task`, a weak start), briefly.
2. Serve v0 (replay upstreams for all 11 models, epsilon-greedy exploration, parquet decision log).
3. Replay the train prompts (`--train-passes` times) and the test prompts (`--test-passes` times) through
   POST /v1/chat/completions with w_c ~ U(0, 1) per request; POST /v1/feedback with the recorded 0/1 score
   of the model that answered.
4. v1: `train_offpolicy` (SNIPS REINFORCE on Ray Train) on the logged train-prompt rows only.
5. Ground truth on the test split (full information): v0, v1 and the reference policy (on-policy BaRP
   trained with simulated bandit feedback on the same train prompts, `barp demo`'s policy).
6. OPE (`run_ope`) of v1 and v0 on the logged *test-prompt* traffic; do the intervals cover the truth?
7. Roll v1 out to the running router (Serve user_config, no restart) and replay a few test prompts; the
   decision log must record v1's version for them.
Outputs: <out>/report.md, report.json, cost_quality.png (git-ignored runs/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np
import serve_common as sc
from offpolicy_report import TARGET_AIQ_FRACTION, markdown, plot

from barp_ray.objective import CostScale

KEY_WS = (0.0, 0.5, 1.0)


def replay(port: int, table, rows: np.ndarray, passes: int, seed: int, concurrency: int, label: str) -> dict:
    """Send every row `passes` times (w_c ~ U(0,1) each) with feedback; returns counts and timings."""
    import httpx
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    jobs = [(int(i), float(rng.random())) for _ in range(passes) for i in rng.permutation(rows)]
    index_of = {m: k for k, m in enumerate(table.models)}
    stats = {"requests": 0, "errors": 0, "feedback": 0, "explored": 0, "fallbacks": 0}
    headers = {"Authorization": f"Bearer {sc.API_KEY}"}
    bar = tqdm(total=len(jobs), desc=f"replay {label}", unit="req")

    async def one(client: httpx.AsyncClient, i: int, w: float) -> None:
        body = {
            "model": "barp",
            "messages": [{"role": "user", "content": table.prompts[i]}],
            "preference": {"cost": w},
            "prompt_id": str(table.prompt_ids[i]),
        }
        r = await client.post("/v1/chat/completions", json=body)
        stats["requests"] += 1
        if r.status_code != 200:
            stats["errors"] += 1
            return
        info = r.json()["barp"]
        stats["explored"] += bool(info["explored"])
        stats["fallbacks"] += info["fallback"]["count"] > 0
        served = info["served_model"]
        score = float(table.scores[i, index_of[served]])
        f = await client.post("/v1/feedback", json={"decision_id": info["decision_id"], "score": score})
        stats["feedback"] += f.status_code == 200

    async def main() -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        limits = httpx.Limits(max_connections=concurrency + 2)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120, limits=limits
        ) as client:

            async def worker() -> None:
                while not queue.empty():
                    i, w = queue.get_nowait()
                    await one(client, i, w)
                    bar.update(1)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    start = time.perf_counter()
    asyncio.run(main())
    bar.close()
    stats["seconds"] = round(time.perf_counter() - start, 1)
    stats["requests_per_s"] = round(stats["requests"] / stats["seconds"], 2)
    return stats


def wait_for_log(log_dir: Path, expected: int, timeout_s: float = 120) -> int:
    from barp_ray.serving.decision_log import read_decisions, read_feedback

    deadline = time.monotonic() + timeout_s
    while True:
        n, f = read_decisions(log_dir).num_rows, read_feedback(log_dir).num_rows
        if (n >= expected and f >= expected) or time.monotonic() > deadline:
            return n
        time.sleep(2)


def log_stats(log_dir: Path, table, split: str) -> dict:
    """What the decision log holds for the prompts of one split: decisions, feedback, exploration, rate."""
    from barp_ray.serving.decision_log import read_decision_log

    hashes = set(table.where_split(split).content_hashes)
    frame = read_decision_log(log_dir)
    frame = frame[frame["prompt_hash"].isin(hashes)]
    span = (frame["decided_at"].max() - frame["decided_at"].min()).total_seconds() if len(frame) > 1 else 0.0
    return {
        "decisions": len(frame),
        "with_feedback": int((frame["feedback_count"] > 0).sum()),
        "explored": int(frame["explored"].sum()),
        "fallbacks": int((frame["fallback_count"] > 0).sum()),
        "errors": int((~frame["status"].isin(["ok", "fallback"])).sum()),
        "seconds": round(span, 1),
        "decisions_per_s": round(len(frame) / span, 2) if span else None,
        "by_model": frame["chosen_model"].value_counts().to_dict(),
    }


def truth(policy_dir: str, test, tau: CostScale, c_range: tuple[float, float]) -> dict:
    """Full-information ground truth of greedy routing on the test split."""
    from barp_ray.evaluation.barp_router import BarpRouter
    from barp_ray.evaluation.metrics import DEFAULT_W_GRID, aiq, curve_point
    from barp_ray.evaluation.routers import realised_reward

    router = BarpRouter(policy_dir)
    router.fit(test, tau)  # checks the model order; BaRP learns nothing here
    points, rewards = [], {}
    for w in DEFAULT_W_GRID:
        choice = router.route_table(test, float(w))
        points.append(curve_point(test, choice, float(w)))
        rewards[f"{w:g}"] = realised_reward(test, choice, float(w), tau)
    return {
        "aiq": aiq([p.cost for p in points], [p.score for p in points], *c_range),
        "curve": {f"{p.w_cost:g}": {"score": p.score, "cost": p.cost} for p in points},
        "reward": rewards,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="runs/demo/data", help="prepared + embedded shards (`barp demo` writes them)")
    p.add_argument("--reference", default="runs/demo/policy", help="on-policy BaRP trained on the same prompts")
    p.add_argument("--v0-task", default="winogrande")
    p.add_argument("--v0-epochs", type=int, default=2)
    p.add_argument("--epsilon", type=float, default=0.3, help="serve-time epsilon-greedy exploration of v0")
    p.add_argument("--train-passes", type=int, default=2)
    p.add_argument("--test-passes", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--v1-epochs", type=int, default=20)
    p.add_argument("--weighting", default="snips", choices=["snips", "clipped_ips"])
    p.add_argument("--rollout-requests", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep <out>/v0_policy and the decision log of an earlier run (skip v0 training and replay)",
    )
    p.add_argument("--out", default="runs/bench/offpolicy_loop")
    args = p.parse_args()
    started = time.perf_counter()
    out = (sc.REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = str((sc.REPO / args.data).resolve())
    reference = str((sc.REPO / args.reference).resolve())

    from barp_ray.data.shards import read_shards
    from barp_ray.evaluation.evaluate import cost_range, single_model_points
    from barp_ray.offpolicy.config import LogSource, OffPolicyTrainConfig, OPEConfig
    from barp_ray.offpolicy.ope import run_ope
    from barp_ray.offpolicy.trainer import train_offpolicy
    from barp_ray.policy.checkpoint import load_policy
    from barp_ray.serving.decision_log import read_decision_log
    from barp_ray.training.config import TrainConfig
    from barp_ray.training.trainer import train_policy

    if not Path(reference, "policy.json").exists():
        raise SystemExit(f"no reference policy at {reference}: run `barp demo` first (it writes runs/demo/*)")
    table = read_shards(data)
    tau = load_policy(reference).spec.cost_scale  # the reference's reward scale: every policy is scored on it
    test = table.where_split("test")
    c_range = cost_range(test)
    tasks = sorted(set(table.tasks.tolist()))
    if args.v0_task not in tasks:
        raise SystemExit(f"--v0-task {args.v0_task!r} is not a task of {data}: {tasks}")
    results: dict = {
        "args": vars(args),
        "machine_start": sc.machine(),
        "tau": tau.tau,
        "cost_scale": tau.describe(),
        "timings_s": {},
    }

    def lap(name: str, since: float) -> None:
        results["timings_s"][name] = round(time.perf_counter() - since, 1)
        print(f"[{name}] {results['timings_s'][name]} s", flush=True)

    port = sc.start_ray_and_serve()
    # 1. v0: weak start, one task only (tau fixed to the reference's so rewards compare)
    t = time.perf_counter()
    v0_dir = out / "v0_policy"
    reuse = args.reuse and (v0_dir / "policy.json").exists() and (out / "decision_log" / "decisions").exists()
    if not reuse:
        v0_cfg = TrainConfig(
            data=data,
            exclude_tasks=[x for x in tasks if x != args.v0_task],
            epochs=args.v0_epochs,
            steps_per_epoch=100,
            tau=tau.tau,
            cost_scale=tau.kind,
            cost_floor=tau.floor,
            storage_path=str(out / "ray_results"),
            name="loop-v0",
            seed=args.seed,
        )
        train_policy(v0_cfg, export_dir=v0_dir)
    v0 = str(v0_dir)
    lap("train_v0", t)

    # 2. serve v0 with exploration
    t = time.perf_counter()
    log_dir = out / "decision_log"
    if log_dir.exists() and not reuse:
        import shutil

        shutil.rmtree(log_dir)
    app = sc.app_config(
        v0,
        str(log_dir),
        sc.keys_file(out),
        exploration={"mode": "epsilon", "epsilon": args.epsilon, "seed": args.seed},
        decision_log={"path": str(log_dir), "flush_rows": 512, "flush_interval_s": 2},
        router={"max_replicas": 1, "num_cpus": 0.5, "max_ongoing_requests": 64},
    )
    sc.deploy_declarative(app, port)  # from a config, as `serve run` does: rollout can then update it in place
    lap("deploy_v0", t)

    # 3. replay train, then test prompts, with feedback
    train_rows = np.flatnonzero(table.split == "train")
    test_rows = np.flatnonzero(table.split == "test")
    if not reuse:
        results["replay_train"] = replay(
            port, table, train_rows, args.train_passes, args.seed, args.concurrency, "train"
        )
        results["replay_test"] = replay(
            port, table, test_rows, args.test_passes, args.seed + 1, args.concurrency, "test"
        )
        wait_for_log(log_dir, results["replay_train"]["requests"] + results["replay_test"]["requests"])
    results["logged"] = {split: log_stats(log_dir, table, split) for split in ("train", "test")}

    # 4. v1 from the logs of the train prompts alone
    t = time.perf_counter()
    v1_cfg = OffPolicyTrainConfig(
        source=LogSource(logs=str(log_dir), embeddings_from=data, prompt_split="train"),
        storage_path=str(out / "ray_results"),
        name="loop-v1",
        epochs=args.v1_epochs,
        weighting=args.weighting,
        seed=args.seed,
    )
    outcome, context = train_offpolicy(v1_cfg, export_dir=out / "v1_policy")
    v1 = str(outcome.policy_dir)
    results["v1_training"] = {
        "log_read": context["report"],
        "train_rows": context["train_rows"],
        "val_rows": context["val_rows"],
        "best": outcome.best_metrics,
        "seconds": round(outcome.seconds, 1),
    }
    lap("train_v1", t)

    # 5. ground truth on the test split
    curves = {
        "v0 (one task)": truth(v0, test, tau, c_range),
        "v1 (from logs)": truth(v1, test, tau, c_range),
        "reference (on-policy)": truth(reference, test, tau, c_range),
    }
    results["truth"] = curves
    v0_t, v1_t, ref_t = curves["v0 (one task)"], curves["v1 (from logs)"], curves["reference (on-policy)"]
    beats = {f"{w:g}": v1_t["reward"][f"{w:g}"] > v0_t["reward"][f"{w:g}"] for w in KEY_WS}
    results["targets"] = {
        "v1_beats_v0_reward": beats,
        "v1_beats_v0_all": all(beats.values()),
        "aiq_fraction_of_reference": v1_t["aiq"] / ref_t["aiq"],
        "aiq_target_met": v1_t["aiq"] >= TARGET_AIQ_FRACTION * ref_t["aiq"],
    }

    # 6. OPE of v1 (and v0) on the logged test-prompt traffic, against the truth
    t = time.perf_counter()
    ope_results = {}
    for model in ("logs", "full_information"):
        ope_cfg = OPEConfig(
            source=LogSource(logs=str(log_dir), embeddings_from=data, prompt_split="test"),
            candidate=v1,
            baseline=v0,
            w_grid=list(KEY_WS),
            reward_model=model,
            reward_data=data,
            out_dir=str(out / f"ope_{model}"),
            seed=args.seed,
        )
        ope_results[model] = run_ope(ope_cfg)
    coverage = {}
    for model, r in ope_results.items():
        cov = {}
        for w in KEY_WS:
            true_score = v1_t["curve"][f"{w:g}"]["score"]
            cov[f"{w:g}"] = {
                e: {
                    "value": v["value"],
                    "low": v["low"],
                    "high": v["high"],
                    "covers": v["low"] <= true_score <= v["high"],
                }
                for e, v in r["grid"]["candidate"][f"{w:g}"]["score"].items()
            }
            cov[f"{w:g}"]["truth"] = true_score
        coverage[model] = cov
    results["ope"] = {
        "coverage_of_v1_score": coverage,
        "vs_logging": {m: r["vs_logging"] for m, r in ope_results.items()},
        "v1_vs_v0": {m: r["vs_baseline"] for m, r in ope_results.items()},
    }
    lap("ope", t)

    # 7. roll v1 out to the running router; the log must show v1's version on new decisions
    (out / "report.json").write_text(json.dumps(results, indent=2, default=str))  # so far, in case of a failure
    try:
        results["rollout"] = rollout_phase(port, v1, log_dir, table, test_rows, args)
    except Exception as exc:  # noqa: BLE001  (reported, not hidden: the rest of the loop stands on its own)
        results["rollout"] = {"error": f"{type(exc).__name__}: {exc}"}

    from ray import serve

    serve.shutdown()
    results["machine_end"] = sc.machine()
    results["timings_s"]["total"] = round(time.perf_counter() - started, 1)
    singles = single_model_points(test)
    plot(curves, singles, out / "cost_quality.png")
    (out / "report.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "report.md").write_text(markdown(results, read_decision_log(log_dir)))
    print((out / "report.md").read_text())
    return 0


def rollout_phase(port: int, v1: str, log_dir: Path, table, test_rows: np.ndarray, args) -> dict:
    """Push v1 to the running app (zero-downtime reconfigure), keep replaying, and check the log's versions."""
    from dataclasses import asdict

    from barp_ray.serving.engine import policy_version
    from barp_ray.serving.rollout import rollout

    t = time.perf_counter()
    info = asdict(rollout(v1, app=sc.APP_NAME, timeout_s=300))
    seconds = round(time.perf_counter() - t, 1)
    rows = test_rows[: args.rollout_requests]
    stats = replay(port, table, rows, 1, args.seed + 7, min(8, args.concurrency), "after rollout")
    from barp_ray.serving.decision_log import read_decisions

    time.sleep(5)
    versions = read_decisions(log_dir).to_pandas()["policy_version"].value_counts().to_dict()
    want = policy_version(v1)
    return {
        "info": info,
        "seconds": seconds,
        "requests_after": stats,
        "v1_version": want,
        "decisions_by_version": versions,
        "v1_decisions": int(versions.get(want, 0)),
    }


if __name__ == "__main__":
    raise SystemExit(main())
