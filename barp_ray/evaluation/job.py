"""`barp evaluate`: the trained policy against every baseline on the test split (and LOTO folds)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from barp_ray.config import JobConfig, LocalPath
from barp_ray.data.shards import read_manifest, read_shards
from barp_ray.data.table import RoutingTable
from barp_ray.evaluation.barp_router import BarpRouter
from barp_ray.evaluation.evaluate import DEFAULT_BASELINES, EvaluationResult, build_baselines, evaluate_routers
from barp_ray.evaluation.metrics import DEFAULT_W_GRID
from barp_ray.evaluation.report import write_report
from barp_ray.policy.checkpoint import load_policy
from barp_ray.policy.model import BarpPolicy


class EvaluateConfig(JobConfig):
    """Config of `barp evaluate`."""

    data: LocalPath = Field(default=Path("runs/demo/data"), description="prepared + embedded shards")
    policy: LocalPath = Field(default=Path("runs/demo/policy"), description="BaRP policy checkpoint folder")
    out_dir: LocalPath = Field(default=Path("runs/demo/eval"), description="report folder (metrics.json, report.md)")
    w_grid: list[float] = Field(default_factory=lambda: list(DEFAULT_W_GRID), description="w_c values evaluated")
    seed: int = Field(default=0, description="seed of the fitted baselines")
    title: str = Field(default="BaRP evaluation (test split)", description="report title")


def evaluate_policy(
    policy: str | Path | BarpPolicy,
    train: RoutingTable,
    test: RoutingTable,
    w_grid=DEFAULT_W_GRID,
    seed: int = 0,
    extra: dict | None = None,
    baselines: Sequence[str] = DEFAULT_BASELINES,
) -> EvaluationResult:
    """BaRP + all baselines (fitted on `train` with the policy's tau) routed over `test`; `policy` is a
    checkpoint folder or a loaded policy."""
    if not isinstance(policy, BarpPolicy):
        policy = load_policy(policy)
    routers = {"barp": BarpRouter(policy)}
    routers.update(build_baselines(train, policy.spec.cost_scale, seed=seed, include=baselines))
    routers["barp"].fit(train, policy.spec.cost_scale)
    return evaluate_routers(routers, test, w_grid, extra=extra)


def run_evaluate(cfg: EvaluateConfig, extra_sections: dict[str, str] | None = None) -> dict[str, Path]:
    """Evaluate on the test split; baselines learn from train + val (everything but test)."""
    table = read_shards(cfg.data)
    train = table.take(table.split != "test")
    test = table.where_split("test")
    manifest = read_manifest(cfg.data)
    result = evaluate_policy(
        cfg.policy, train, test, cfg.w_grid, cfg.seed, extra={"policy": str(cfg.policy), "data": str(cfg.data)}
    )
    sections = dict(extra_sections or {})
    if "validation" in manifest and "Data validation" not in sections:
        sections["Data validation"] = _validation_markdown(manifest["validation"])
    return write_report(result, cfg.out_dir, cfg.title, extra_sections=sections)


def _validation_markdown(report: dict) -> str:
    from barp_ray.data.validation import ValidationReport

    return ValidationReport.model_validate(report).to_markdown()
