"""Routing data: raw readers, validation, splits, parquet shards (see docs/ARCHITECTURE.md)."""

from barp_ray.data.prepare import PrepareConfig, PrepareResult, prepare, prepare_from_config
from barp_ray.data.raw_formats import load_prices
from barp_ray.data.readers import RawLoad, load_raw, read_file
from barp_ray.data.shards import (
    dataset_to_table,
    read_manifest,
    read_shards,
    read_shards_ray,
    write_shards,
)
from barp_ray.data.splits import LotoFold, assign_validation_split, loto_folds
from barp_ray.data.table import SPLITS, RoutingTable, prompt_hash
from barp_ray.data.validation import DROP_REASONS, ValidationReport, validate

__all__ = [
    "DROP_REASONS",
    "SPLITS",
    "LotoFold",
    "PrepareConfig",
    "PrepareResult",
    "RawLoad",
    "RoutingTable",
    "ValidationReport",
    "assign_validation_split",
    "dataset_to_table",
    "load_prices",
    "load_raw",
    "loto_folds",
    "prepare",
    "prepare_from_config",
    "prompt_hash",
    "read_file",
    "read_manifest",
    "read_shards",
    "read_shards_ray",
    "validate",
    "write_shards",
]
