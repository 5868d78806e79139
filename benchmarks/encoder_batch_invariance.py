"""Does a prompt's embedding depend on the other prompts of its batch? Per encoder variant.

    python benchmarks/encoder_batch_invariance.py --data runs/demo/data --n 400

Embeds `--n` prompts of `--data` (a seeded shuffle, tasks mixed) three ways: in batches of `--batch-size`,
one prompt at a time, and in reversed order in batches of half the size. A row "changes" when any
component differs by more than 1e-6 between two ways. A serving replica embeds whatever batch its concurrent
requests form (often one prompt), training embeds batches of 64: a variant whose rows change can give the
same prompt a different embedding, and so possibly a different decision, depending on its batch peers.
`--policy` (a policy trained on one of the variants) also counts the greedy decisions over the 11-point w_c
grid that change between the ways, on that policy's own variant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from serve_common import write_results

from barp_ray.data.shards import read_shards
from barp_ray.embeddings.encoder import BACKENDS, EncoderSpec, encode, load_encoder
from barp_ray.objective import greedy_choice, w_grid


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Share of rows that differ (max |diff| > 1e-6), the largest |diff| and the smallest cosine."""
    diff = np.abs(a - b).max(axis=1)
    return {
        "rows_changed": float((diff > 1e-6).mean()),
        "max_abs_diff": float(diff.max()),
        "min_cosine": float((a * b).sum(axis=1).min()),
    }


def decisions_changed(policy, a: np.ndarray, b: np.ndarray) -> float:
    """Share of (prompt, w_c) greedy decisions over the w grid that differ between embeddings a and b."""
    import torch

    changed = [
        (greedy_choice(policy, torch.as_tensor(a), w) != greedy_choice(policy, torch.as_tensor(b), w)).float().mean()
        for w in w_grid()
    ]
    return float(np.mean(changed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="runs/demo/data")
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--backends", nargs="+", default=["onnx", "onnx-int8"], choices=BACKENDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", default=None, help="a policy folder: count its decisions that change")
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args()
    prompts = list(read_shards(args.data).prompts)
    order = np.random.default_rng(args.seed).permutation(len(prompts))[: args.n]
    prompts = [prompts[i] for i in order]
    policy = None
    if args.policy:
        from barp_ray.policy.checkpoint import load_policy

        policy = load_policy(args.policy)
    rows = []
    for backend in args.backends:
        model = load_encoder(EncoderSpec("minilm", backend, args.max_seq_length).resolved(), device="cpu", threads=1)
        batched = encode(model, prompts, args.batch_size)
        alone = np.concatenate([encode(model, [p], 1) for p in prompts])
        reordered = np.ascontiguousarray(encode(model, prompts[::-1], max(1, args.batch_size // 2))[::-1])
        rows.append(
            {
                "variant": model.barp_spec.id,
                "vs_one_at_a_time": compare(batched, alone),
                "vs_reordered": compare(batched, reordered),
            }
        )
        if policy is not None and policy.spec.encoder == model.barp_spec.id:
            rows[-1]["decisions_changed"] = {
                "vs_one_at_a_time": decisions_changed(policy, batched, alone),
                "vs_reordered": decisions_changed(policy, batched, reordered),
            }
    lines = [
        f"{len(prompts)} prompts of {args.data} (shuffle seed {args.seed}), batches of {args.batch_size} vs one "
        f"prompt at a time vs reversed order in batches of {max(1, args.batch_size // 2)}.\n",
        "| variant | rows changed, vs one at a time | vs reordered | max abs diff | min cosine |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        one, rev = r["vs_one_at_a_time"], r["vs_reordered"]
        lines.append(
            f"| {r['variant']} | {one['rows_changed']:.1%} | {rev['rows_changed']:.1%} | "
            f"{max(one['max_abs_diff'], rev['max_abs_diff']):.2e} | {min(one['min_cosine'], rev['min_cosine']):.4f} |"
        )
    for r in rows:
        if "decisions_changed" in r:
            d = r["decisions_changed"]
            lines.append(
                f"\nPolicy {args.policy} ({r['variant']}): (prompt, w_c) greedy decisions changed "
                f"{d['vs_one_at_a_time']:.2%} vs one at a time, {d['vs_reordered']:.2%} vs reordered."
            )
    text = "\n".join(lines)
    print(text)
    write_results(Path(args.out), "encoder_batch_invariance", {"variants": rows}, text + "\n")


if __name__ == "__main__":
    main()
