"""Choose `max_seq_length` on the VALIDATION split: val AIQ of a policy trained per token budget.

For one backend, each budget's embeddings (cached like `barp embed`), a fixed-seed `train_in_process` run
(default `TrainConfig`), and the best epoch's val AIQ. The test split is never read. Usage:

    python benchmarks/encoder_seq_length.py --data runs/h3/data --backend onnx-int8 --lengths 64 128 256 512
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from encoder_variants import embedded_table, spec_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="runs/demo/data")
    parser.add_argument("--cache-dir", default=".barp_cache/embeddings")
    parser.add_argument("--backend", default="onnx-int8")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--truncation", nargs="+", default=["right"], choices=["right", "left"])
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: TrainConfig's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench/encoder_seq_length")
    args = parser.parse_args()
    from barp_ray.training.bare import train_in_process
    from barp_ray.training.config import TrainConfig

    cfg = TrainConfig(data=args.data, seed=args.seed)
    if args.epochs is not None:
        cfg = cfg.model_copy(update={"epochs": args.epochs})
    rows = []
    for length, side in [(n, t) for t in args.truncation for n in args.lengths]:
        table, info = embedded_table(Path(args.data), spec_of(args.backend, length, side), Path(args.cache_dir))
        outcome = train_in_process(cfg, table.where_split("train"), table.where_split("val"), num_threads=1)
        distinct = info.get("distinct_inputs", info.get("first_run", {}).get("distinct_inputs"))
        rows.append(
            {
                "max_seq_length": length,
                "truncation": side,
                "val_aiq": float(outcome.best["val_aiq"]),
                "distinct_inputs": distinct,
                "encoder_id": info["encoder_id"],
            }
        )
        print(rows[-1], flush=True)
    best = max(rows, key=lambda r: (round(r["val_aiq"], 4), -r["max_seq_length"]))  # ties: the cheaper budget
    # (equal budgets cost the same whichever end is cut)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = (
        "| max_seq_length | truncation | val AIQ | distinct encoder inputs (train+val+test) |\n"
        "| ---: | --- | ---: | ---: |\n"
        + "\n".join(
            f"| {r['max_seq_length']} | {r['truncation']} | {r['val_aiq']:.4f} | {r['distinct_inputs']} |" for r in rows
        )
        + f"\n\nChosen on validation ({args.backend}; ties within 1e-4 go to the shorter budget): "
        f"{best['max_seq_length']}.\n"
    )
    stem = f"{args.backend}_{'_'.join(args.truncation)}"
    (out / f"{stem}.json").write_text(json.dumps({"rows": rows, "chosen": best}, indent=2))
    (out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
