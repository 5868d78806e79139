"""Autoscaling and memory of the Serve router under sustained load.

    .venv/bin/python benchmarks/serve_autoscale.py --phase both --minutes 10

Phase `autoscale`: the router runs with autoscaling (min 1, max --max-replicas, target_ongoing_requests
--target); --clients closed-loop clients send chat completions for --load-s seconds, then stop; replica
counts (running and target, from `serve.status()`) are sampled every second through the load and a
--cooldown-s idle period, to see the scale-up to max and the scale-down after.

Phase `rss`: one router replica (min = max = 1) under --rss-clients clients for --minutes; the RSS of the
router replica process (found by its process title `ray::ServeReplica:<app>:BarpRouter`) is sampled every
--rss-every-s seconds. Flat means: the last sample within 10% of the first sample after the warm-up.

Loopback only, bounded. Results: <out>/serve_autoscale.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from pathlib import Path

import serve_common as sc

ROUTER = "BarpRouter"


def router_status() -> dict:
    from ray import serve

    app = serve.status().applications.get(sc.APP_NAME)
    if app is None or ROUTER not in app.deployments:
        return {"running": 0, "target": None, "status": "MISSING"}
    dep = app.deployments[ROUTER]
    states = {getattr(k, "value", str(k)): v for k, v in dep.replica_states.items()}
    return {
        "running": int(states.get("RUNNING", 0)),
        "target": int(sum(v for k, v in states.items() if k in ("RUNNING", "STARTING", "UPDATING", "RECOVERING"))),
        "states": states,
        "status": getattr(dep.status, "value", str(dep.status)),
        "trigger": getattr(dep.status_trigger, "value", str(dep.status_trigger)),
    }


def router_pids() -> list[int]:
    """PIDs of the router replicas, found by their process title (Linux /proc; no psutil needed)."""
    wanted = f"ServeReplica:{sc.APP_NAME}:{ROUTER}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return sorted(pids)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Sampler(threading.Thread):
    def __init__(self, every_s: float, fn) -> None:
        super().__init__(daemon=True)
        self.every_s, self.fn, self.samples, self.stop = every_s, fn, [], threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append({"t_s": round(time.monotonic() - self.t0, 1), **self.fn()})
            except Exception as exc:  # noqa: BLE001 - keep sampling
                self.samples.append({"t_s": round(time.monotonic() - self.t0, 1), "error": repr(exc)})
            self.stop.wait(self.every_s)


def chat_bodies(prompts: list[str]) -> list[dict]:
    return [
        {"model": "barp", "messages": [{"role": "user", "content": q}], "preference": {"cost": w}}
        for q, w in zip(prompts, [0.1, 0.5, 0.9] * len(prompts), strict=False)
    ]


def phase_autoscale(args, policy: str, out, port: int, keys: str, bodies: list[dict]) -> dict:
    cfg = sc.app_config(
        policy,
        str(out / "decisions-autoscale"),
        keys,
        router={
            "min_replicas": 1,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.target,
            "upscale_delay_s": args.upscale_delay_s,
            "downscale_delay_s": args.downscale_delay_s,
            "look_back_period_s": 11.0,
            "num_cpus": 0.5,
            "max_ongoing_requests": 256,
        },
        batching={"enabled": True, "max_batch_size": 16, "batch_wait_timeout_s": 0.002},
    )
    took = sc.deploy(cfg, port)
    print(f"deployed in {took:.1f}s", flush=True)
    sampler = Sampler(1.0, router_status)
    sampler.start()
    load_start = time.monotonic() - sampler.t0
    load = asyncio.run(
        sc.closed_loop(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            bodies,
            args.clients,
            args.load_s,
            warmup_s=0.0,
            timeout_s=120,
        )
    )
    load_end = time.monotonic() - sampler.t0
    print(f"load: {load}", flush=True)
    deadline = time.monotonic() + args.cooldown_s
    while time.monotonic() < deadline:
        time.sleep(1)
        if (
            sampler.samples
            and sampler.samples[-1].get("running") == 1
            and time.monotonic() - sampler.t0 > load_end + 5
            and args.stop_when_down
        ):
            break
    sampler.stop.set()
    sampler.join()
    samples = sampler.samples
    running = [s.get("running", 0) for s in samples]
    reached = next((s["t_s"] for s in samples if s.get("running") == args.max_replicas), None)
    back = next((s["t_s"] for s in samples if s["t_s"] > load_end and s.get("running") == 1), None)
    return {
        "deploy_s": round(took, 1),
        "load": load,
        "load_window_s": [round(load_start, 1), round(load_end, 1)],
        "max_running": max(running) if running else 0,
        "reached_max_at_s": reached,
        "back_to_min_at_s": back,
        "samples": samples,
        "machine": sc.machine(),
    }


def phase_rss(args, policy: str, out, port: int, keys: str, bodies: list[dict]) -> dict:
    cfg = sc.app_config(
        policy,
        str(out / "decisions-rss"),
        keys,
        router={"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.5, "max_ongoing_requests": 256},
        batching={"enabled": True, "max_batch_size": 16, "batch_wait_timeout_s": 0.002},
        **({"encoding": {"decision_cache_bytes": args.cache_bytes}} if args.cache_bytes is not None else {}),
    )
    took = sc.deploy(cfg, port)
    pids = router_pids()
    if len(pids) != 1:
        raise RuntimeError(f"expected one router replica process, found {pids}")
    pid = pids[0]
    print(f"deployed in {took:.1f}s; router replica pid {pid}", flush=True)

    def rss() -> dict:
        return {"rss_mb": rss_mb(pid), "pid": pid}

    sampler = Sampler(args.rss_every_s, rss)
    sampler.start()
    load = asyncio.run(
        sc.closed_loop(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            bodies,
            args.rss_clients,
            args.minutes * 60.0,
            warmup_s=0.0,
            timeout_s=120,
        )
    )
    sampler.stop.set()
    sampler.join()
    samples = [s for s in sampler.samples if "rss_mb" in s]
    warm = [s for s in samples if s["t_s"] >= args.warmup_s] or samples
    first, last = warm[0]["rss_mb"], samples[-1]["rss_mb"]
    peak = max(s["rss_mb"] for s in warm)
    return {
        "deploy_s": round(took, 1),
        "load": load,
        "minutes": args.minutes,
        "warmup_s": args.warmup_s,
        "rss_first_mb": samples[0]["rss_mb"],
        "rss_after_warmup_mb": first,
        "rss_last_mb": last,
        "rss_peak_after_warmup_mb": peak,
        "growth_pct": round(100.0 * (last - first) / first, 2),
        "peak_growth_pct": round(100.0 * (peak - first) / first, 2),
        "flat_within_10pct": abs(last - first) / first <= 0.10 and (peak - first) / first <= 0.10,
        "samples": samples,
        "machine": sc.machine(),
    }


def markdown(r: dict) -> str:
    lines = [
        f"# Router autoscaling and memory ({r['machine_start']['time']})",
        "",
        f"policy `{r['policy']}`; machine: {r['machine_start']['cpus']} CPUs, load average at start "
        f"{r['machine_start']['loadavg_1_5_15']}, at end {r['machine_end']['loadavg_1_5_15']} (shared).",
        "",
    ]
    a = r.get("autoscale")
    if a:
        args = r["args"]
        lines += [
            "## Autoscaling",
            "",
            f"min 1 / max {args['max_replicas']} replicas, target_ongoing_requests {args['target']}, upscale "
            f"delay {args['upscale_delay_s']} s, downscale delay {args['downscale_delay_s']} s; "
            f"{args['clients']} clients of POST /v1/chat/completions for {args['load_s']} s "
            f"(load window {a['load_window_s']} s), then idle.",
            "",
            f"- throughput {a['load']['throughput_rps']} req/s, p50 {a['load'].get('p50_ms')} ms, p99 "
            f"{a['load'].get('p99_ms')} ms, errors {a['load']['errors']}",
            f"- max running replicas {a['max_running']}; reached max at t = {a['reached_max_at_s']} s; back to "
            f"1 at t = {a['back_to_min_at_s']} s",
            "",
            "| t (s) | running | running + starting | status |",
            "| ---: | ---: | ---: | --- |",
        ]
        prev = None
        for s in a["samples"]:
            key = (s.get("running"), s.get("target"), s.get("status"))
            if key != prev:
                lines.append(f"| {s['t_s']} | {s.get('running')} | {s.get('target')} | {s.get('status')} |")
                prev = key
        lines.append("")
    m = r.get("rss")
    if m:
        lines += [
            "## Router replica RSS under load",
            "",
            f"{r['args']['rss_clients']} clients of POST /v1/chat/completions for {m['minutes']} min, one "
            f"router replica (decision cache: {r['args'].get('cache_bytes') or 'the default'} bytes, "
            f"{r['args']['prompts']} distinct prompts round-robin); {m['load']['completed']} requests "
            f"({m['load']['throughput_rps']} req/s), "
            f"{m['load']['errors']} errors.",
            "",
            f"- RSS at start {m['rss_first_mb']} MB, after {m['warmup_s']} s warm-up "
            f"{m['rss_after_warmup_mb']} MB, "
            f"at the end {m['rss_last_mb']} MB ({m['growth_pct']:+}%), peak after warm-up "
            f"{m['rss_peak_after_warmup_mb']} MB ({m['peak_growth_pct']:+}%): flat within 10%: "
            f"{'yes' if m['flat_within_10pct'] else 'NO'}",
            "",
            "| t (s) | RSS MB |",
            "| ---: | ---: |",
        ]
        step = max(1, len(m["samples"]) // 20)
        for s in m["samples"][::step] + ([m["samples"][-1]] if len(m["samples"]) % step != 1 else []):
            lines.append(f"| {s['t_s']} | {s['rss_mb']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default=None)
    p.add_argument("--phase", choices=["autoscale", "rss", "both"], default="both")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--load-s", type=float, default=90.0)
    p.add_argument("--cooldown-s", type=float, default=90.0)
    p.add_argument("--stop-when-down", action="store_true", default=True)
    p.add_argument("--max-replicas", type=int, default=3)
    p.add_argument("--target", type=float, default=4.0, help="target_ongoing_requests per replica")
    p.add_argument("--upscale-delay-s", type=float, default=3.0)
    p.add_argument("--downscale-delay-s", type=float, default=15.0)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the RSS load run")
    p.add_argument("--rss-clients", type=int, default=8)
    p.add_argument("--rss-every-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=60.0, help="RSS samples before this are warm-up")
    p.add_argument(
        "--cache-bytes",
        type=int,
        default=None,
        help="the replica's decision cache bound for the RSS run (default: the app's). Below --prompts x ~1.8 KB "
        "the cache is full and, with the prompts sent round-robin, evicts on every request",
    )
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--out", default="runs/bench/serve_autoscale")
    args = p.parse_args()
    policy = args.policy or sc.default_policy()
    out = sc.REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    bodies = chat_bodies(sc.load_prompts(args.prompts, "routerbench"))
    results: dict = {"policy": policy, "args": vars(args), "machine_start": sc.machine()}
    port = sc.start_ray_and_serve()
    keys = sc.keys_file(out)
    if args.phase in ("autoscale", "both"):
        results["autoscale"] = phase_autoscale(args, policy, out, port, keys, bodies)
    if args.phase in ("rss", "both"):
        results["rss"] = phase_rss(args, policy, out, port, keys, bodies)
    from ray import serve

    serve.shutdown()
    results["machine_end"] = sc.machine()
    js, md = sc.write_results(out, "serve_autoscale", results, markdown(results))
    print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
