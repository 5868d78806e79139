"""``barp prepare``: raw logs -> validated, split, sharded parquet.

Steps: ``load_raw`` -> ``validate`` -> ``assign_validation_split`` -> ``write_shards``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from barp_ray.config import JobConfig, LocalPath, default_data_dir
from barp_ray.data.raw_formats import Prices, load_prices
from barp_ray.data.readers import load_raw
from barp_ray.data.shards import write_shards
from barp_ray.data.splits import assign_validation_split
from barp_ray.data.table import RoutingTable
from barp_ray.data.validation import ValidationReport, validate


class PrepareConfig(JobConfig):
    """Config of ``barp prepare``."""

    data_dir: LocalPath = Field(
        default_factory=default_data_dir,
        description="raw logs: a directory of *_train / *_test files or one file ($BARP_DATA_DIR)",
    )
    out_dir: LocalPath = Field(default=Path("runs/prepared"), description="where the shards and manifest.json go")
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="share of each task's train rows carved into val")
    seed: int = Field(default=0, description="seed of the validation carve (and test carve)")
    num_shards: int = Field(4, ge=1, description="parquet files per split")
    prices_file: LocalPath | None = Field(
        default=None,
        description="YAML/JSON {model: [usd_per_1k_input, usd_per_1k_output]}, for data with token "
        "counts instead of costs",
    )
    test_fraction: float | None = Field(
        None, gt=0.0, lt=1.0, description="share of rows carved into test, only for data without any split"
    )
    allow_pickle: bool = Field(
        default=False, description="read .pkl inputs (unpickling runs code from the file: only for trusted data)"
    )


@dataclass
class PrepareResult:
    """What ``prepare`` wrote and kept."""

    out_dir: Path
    manifest_path: Path
    table: RoutingTable  # the prepared rows (split in train / val / test)
    report: ValidationReport

    @property
    def counts_per_split(self) -> dict[str, int]:
        names, counts = ("train", "val", "test"), {}
        for name in names:
            counts[name] = int((self.table.split == name).sum())
        return counts


def prepare(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    val_fraction: float = 0.15,
    seed: int = 0,
    num_shards: int = 4,
    prices: Prices | None = None,
    test_fraction: float | None = None,
    allow_pickle: bool = False,
) -> PrepareResult:
    """Load raw files, validate, carve val out of train and write parquet shards + manifest to ``out_dir``."""
    raw = load_raw(data_dir, prices=prices, test_fraction=test_fraction, seed=seed, allow_pickle=allow_pickle)
    table, report = validate(raw)
    table = assign_validation_split(table, fraction=val_fraction, seed=seed)
    source = {
        "data_dir": str(Path(data_dir).resolve()),
        "val_fraction": val_fraction,
        "seed": seed,
        "test_fraction": test_fraction,
    }
    manifest_path = write_shards(
        table, out_dir, num_shards=num_shards, extra_manifest={"prepare": source}, validation_report=report
    )
    return PrepareResult(out_dir=Path(out_dir), manifest_path=manifest_path, table=table, report=report)


def prepare_from_config(config: PrepareConfig) -> PrepareResult:
    """``prepare`` driven by a PrepareConfig (what the CLI calls)."""
    prices = load_prices(config.prices_file) if config.prices_file is not None else None
    return prepare(
        config.data_dir,
        config.out_dir,
        val_fraction=config.val_fraction,
        seed=config.seed,
        num_shards=config.num_shards,
        prices=prices,
        test_fraction=config.test_fraction,
        allow_pickle=config.allow_pickle,
    )
