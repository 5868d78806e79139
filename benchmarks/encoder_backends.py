"""Encoder backends side by side: torch fp32 @256 / @128, onnx fp32 @256 / @128, onnx-int8 @128.

Per variant, in ONE process and interleaved (every round times every variant back to back, the order
rotating), because the 2-core machine is shared: only ratios between variants are meaningful.

- decision latency (encoder + policy, `RoutingEngine.forward` of one prompt, decision cache off) p50 / p99
  on RouterBench test prompts, on test prompts of >= 256 tokens, and on short chat prompts;
- batch-32 encode throughput (prompts/s) on RouterBench test prompts;
- decision-cache hit vs miss p50 (default variant, cache on);
- RSS of a fresh process holding only the encoder, and one holding the whole `RoutingEngine`;
- quality: a policy trained per variant on that variant's embeddings (`barp_ray.training.bare`,
  fixed seed, the default `TrainConfig`), val and test AIQ, and the share of (test prompt, w_c) greedy
  decisions over an 11-point w_c grid identical to the torch fp32 @256 policy's; also the torch @256
  policy served on the variant's embeddings without retraining (the skew `allow_encoder_mismatch` accepts).

One torch / ONNX Runtime thread everywhere (as a router replica's forward thread). Usage:

    python benchmarks/encoder_backends.py --data runs/h3/data --out runs/bench/encoder_backends
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from encoder_variants import VARIANTS, embedded_table, spec_of

SHORT_PROMPTS = [
    "hi",
    "What is 2 + 2?",
    "Tell me a joke.",
    "Translate 'thank you' into German.",
    "What's the capital of Peru?",
    "Write a haiku about rain.",
    "How do I reverse a list in python?",
    "Summarise: the meeting moved to 3pm.",
    "Is a tomato a fruit?",
    "Give me a synonym for happy.",
    "What time zone is Tokyo in?",
    "Recommend a sci-fi book.",
    "How many legs does a spider have?",
    "Define entropy in one sentence.",
    "What does HTTP 404 mean?",
    "Convert 5 miles to km.",
]


def rss_probe(spec_id: str, policy: str | None) -> dict:
    """RSS (MiB) of a fresh process that loads the encoder (or the whole engine) and decides 32 prompts."""
    code = f"""
import json, resource
import numpy as np
from barp_ray.embeddings.encoder import load_encoder, encode
texts = ["a test prompt number %d about routing" % i for i in range(32)]
if {policy!r}:
    from barp_ray.serving.engine import RoutingEngine, EncodingConfig
    e = RoutingEngine({policy!r}, options=EncodingConfig(device="cpu", threads=1, decision_cache_bytes=0))
    e.forward(texts, [0.5] * 32)
else:
    enc = load_encoder({spec_id!r}, device="cpu", threads=1)
    encode(enc, texts)
