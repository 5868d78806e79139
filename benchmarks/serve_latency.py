"""`/v1/route` latency and throughput of the Serve router, with and without `@serve.batch`, against the
in-process encoder + policy forward on the same prompts.

    .venv/bin/python benchmarks/serve_latency.py [--policy runs/demo/policy] [--prompt-set both]

Three router apps run side by side in one Serve instance (one replica each, autoscaling off, 0.5 CPU,
the same torch threads as the in-process baseline: 1, Ray's default for fractional-CPU replicas):
- `batch`: `@serve.batch` + merging of batches queued behind a running forward (the default config),
- `batch_plain`: `@serve.batch` alone,
- `no_batch`: one forward per request.
Each app binds a single replay upstream: /v1/route never calls upstreams, and the forward pass computes
pi over all models of the checkpoint either way.

The machine this runs on is shared, so its load drifts: every comparison is interleaved in time.
1 client: for each prompt, the in-process forward and one sequential POST /v1/route to each app, in a
rotating order (p50 / p99 from client-side wall time). 8 and 32 closed-loop clients: --rounds rounds, each
running every (app, clients) cell for --duration-s seconds; throughput = requests completed / time.
Bounded (request counts, durations), loopback only. Results: <out>/serve_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import serve_common as sc

GOAL_P50_RATIO = 1.5
GOAL_BATCH_SPEEDUP = 3.0
# issue 11 (fast decisions): /v1/route p50 <= 1.3x the in-process decision; batching >= 2x at 32 clients
ISSUE11_P50_RATIO = 1.3
ISSUE11_BATCH_SPEEDUP = 2.0
MODES = {"batch": "@serve.batch + coalescing", "batch_plain": "@serve.batch only", "no_batch": "no batching"}


def mode_config(mode: str, policy: str, out, keys: str, args) -> dict:
    from barp_ray.serving.engine import read_policy_spec

    cheapest_only = [{"model": read_policy_spec(policy)["models"][0]}]
    return sc.app_config(
        policy,
        str(out / f"decisions-{mode}"),
        keys,
        upstreams=cheapest_only,
        batching={
            "enabled": mode != "no_batch",
            "coalesce": mode == "batch",
            "max_batch_size": args.max_batch_size,
            "max_forward_size": args.max_forward_size,
            "batch_wait_timeout_s": args.batch_wait_ms / 1000.0,
        },
        router={"torch_threads": args.torch_threads},
        encoding={"decision_cache_bytes": args.decision_cache_bytes, "threads": args.torch_threads},
    )


def one_client(port: int, engine, prompts: list[str], n: int, modes: list[str], w_cost: float) -> dict:
    import httpx

    lat: dict[str, list[float]] = {"in_process": [], "healthz": [], **{m: [] for m in modes}}
    server: dict[str, list[float]] = {m: [] for m in modes}
    paths = ["in_process", "healthz", *modes]
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}", timeout=60, headers={"Authorization": f"Bearer {sc.API_KEY}"}
    ) as client:
        for i in range(n + 4):
            prompt = prompts[i % len(prompts)]
            body = {"prompt": prompt, "preference": {"cost": w_cost}}
            for path in paths[i % len(paths) :] + paths[: i % len(paths)]:
                start = time.perf_counter()
                if path == "in_process":
                    engine.forward([prompt], [w_cost])
                elif path == "healthz":  # the Serve HTTP round trip with no model work: the floor
                    client.get(f"/{modes[0]}/healthz").raise_for_status()
                else:
                    r = client.post(f"/{path}/v1/route", json=body)
                    r.raise_for_status()
                took = (time.perf_counter() - start) * 1000.0
                if i >= 4:  # the first rounds warm up
                    lat[path].append(took)
                    if path in server:
                        server[path].append(r.json()["decision_latency_ms"])
    out = {p: sc.percentiles(v) for p, v in lat.items()}
    for m in modes:
        out[m]["server_decision_p50_ms"] = sc.percentiles(server[m])["p50_ms"]
    return out


def concurrent(
    port: int, prompts: list[str], modes: list[str], clients: list[int], rounds: int, duration_s: float, w_cost: float
) -> dict:
    bodies = [{"prompt": q, "preference": {"cost": w_cost}} for q in prompts]
    runs: dict[str, dict[int, list[dict]]] = {m: {c: [] for c in clients} for m in modes}
    for r in range(rounds):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]
        for c in clients:
            for m in order:
                res = asyncio.run(
                    sc.closed_loop(f"http://127.0.0.1:{port}/{m}/v1/route", bodies, c, duration_s, warmup_s=5.0)
                )
                print(
                    f"  round {r} {m} {c} clients: {res['throughput_rps']} req/s p50 {res.get('p50_ms')} ms", flush=True
                )
                runs[m][c].append(res)
    out: dict = {}
    for m in modes:
        out[m] = {}
        for c in clients:
            rs = runs[m][c]
            done = sum(x["completed"] for x in rs)
            out[m][str(c)] = {
                "throughput_rps": round(done / (duration_s * len(rs)), 3),
                "completed": done,
                "errors": sum(x["errors"] for x in rs),
                "per_round_rps": [x["throughput_rps"] for x in rs],
                "p50_ms_per_round": [x.get("p50_ms") for x in rs],
                "p99_ms_per_round": [x.get("p99_ms") for x in rs],
            }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default=None, help="checkpoint (default runs/demo/policy)")
    p.add_argument("--prompt-set", choices=["routerbench", "short", "both"], default="both")
    p.add_argument("--prompts", type=int, default=64, help="distinct prompts per set")
    p.add_argument("--requests-1", type=int, default=100, help="sequential requests per path at 1 client")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration-s", type=float, default=20.0, help="measured seconds per (app, clients) and round")
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=2.0)
    p.add_argument("--max-forward-size", type=int, default=64)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--w-cost", type=float, default=0.5)
    p.add_argument(
        "--decision-cache-bytes",
        type=int,
        default=0,
        help="router decision cache (0: off, so every "
        "request of the cycled prompt set pays the encoder, as the in-process baseline does)",
    )
    p.add_argument("--out", default="runs/bench/serve_latency")
    args = p.parse_args()
    policy = args.policy or sc.default_policy()
    out = sc.REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    kinds = ["routerbench", "short"] if args.prompt_set == "both" else [args.prompt_set]
    prompts = {k: sc.load_prompts(args.prompts, k) for k in kinds}
    results: dict = {"policy": policy, "args": vars(args), "machine_start": sc.machine()}

    import torch

    from barp_ray.serving.engine import EncodingConfig, RoutingEngine

    torch.set_num_threads(args.torch_threads)
    engine = RoutingEngine(
        policy,
        options=EncodingConfig(
            device="cpu", threads=args.torch_threads, decision_cache_bytes=args.decision_cache_bytes
        ),
    )
    results["encoder"] = engine.encoder_name
    results["in_process_batch32_prompts_per_s"] = {}
    for kind, ps in prompts.items():
        batch = ps[:32]
        engine.forward(batch, [args.w_cost] * len(batch))
        start = time.perf_counter()
        engine.forward(batch, [args.w_cost] * len(batch))
        results["in_process_batch32_prompts_per_s"][kind] = round(len(batch) / (time.perf_counter() - start), 2)

    port = sc.start_ray_and_serve()
    keys = sc.keys_file(out)
    results["deploy_s"] = {}
    for mode in args.modes:
        took = sc.deploy(mode_config(mode, policy, out, keys, args), port, name=f"bench-{mode}", prefix=f"/{mode}")
        results["deploy_s"][mode] = round(took, 1)
        print(f"deployed {mode} in {took:.1f}s", flush=True)

    results["one_client"], results["concurrent"], results["machine"] = {}, {}, {}
    for kind in kinds:
        r1 = one_client(port, engine, prompts[kind], args.requests_1, args.modes, args.w_cost)
        print(f"{kind} 1 client: {r1}", flush=True)
        results["one_client"][kind] = r1
        results["concurrent"][kind] = concurrent(
            port, prompts[kind], args.modes, args.concurrency, args.rounds, args.duration_s, args.w_cost
        )
        results["machine"][kind] = sc.machine()

    from ray import serve

    serve.shutdown()
    results["machine_end"] = sc.machine()
    results["goals"] = goals(results, kinds, args.concurrency, args.modes)
    js, md = sc.write_results(out, "serve_latency", results, markdown(results, kinds, args.concurrency, args.modes))
    print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0


def goals(r: dict, kinds: list[str], conc: list[int], modes: list[str]) -> dict:
    out = {}
    top = str(max(conc))
    for kind in kinds:
        base = r["one_client"][kind]["in_process"]["p50_ms"]
        g = {f"p50_ratio_{m}": round(r["one_client"][kind][m]["p50_ms"] / base, 3) for m in modes}
        if "batch" in modes:
            g["p50_goal_met"] = g["p50_ratio_batch"] <= GOAL_P50_RATIO
            g["issue11_p50_met"] = g["p50_ratio_batch"] <= ISSUE11_P50_RATIO
        if "no_batch" in modes:
            nb = max(r["concurrent"][kind]["no_batch"][top]["throughput_rps"], 1e-9)
            for m in ("batch", "batch_plain"):
                if m in modes:
                    g[f"speedup_{m}_at_{top}"] = round(r["concurrent"][kind][m][top]["throughput_rps"] / nb, 3)
            if "batch" in modes:
                g["batch_goal_met"] = g[f"speedup_batch_at_{top}"] >= GOAL_BATCH_SPEEDUP
                g["issue11_batch_met"] = g[f"speedup_batch_at_{top}"] >= ISSUE11_BATCH_SPEEDUP
        out[kind] = g
    return out


def markdown(r: dict, kinds: list[str], conc: list[int], modes: list[str]) -> str:
    a = r["args"]
    lines = [
        f"# /v1/route latency and throughput ({r['machine_start']['time']})",
        "",
        f"policy `{r['policy']}`, encoder `{r.get('encoder')}`, decision cache "
        f"{a.get('decision_cache_bytes', 0)} bytes; {a['prompts']} prompts per set; "
        f"torch threads {a['torch_threads']}; "
        f"max_batch_size {a['max_batch_size']}, batch wait {a['batch_wait_ms']} ms, merged forward <= "
        f"{a['max_forward_size']} prompts; each router 1 replica, 0.5 CPU; loopback HTTP; w_c = {a['w_cost']}; "
        f"client-side wall time; {a['rounds']} interleaved rounds of {a['duration_s']} s per cell.",
        f"Machine: {r['machine_start']['cpus']} CPUs, shared; load average (1/5/15 min) at start "
        f"{r['machine_start']['loadavg_1_5_15']}, at end {r['machine_end']['loadavg_1_5_15']}.",
        "",
    ]
    for kind in kinds:
        one = r["one_client"][kind]
        lines += [
            f"## {kind} prompts (load at end of this part: {r['machine'][kind]['loadavg_1_5_15']})",
            "",
            "| path | p50 ms (1 client) | p99 ms (1 client) | "
            + " | ".join(f"req/s at {c} clients" for c in conc)
            + " |",
            "| --- | ---: | ---: | " + " | ".join("---:" for _ in conc) + " |",
            f"| in-process forward | {one['in_process']['p50_ms']} | {one['in_process']['p99_ms']} | "
            + " | ".join("-" for _ in conc)
            + " |",
            f"| Serve `GET /healthz` (HTTP round trip, no model work) | {one['healthz']['p50_ms']} | "
            f"{one['healthz']['p99_ms']} | " + " | ".join("-" for _ in conc) + " |",
        ]
        for m in modes:
            cells = " | ".join(str(r["concurrent"][kind][m][str(c)]["throughput_rps"]) for c in conc)
            lines.append(
                f"| Serve, {MODES[m]} (server-side decision p50 {one[m]['server_decision_p50_ms']} ms) | "
                f"{one[m]['p50_ms']} | {one[m]['p99_ms']} | {cells} |"
            )
        g = r["goals"][kind]
        top = max(conc)
        lines += [
            "",
            f"- in-process, one forward pass of 32 prompts: {r['in_process_batch32_prompts_per_s'][kind]} "
            "prompts/s (the ceiling batching can reach on one thread)",
        ]
        g11 = r["goals"][kind]
        lines.append(
            f"- issue 11 goals: /v1/route p50 <= {ISSUE11_P50_RATIO}x in-process: "
            f"{'met' if g11.get('issue11_p50_met') else 'NOT met'}; batching >= {ISSUE11_BATCH_SPEEDUP}x "
            f"at {top} clients: {'met' if g11.get('issue11_batch_met') else 'NOT met'}"
        )
        if "p50_goal_met" in g:
            lines.append(
                "- 1-client p50 / in-process p50: "
                + ", ".join(f"{MODES[m]} {g[f'p50_ratio_{m}']}" for m in modes)
                + f" (goal <= {GOAL_P50_RATIO} with batching: {'met' if g['p50_goal_met'] else 'NOT met'})"
            )
        if "batch_goal_met" in g:
            lines.append(
                f"- throughput at {top} clients vs no batching: "
                + ", ".join(f"{MODES[m]} {g[f'speedup_{m}_at_{top}']}x" for m in ("batch", "batch_plain") if m in modes)
                + f" (goal >= {GOAL_BATCH_SPEEDUP}x: {'met' if g['batch_goal_met'] else 'NOT met'})"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
