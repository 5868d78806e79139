"""`barp synth-logs`: registered into the `barp` CLI (see barp_ray.cli)."""

from __future__ import annotations

import argparse

from barp_ray.cli_support import command, print_outputs, simple_fields
from barp_ray.data.synth import SynthConfig


@command(
    "synth-logs",
    "write synthetic logged routing rows (known ground truth) as a prepared directory",
    SynthConfig,
    simple_fields(SynthConfig),
)
def _synth_logs(cfg: SynthConfig, args: argparse.Namespace) -> int:
    from barp_ray.data.synth import synth_logs

    manifest = synth_logs(cfg)
    print(f"rows per split: {manifest['per_split']}")
    print_outputs({"data": cfg.out})
    return 0
