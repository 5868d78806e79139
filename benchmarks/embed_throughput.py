"""Embedding throughput: the Ray Data actor pool vs plain in-process `encode` of the same encoder variant.

    python benchmarks/embed_throughput.py --data runs/demo/data --n 512 --backend onnx-int8 --max-seq-length 128

Both paths use the same threads (`--threads`: the actor reserves that many CPUs, Ray sets OMP_NUM_THREADS
from it); the Ray Data figure includes the actor's start and model load, the plain one does not (it is also
reported with its load). The ONNX export is built (or found) before either is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from barp_ray.data.shards import read_shards
from barp_ray.embeddings.encoder import EncoderSpec, encode, load_encoder
from barp_ray.embeddings.pipeline import embed_prompts_ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="runs/demo/data")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--backend", default="onnx-int8", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    prompts = read_shards(args.data).prompts[: args.n]
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
    t0 = time.perf_counter()
    via_ray = embed_prompts_ray(prompts, spec.id, args.batch_size, num_actors=1, cpus_per_actor=args.threads)
    ray_s = time.perf_counter() - t0
    ray.shutdown()

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
        "max_abs_diff": same,
        "load_avg": os.getloadavg(),
    }
    text = (
        f"Encoder `{spec.id}`, {args.threads} thread(s), {len(prompts)} prompts.\n\n"
        f"| path | prompts/s | seconds |\n| --- | ---: | ---: |\n"
        f"| in-process encode (model already loaded) | {res['plain_per_s']:.1f} | {plain_s:.1f} |\n"
        f"| Ray Data map_batches actor pool (incl. actor start + model load) | {res['ray_data_per_s']:.1f} | "
        f"{ray_s:.1f} |\n\nRay Data / plain: {res['ratio_ray_vs_plain']:.2f}x "
        f"({res['ratio_ray_vs_plain_incl_load']:.2f}x counting the plain path's model load); "
        f"max |difference| between the two embeddings: {same:.2e}."
    )
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"embed_throughput_{spec.backend}_{spec.max_seq_length}"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    (out / f"{stem}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
