"""End-to-end LoRA fine-tuning of the encoder under the REINFORCE loss vs the frozen encoder, on VALIDATION.

Both arms use the torch MiniLM at the table's token budget and the same config and seed; `frozen` trains the
head on the frozen encoder's mean-pooled embeddings, `lora` trains LoRA adapters on the encoder's attention
projections together with the head (`encoder_finetune: lora`, `policy/lora.py`). `--max-train` / `--max-val`
take seeded subsets: on CPU only tiny ones are feasible (a 256-prompt x 128-token batch is ~2 TFLOP forward +
backward), `--device cuda` runs the full pools where a GPU is. Writes <out>/lora.md and <out>/runs.json:

    python benchmarks/lora_finetune.py --data runs/demo/data --out runs/lora --pools routerbench --seeds 0 \
        --device cuda --base '{"batch_size": 64}'
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from barp_ray.data.shards import read_shards
from barp_ray.data.table import RoutingTable
from barp_ray.embeddings.encoder import EncoderSpec, encode, load_encoder
from barp_ray.embeddings.token_states import token_id_table
from barp_ray.evaluation.pools import build_pools
from barp_ray.training.bare import train_in_process
from barp_ray.training.config import TrainConfig


def subset(table: RoutingTable, n: int | None, seed: int) -> RoutingTable:
    """A seeded random `n`-row subset (all rows when `n` is None or larger)."""
    if n is None or n >= len(table):
        return table
    return table.take(np.sort(np.random.default_rng(seed).permutation(len(table))[:n]))


def with_torch_encoder(table: RoutingTable, device: str) -> RoutingTable:
    """`table` re-embedded by the torch backend of its encoder (the frozen arm's inputs)."""
    spec = EncoderSpec.parse(table.encoder or "").with_overrides(backend="torch")
    model = load_encoder(spec, device=device)
    return replace(table, embeddings=encode(model, list(table.prompts)), encoder=spec.id)


def one_pool(pool, seeds: list[int], base: dict, args) -> list[dict]:
    rows = []
    train = with_torch_encoder(subset(pool.train, args.max_train, 0), args.device)
    val = with_torch_encoder(subset(pool.val, args.max_val, 1), args.device)
    (train_ids, pad_id), (val_ids, _) = token_id_table(train), token_id_table(val)
    for seed in seeds:
        for arm in ("frozen", "lora"):
            cfg = TrainConfig(**{**base, "seed": seed, "encoder_finetune": "lora" if arm == "lora" else "none"})
            t0 = time.perf_counter()
            if arm == "lora":
                out = train_in_process(cfg, train_ids, val_ids, pad_id=pad_id, device=args.device)
            else:
                out = train_in_process(cfg, train, val, device=args.device)
            row = {"pool": pool.name, "seed": seed, "arm": arm, "train_rows": len(train), "val_rows": len(val)}
            row |= {k: out.best[k] for k in ("val_aiq", "val_reward", "epoch", "passes")}
            row["seconds"] = time.perf_counter() - t0
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def table_markdown(rows: list[dict]) -> str:
    lines = [
        "| pool | train / val rows | seeds | frozen: val AIQ / reward | LoRA: val AIQ / reward |",
        "|" + " --- |" * 5,
    ]
    for pool in dict.fromkeys(r["pool"] for r in rows):
        mine = [r for r in rows if r["pool"] == pool]
        cells = []
        for arm in ("frozen", "lora"):
            rs = [r for r in mine if r["arm"] == arm]
            cells.append(f"{np.mean([r['val_aiq'] for r in rs]):.4f} / {np.mean([r['val_reward'] for r in rs]):.4f}")
        seeds = len({r["seed"] for r in mine})
        lines.append(
            f"| {pool} | {mine[0]['train_rows']} / {mine[0]['val_rows']} | {seeds} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="prepared + embedded RouterBench shards")
    parser.add_argument("--out", type=Path, default=Path("runs/lora"))
    parser.add_argument("--pools", nargs="+", default=["routerbench"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--base", default="{}", help="JSON TrainConfig overrides shared by both arms")
    parser.add_argument("--max-train", type=int, default=None, help="seeded subset of the training prompts")
    parser.add_argument("--max-val", type=int, default=None, help="seeded subset of the validation prompts")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is")
    args = parser.parse_args()
    rows = []
    for pool in build_pools(read_shards(args.data), args.pools):
        rows += one_pool(pool, args.seeds, json.loads(args.base), args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runs.json").write_text(json.dumps(rows, indent=1))
    text = table_markdown(rows)
    (args.out / "lora.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