rss = int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) / 1024
print(json.dumps({{"rss_mib": rss, "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        return {"error": out.stderr[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def policy_dirname(label: str) -> str:
    return label.replace(" ", "_").replace("@", "")


def train_job(job: tuple) -> dict:
    """Train one variant's policy (fixed seed, `train_in_process`) on its cached embeddings; save it."""
    _label, backend, max_len, data, cache_dir, cfg_doc, seed, policy_dir = job
    import torch

    from barp_ray.policy.checkpoint import save_policy
    from barp_ray.training.bare import train_in_process
    from barp_ray.training.config import TrainConfig

    torch.set_num_threads(1)
    spec = spec_of(backend, max_len)
    table, info = embedded_table(Path(data), spec, Path(cache_dir))
    cfg = TrainConfig.model_validate({**cfg_doc, "seed": seed})
    outcome = train_in_process(cfg, table.where_split("train"), table.where_split("val"), num_threads=1)
    save_policy(outcome.policy, policy_dir)
    return {
        "encoder_id": spec.id,
        "embedding": info,
        "train_s": outcome.seconds,
        "policy_dir": policy_dir,
        "best_epoch": outcome.best["epoch"],
        "val_aiq": float(outcome.best["val_aiq"]),
        "test_aiq": aiq_on(outcome.policy, table.where_split("test")),
    }


def decisions(policy, table, grid: np.ndarray) -> np.ndarray:
    """(N, len(grid)) greedy choices of `policy` on `table` (canonical row order)."""
    import torch

    from barp_ray.objective import greedy_choice
    from barp_ray.training.loop import canonical_order

    emb = torch.as_tensor(table.embeddings[canonical_order(table)], dtype=torch.float32)
    return np.stack([greedy_choice(policy, emb, float(w)).numpy() for w in grid], axis=1)


def aiq_on(policy, table) -> float:
    from barp_ray.training.loop import PolicyData, validation_metrics

    return float(validation_metrics(policy, PolicyData.from_table(table), 11)["val_aiq"])


def latency_policy(job: tuple, cfg) -> dict:
    """A checkpoint to time a variant with: the saved trained one if there is one, else random weights of the
    same architecture and encoder id (the decision's cost does not depend on the weights)."""
    label, backend, max_len, data, _cache_dir, _cfg_doc, _seed, policy_dir = job
    if (Path(policy_dir) / "policy.json").exists():
        return {"encoder_id": spec_of(backend, max_len).id, "policy_dir": policy_dir}
    import torch

    from barp_ray.data.shards import read_manifest
    from barp_ray.policy.checkpoint import save_policy
    from barp_ray.policy.model import BarpPolicy
    from barp_ray.training.loop import policy_spec

    spec = spec_of(backend, max_len)
    torch.manual_seed(0)
    policy = BarpPolicy(policy_spec(cfg, read_manifest(data)["models"], 0.015, spec.id, 384))
    where = Path(policy_dir).parent.parent / "latency_policies" / policy_dirname(label)
    return {"encoder_id": spec.id, "policy_dir": str(save_policy(policy, where)), "random_weights": True}


def reused_job(job: tuple) -> dict:
    """What `train_job` returns, for a policy an earlier run of this script trained and saved."""
    _label, backend, max_len, data, cache_dir, _cfg_doc, _seed, policy_dir = job
    from barp_ray.policy.checkpoint import load_policy

    spec = spec_of(backend, max_len)
    table, info = embedded_table(Path(data), spec, Path(cache_dir))
    policy = load_policy(policy_dir)
    return {
        "encoder_id": spec.id,
        "embedding": info,
        "train_s": None,
        "policy_dir": policy_dir,
        "reused": True,
        "best_epoch": None,
        "val_aiq": aiq_on(policy, table.where_split("val")),
        "test_aiq": aiq_on(policy, table.where_split("test")),
    }


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="runs/demo/data", help="prepared shards (embeddings are added per variant)")
    parser.add_argument("--cache-dir", default=".barp_cache/embeddings")
    parser.add_argument("--out", default="runs/bench/encoder_backends")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds")
    parser.add_argument("--prompts-per-round", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: TrainConfig's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reuse-policies",
        action="store_true",
        help="load the policies an earlier run saved under <out>/policies instead of training them again",
    )
    parser.add_argument(
        "--batch-rounds", type=int, default=None, help="rounds that also time batch-32 encodes (default: every round)"
    )
    parser.add_argument("--default", default="onnx-int8 @128", help="variant the targets are checked for")
    parser.add_argument(
        "--phase",
        choices=["all", "quality", "latency"],
        default="all",
        help="quality: train + "
        "AIQ + decisions only; latency: timings only (policies of an earlier quality run if saved, "
        "else random-weight checkpoints of the same architecture: timings do not depend on weights)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from barp_ray.objective import w_grid
    from barp_ray.serving.engine import EncodingConfig, RoutingEngine
    from barp_ray.training.config import TrainConfig

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(data=args.data) if args.epochs is None else TrainConfig(data=args.data, epochs=args.epochs)
    grid = w_grid(11)
    results: dict = {
        "variants": {},
        "load_before": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "train_config": cfg.model_dump(mode="json"),
        "interleaved": True,
        "threads": 1,
    }

    # ---- embeddings, training, quality (one process per variant, in parallel: deterministic either way) ----
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from barp_ray.policy.checkpoint import load_policy

    jobs = [
        (
            label,
            backend,
            max_len,
            args.data,
            args.cache_dir,
            cfg.model_dump(mode="json"),
            args.seed,
            str(out / "policies" / policy_dirname(label)),
        )
        for label, backend, max_len in VARIANTS
    ]
    if args.phase == "latency":
        trained = [latency_policy(j, cfg) for j in jobs]
    elif args.reuse_policies and all((Path(j[-1]) / "policy.json").exists() for j in jobs):
        trained = [reused_job(j) for j in jobs]  # the same fixed-seed policies, trained by an earlier run
    else:
        with ProcessPoolExecutor(max_workers=len(jobs), mp_context=get_context("spawn")) as pool:
            trained = list(pool.map(train_job, jobs))
    tables, policies, engines = {}, {}, {}
    for (label, backend, max_len), row in zip(VARIANTS, trained, strict=True):
        tables[label], _ = embedded_table(Path(args.data), spec_of(backend, max_len), Path(args.cache_dir))
        policies[label] = load_policy(row["policy_dir"]) if args.phase != "latency" else None
        engines[label] = RoutingEngine(
            row["policy_dir"], options=EncodingConfig(device="cpu", threads=1, decision_cache_bytes=0)
        )
        results["variants"][label] = row
        print(label, row, flush=True)
    ref_label = VARIANTS[0][0]
    ref_test = tables[ref_label].where_split("test")
    ref_dec = decisions(policies[ref_label], ref_test, grid) if args.phase != "latency" else None
    for label, _, _ in VARIANTS if args.phase != "latency" else []:
        test = tables[label].where_split("test")
        row = results["variants"][label]
        row["identical_decisions"] = float((decisions(policies[label], test, grid) == ref_dec).mean())
        row["ref_policy_identical_decisions"] = float((decisions(policies[ref_label], test, grid) == ref_dec).mean())
        ref_emb, emb = ref_test.embeddings, test.embeddings
        row["cosine_to_ref_min"] = float((ref_emb * emb).sum(axis=1).min())

    if args.phase == "quality":
        (out / "results_quality.json").write_text(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))
        return

    # ---- interleaved latency / throughput -------------------------------------------------------------
    from tokenizers import Tokenizer

    from barp_ray.embeddings.encoder import encode, resolve_encoder

    tok = Tokenizer.from_file(str(Path(resolve_encoder("minilm")) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    test_prompts = list(dict.fromkeys(ref_test.prompts))
    lengths = [len(e.ids) for e in tok.encode_batch(test_prompts)]
    long_prompts = [p for p, n in zip(test_prompts, lengths, strict=True) if n >= 256]
    rng = np.random.default_rng(args.seed)
    lat = {
        label: {"routerbench": [], "long": [], "short": [], "batch32": [], "batch32_dedupe": []}
        for label, _, _ in VARIANTS
    }
    labels = [v[0] for v in VARIANTS]
    for engine in engines.values():  # warm up every session / graph
        engine.forward([long_prompts[0], "hi"], [0.5, 0.5])
    for r in range(args.rounds):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for kind, pool in (("routerbench", test_prompts), ("long", long_prompts), ("short", SHORT_PROMPTS)):
            for prompt in rng.choice(pool, size=args.prompts_per_round):
                for label in order:
                    t0 = time.perf_counter()
                    engines[label].forward([str(prompt)], [0.5])
                    lat[label][kind].append(time.perf_counter() - t0)
        batch = [str(p) for p in rng.choice(test_prompts, size=32)]
        for label in order if args.batch_rounds is None or r < args.batch_rounds else []:
            enc = engines[label].encoder
            for dedupe in (False, True):  # raw encoder work (every row runs), then the ONNX in-batch dedupe
                if hasattr(enc, "dedupe_inputs"):
                    enc.dedupe_inputs = dedupe
                elif dedupe:
                    continue
                t0 = time.perf_counter()
                encode(enc, batch, batch_size=32)
                lat[label]["batch32_dedupe" if dedupe else "batch32"].append(32 / (time.perf_counter() - t0))
        print(f"round {r + 1}/{args.rounds}", flush=True)

    # ---- decision cache: hit vs miss on the default variant -------------------------------------------
    default_policy = Path(results["variants"][args.default]["policy_dir"])
    cached = RoutingEngine(str(default_policy), options=EncodingConfig(device="cpu", threads=1))
    hit, miss = [], []
    for i, prompt in enumerate(test_prompts[: args.rounds * 4]):
        text = f"{prompt}\n[{i}]"  # unseen text: a miss, then the same text again: a hit
        t0 = time.perf_counter()
        cached.forward([text], [0.5])
        miss.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cached.forward([text], [0.5])
        hit.append(time.perf_counter() - t0)
    results["decision_cache"] = {
        "variant": args.default,
        "hit_p50_ms": pct(hit, 50),
        "miss_p50_ms": pct(miss, 50),
        "hit_over_miss": pct(hit, 50) / pct(miss, 50),
        "n": len(hit),
    }

    for label in labels:
        row = results["variants"][label]
        for kind in ("routerbench", "long", "short"):
            row[f"{kind}_p50_ms"], row[f"{kind}_p99_ms"] = pct(lat[label][kind], 50), pct(lat[label][kind], 99)
        row["batch32_prompts_per_s"] = float(np.median(lat[label]["batch32"]))
        if lat[label]["batch32_dedupe"]:
            row["batch32_dedupe_prompts_per_s"] = float(np.median(lat[label]["batch32_dedupe"]))
        row["batch32_over_single"] = row["batch32_prompts_per_s"] * row["routerbench_p50_ms"] / 1000.0

    from concurrent.futures import ThreadPoolExecutor

    probes = [
        (
            label,
            kind,
            spec_of(b, n).id if kind == "rss_encoder" else None,
            str(engines[label].location) if kind == "rss_engine" else None,
        )
        for label, b, n in VARIANTS
        for kind in ("rss_encoder", "rss_engine")
    ]
    with ThreadPoolExecutor(max_workers=len(probes)) as pool:  # fresh processes, measured at once
        for (label, kind, _, _), rss in zip(probes, pool.map(lambda p: rss_probe(p[2], p[3]), probes), strict=True):
            results["variants"][label][kind] = rss
    quality = out / "results_quality.json"
    if args.phase == "latency" and quality.exists():  # merge the quality columns of an earlier quality run
        for label, row in json.loads(quality.read_text())["variants"].items():
            results["variants"][label].update(
                {
                    k: v
                    for k, v in row.items()
                    if k not in results["variants"][label] or k in ("val_aiq", "test_aiq", "policy_dir", "train_s")
                }
            )
    ref = results["variants"][ref_label]
    for row in results["variants"].values():
        row["long_speedup_vs_ref"] = ref["long_p50_ms"] / row["long_p50_ms"]
        row["routerbench_speedup_vs_ref"] = ref["routerbench_p50_ms"] / row["routerbench_p50_ms"]
        if "test_aiq" in row and "test_aiq" in ref:
            row["aiq_delta_vs_ref"] = row["test_aiq"] - ref["test_aiq"]
    results["load_after"] = os.getloadavg()
    results["long_prompt_tokens"] = {"n": len(long_prompts), "min": int(min(n for n in lengths if n >= 256))}
    stem = "" if args.phase == "all" else f"_{args.phase}"
    (out / f"results{stem}.json").write_text(json.dumps(results, indent=2))
    (out / f"table{stem}.md").write_text(render(results, args))
    print((out / f"table{stem}.md").read_text())


def render(results: dict, args) -> str:
    head = (
        "| variant | decision p50 / p99 ms, RouterBench test | >=256-token prompt p50 ms (speed-up) | short chat "
        "p50 / p99 ms | batch-32 prompts/s | RSS MiB encoder / engine | val AIQ | test AIQ (delta) | identical "
        "decisions | torch@256 policy on these embeddings |\n|" + " --- |" * 10
    )
    rows, nan = [], float("nan")
    for label, r in results["variants"].items():
        rows.append(
            f"| {label} | {r['routerbench_p50_ms']:.1f} / {r['routerbench_p99_ms']:.1f} | {r['long_p50_ms']:.1f} "
            f"({r['long_speedup_vs_ref']:.2f}x) | {r['short_p50_ms']:.1f} / {r['short_p99_ms']:.1f} | "
            f"{r['batch32_prompts_per_s']:.1f} | {r['rss_encoder'].get('rss_mib', float('nan')):.0f} / "
            f"{r['rss_engine'].get('rss_mib', float('nan')):.0f} | {r.get('val_aiq', nan):.4f} | "
            f"{r.get('test_aiq', nan):.4f} ({r.get('aiq_delta_vs_ref', nan):+.4f}) | "
            f"{100 * r.get('identical_decisions', nan):.1f}% | "
            f"{100 * r.get('ref_policy_identical_decisions', nan):.1f}% |"
        )
    c = results["decision_cache"]
    foot = (
        f"\nDecision cache ({c['variant']}): hit p50 {c['hit_p50_ms']:.2f} ms vs miss p50 "
        f"{c['miss_p50_ms']:.1f} ms "
        f"= {c['hit_over_miss']:.3f}x (n={c['n']}).\nInterleaved in one process, {args.rounds} rounds, 1 thread; "
        f"load average before {results['load_before'][0]:.1f}, after {results['load_after'][0]:.1f} (shared "
        "machine: compare ratios, not absolute times).\n"
    )
    return head + "\n" + "\n".join(rows) + "\n" + foot


if __name__ == "__main__":
    main()
