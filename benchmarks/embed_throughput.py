"""Embedding throughput: the Ray Data actor pool vs plain in-process `encode` of the same encoder variant.

    python benchmarks/embed_throughput.py --data runs/demo/data --backend onnx-int8 --max-seq-length 128

Prompts: every prompt of `--data` (or the first `--n`) in a seeded shuffle, so tasks are mixed as in the
main job. Both paths use the same threads (`--threads`: the actor reserves that many CPUs, Ray sets
OMP_NUM_THREADS from it). Two Ray Data figures: end to end (actor start and model load included; the plain
path is also reported with its load) and steady state, the marginal rate of a full run over a one-batch run,
both after the end-to-end run ((n - batch) / (t_full - t_one_batch)): what the actor pool delivers once up.
The ONNX export is built (or found) before anything is timed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from serve_common import write_results

from barp_ray.data.shards import read_shards
from barp_ray.embeddings.encoder import EncoderSpec, encode, load_encoder
from barp_ray.embeddings.pipeline import embed_prompts_ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="runs/demo/data")
    parser.add_argument("--n", type=int, default=None, help="at most this many prompts (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="the shuffle of the prompts")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--backend", default="onnx-int8", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    prompts = list(read_shards(args.data).prompts)
    order = np.random.default_rng(args.seed).permutation(len(prompts))
    prompts = [prompts[i] for i in order][: args.n]
    spec = EncoderSpec("minilm", args.backend, args.max_seq_length).resolved()
    if spec.backend != "torch":
        from barp_ray.embeddings.onnx_export import ensure_onnx_export

        ensure_onnx_export(spec.name)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model = load_encoder(spec, device="cpu", threads=args.threads)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = encode(model, prompts, args.batch_size)
    plain_s = time.perf_counter() - t0
    del model

    import ray

    ray.init(num_cpus=max(2, args.threads), include_dashboard=False)

    def timed(texts: list[str]) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        out = embed_prompts_ray(texts, spec.id, args.batch_size, num_actors=1, cpus_per_actor=args.threads)
        return out, time.perf_counter() - t0

    via_ray, ray_s = timed(prompts)  # end to end, cold: the first pool of this Ray instance
    # steady state from two warm runs (a later pool starts faster than the first, so a cold one-batch run
    # would understate the start cost and overstate the marginal rate)
    _, one_batch_s = timed(prompts[: args.batch_size])
    _, warm_s = timed(prompts)
    ray.shutdown()
    if warm_s <= one_batch_s:
        raise SystemExit(f"{len(prompts)} prompts are too few to separate the pool's start from its rate: raise --n")
    steady_per_s = (len(prompts) - args.batch_size) / (warm_s - one_batch_s)

    same = float(np.abs(plain - via_ray).max())
    res = {
        "encoder": spec.id,
        "threads": args.threads,
        "prompts": len(prompts),
        "plain_encode_s": plain_s,
        "plain_model_load_s": load_s,
        "plain_per_s": len(prompts) / plain_s,
        "ray_data_s": ray_s,
        "ray_data_per_s": len(prompts) / ray_s,
        "ratio_ray_vs_plain": plain_s / ray_s,
        "ratio_ray_vs_plain_incl_load": (plain_s + load_s) / ray_s,
        "ray_data_one_batch_s": one_batch_s,
        "ray_data_steady_per_s": steady_per_s,
        "ratio_ray_steady_vs_plain": steady_per_s * plain_s / len(prompts),
        "max_abs_diff": same,
        "load_avg": os.getloadavg(),
    }
    text = (
        f"Encoder `{spec.id}`, {args.threads} thread(s), {len(prompts)} prompts.\n\n"
        f"| path | prompts/s | seconds |\n| --- | ---: | ---: |\n"
        f"| in-process encode (model already loaded) | {res['plain_per_s']:.1f} | {plain_s:.1f} |\n"
        f"| Ray Data map_batches actor pool (incl. actor start + model load) | {res['ray_data_per_s']:.1f} | "
        f"{ray_s:.1f} |\n| Ray Data, steady state (marginal over a {args.batch_size}-prompt run of "
        f"{one_batch_s:.1f} s) | {steady_per_s:.1f} | |\n\nRay Data / plain: end to end "
        f"{res['ratio_ray_vs_plain']:.2f}x ({res['ratio_ray_vs_plain_incl_load']:.2f}x counting the plain path's "
        f"model load), steady state {res['ratio_ray_steady_vs_plain']:.2f}x; "
        f"max |difference| between the two embeddings: {same:.2e}."
    )
    print(text)
    write_results(Path(args.out), f"embed_throughput_{spec.backend}_{spec.max_seq_length}", res, text + "\n")


if __name__ == "__main__":
    main()
