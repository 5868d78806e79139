"""`/v1/route` latency and throughput of the Serve router, with and without `@serve.batch`, against the
in-process encoder + policy forward on the same prompts.

    .venv/bin/python benchmarks/serve_latency.py [--policy runs/demo/policy] [--prompt-set both]

Measures, per prompt set (RouterBench test prompts, and short chat-like prompts):
- in-process: `RoutingEngine.forward([prompt], [w])` one at a time (p50 / p99), same torch threads as the
  router replica (1: Ray's default for fractional-CPU replicas);
- Serve, 1 client: sequential POST /v1/route over loopback HTTP (p50 / p99, client-side wall time);
- Serve, 8 and 32 concurrent closed-loop clients: throughput (requests/s) and latency;
with the router at one replica (autoscaling off) so batching is the only difference between the two runs.
Everything is bounded (request counts, durations) and loopback only. Results: <out>/serve_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

import serve_common as sc

GOAL_P50_RATIO = 1.5
GOAL_BATCH_SPEEDUP = 3.0


def in_process(policy: str, prompts: dict[str, list[str]], n: int, threads: int, w_cost: float) -> dict:
    import torch

    from barp_ray.serving.engine import RoutingEngine

    torch.set_num_threads(threads)
    engine = RoutingEngine(policy)
    out = {}
    for kind, ps in prompts.items():
        for p in ps[:4]:
            engine.forward([p], [w_cost])
        lat = []
        for i in range(n):
            start = time.perf_counter()
            engine.forward([ps[i % len(ps)]], [w_cost])
            lat.append((time.perf_counter() - start) * 1000.0)
        batch = ps[:32]
        start = time.perf_counter()
        engine.forward(batch, [w_cost] * len(batch))
        batched_s = time.perf_counter() - start
        out[kind] = {**sc.percentiles(lat), "batch32_prompts_per_s": round(len(batch) / batched_s, 2),
                     "single_prompts_per_s": round(1000.0 / sc.percentiles(lat)["mean_ms"], 2)}
        print(f"in-process {kind}: {out[kind]}", flush=True)
    del engine
    gc.collect()
    return out


def one_client(port: int, bodies: list[dict], n: int) -> dict:
    import httpx

    lat, server = [], []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                      headers={"Authorization": f"Bearer {sc.API_KEY}"}) as client:
        for body in bodies[:4]:
            client.post("/v1/route", json=body).raise_for_status()
        for i in range(n):
            start = time.perf_counter()
            r = client.post("/v1/route", json=bodies[i % len(bodies)])
            lat.append((time.perf_counter() - start) * 1000.0)
            r.raise_for_status()
            server.append(r.json()["decision_latency_ms"])
    return {**sc.percentiles(lat), "server_decision_p50_ms": sc.percentiles(server)["p50_ms"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default=None, help="checkpoint (default runs/demo/policy)")
    p.add_argument("--prompt-set", choices=["routerbench", "short", "both"], default="both")
    p.add_argument("--prompts", type=int, default=64, help="distinct prompts per set")
    p.add_argument("--requests-1", type=int, default=100, help="sequential requests for the 1-client latency")
    p.add_argument("--duration-s", type=float, default=20.0, help="measured seconds per concurrency level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--max-forward-size", type=int, default=64)
    p.add_argument("--modes", nargs="+", default=["batch", "batch_plain", "no_batch"],
                   choices=["batch", "batch_plain", "no_batch"],
                   help="batch: @serve.batch + merging of queued batches (the default config); batch_plain: "
                   "@serve.batch alone; no_batch: one forward per request")
    p.add_argument("--w-cost", type=float, default=0.5)
    p.add_argument("--out", default="runs/bench/serve_latency")
    args = p.parse_args()
    policy = args.policy or sc.default_policy()
    out = sc.REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    kinds = ["routerbench", "short"] if args.prompt_set == "both" else [args.prompt_set]
    prompts = {k: sc.load_prompts(args.prompts, k) for k in kinds}
    results: dict = {"policy": policy, "args": vars(args), "machine_start": sc.machine()}

    results["in_process"] = in_process(policy, prompts, args.requests_1, args.torch_threads, args.w_cost)

    port = sc.start_ray_and_serve()
    keys = sc.keys_file(out)
    results["serve"] = {}
    for mode in args.modes:
        cfg = sc.app_config(
            policy, str(out / f"decisions-{mode}"), keys,
            batching={"enabled": mode != "no_batch", "coalesce": mode == "batch",
                      "max_batch_size": args.max_batch_size, "max_forward_size": args.max_forward_size,
                      "batch_wait_timeout_s": args.batch_wait_ms / 1000.0},
            router={"torch_threads": args.torch_threads},
        )
        took = sc.deploy(cfg, port)
        print(f"deployed ({mode}) in {took:.1f}s", flush=True)
        results["serve"][mode] = {"deploy_s": round(took, 1)}
        for kind in kinds:
            bodies = [{"prompt": q, "preference": {"cost": args.w_cost}} for q in prompts[kind]]
            r1 = one_client(port, bodies, args.requests_1)
            print(f"{mode} {kind} 1 client: {r1}", flush=True)
            entry = {"1": r1}
            for c in args.concurrency:
                rc = asyncio.run(sc.closed_loop(f"http://127.0.0.1:{port}/v1/route", bodies, c, args.duration_s))
                print(f"{mode} {kind} {c} clients: {rc}", flush=True)
                entry[str(c)] = rc
            entry["machine"] = sc.machine()
            results["serve"][mode][kind] = entry

    from ray import serve

    serve.shutdown()
    results["machine_end"] = sc.machine()
    results["goals"] = goals(results, kinds, args.concurrency) if {"batch", "no_batch"} <= set(args.modes) else {}
    js, md = sc.write_results(out, "serve_latency", results, markdown(results, kinds, args.concurrency))
    print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0


def goals(results: dict, kinds: list[str], conc: list[int]) -> dict:
    out = {}
    top = str(max(conc))
    for kind in kinds:
        base = results["in_process"][kind]["p50_ms"]
        served = results["serve"]["batch"][kind]["1"]["p50_ms"]
        unbatched = results["serve"]["no_batch"][kind]["1"]["p50_ms"]
        speedup = (results["serve"]["batch"][kind][top]["throughput_rps"]
                   / max(results["serve"]["no_batch"][kind][top]["throughput_rps"], 1e-9))
        out[kind] = {
            "p50_ratio_batch": round(served / base, 3), "p50_ratio_no_batch": round(unbatched / base, 3),
            "p50_goal_met": served / base <= GOAL_P50_RATIO,
            f"batch_speedup_at_{top}": round(speedup, 3), "batch_goal_met": speedup >= GOAL_BATCH_SPEEDUP,
        }
    return out


def markdown(r: dict, kinds: list[str], conc: list[int]) -> str:
    lines = [f"# /v1/route latency and throughput ({r['machine_start']['time']})", "",
             f"policy `{r['policy']}`; {r['args']['prompts']} prompts per set; torch threads "
             f"{r['args']['torch_threads']}; max_batch_size {r['args']['max_batch_size']}, batch wait "
             f"{r['args']['batch_wait_ms']} ms, merged forward <= {r['args']['max_forward_size']} prompts; router: "
             "1 replica, 0.5 CPU; loopback HTTP; w_c = 0.5; client-side wall time.",
             f"Machine: {r['machine_start']['cpus']} CPUs, load average (1/5/15 min) at start "
             f"{r['machine_start']['loadavg_1_5_15']}, at end {r['machine_end']['loadavg_1_5_15']} "
             "(shared machine: other jobs ran at the same time).", ""]
    for kind in kinds:
        ip = r["in_process"][kind]
        lines += [f"## {kind} prompts", "",
                  "| path | clients | p50 ms | p99 ms | throughput req/s |", "| --- | ---: | ---: | ---: | ---: |",
                  f"| in-process forward | 1 | {ip['p50_ms']} | {ip['p99_ms']} | {ip['single_prompts_per_s']} |",
                  f"| in-process forward, one batch of 32 | - | - | - | {ip['batch32_prompts_per_s']} |"]
        labels = {"batch": "Serve, @serve.batch + coalescing", "batch_plain": "Serve, @serve.batch only",
                  "no_batch": "Serve, no batching"}
        for mode, label in labels.items():
            if mode not in r["serve"]:
                continue
            e = r["serve"][mode][kind]
            lines.append(f"| {label} | 1 | {e['1']['p50_ms']} | {e['1']['p99_ms']} | "
                         f"{round(1000.0 / e['1']['mean_ms'], 2)} |")
            for c in conc:
                x = e[str(c)]
                lines.append(f"| {label} | {c} | {x['p50_ms']} | {x['p99_ms']} | {x['throughput_rps']} |")
        g = r["goals"].get(kind)
        if not g:
            continue
        top = max(conc)
        lines += ["", f"- p50 at 1 client / in-process p50: {g['p50_ratio_batch']} with batching, "
                  f"{g['p50_ratio_no_batch']} without (goal <= {GOAL_P50_RATIO}: "
                  f"{'met' if g['p50_goal_met'] else 'NOT met'})",
                  f"- throughput at {top} clients, batching / no batching: {g[f'batch_speedup_at_{top}']}x "
                  f"(goal >= {GOAL_BATCH_SPEEDUP}x: {'met' if g['batch_goal_met'] else 'NOT met'})", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
