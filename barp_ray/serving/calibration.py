"""Budget calibration: from a dollar (or largest-model share) target to the preference w_c.

On validation prompts (recorded scores and costs of every model), greedy routing is evaluated at a grid
of w_c; each row of the table gives the mean cost per query, the mean score and the share of queries sent
to the largest model. A budget picks, among the rows that meet it, the one with the best mean score
(ties: the cheaper). If no row meets it, the cheapest row is chosen and `met` is False.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from barp_ray.serving.config_sections import Budget


@dataclass
class CalibrationRow:
    w_cost: float
    mean_cost: float
    mean_score: float
    largest_share: float


@dataclass
class Calibration:
    models: list[str]
    largest_model: str
    rows: list[CalibrationRow]
    model_mean_cost: dict[str, float]
    model_mean_score: dict[str, float]
    num_prompts: int
    split: str
    policy_version: str | None = None
    source: str | None = None
    extra: dict = field(default_factory=dict)

    def choose(self, budget: Budget) -> tuple[CalibrationRow, bool]:
        """(row, met): the best-scoring row within the budget, else the cheapest one."""
        if budget.max_cost_per_query is not None:
            ok = [r for r in self.rows if r.mean_cost <= budget.max_cost_per_query + 1e-15]
            fallback = min(self.rows, key=lambda r: (r.mean_cost, -r.mean_score))
        else:
            ok = [r for r in self.rows if r.largest_share <= budget.max_largest_share + 1e-12]
            fallback = min(self.rows, key=lambda r: (r.largest_share, r.mean_cost, -r.mean_score))
        if not ok:
            return fallback, False
        return max(ok, key=lambda r: (r.mean_score, -r.mean_cost, -r.w_cost)), True

    def w_cost_for(self, budget: Budget) -> float:
        return self.choose(budget)[0].w_cost

    # ---- I/O ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["format"] = "barp calibration v1"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        d = {k: v for k, v in d.items() if k != "format"}
        d["rows"] = [CalibrationRow(**r) for r in d["rows"]]
        return cls(**d)

    def save(self, path: str | Path) -> str | Path:
        """Write the JSON atomically to a local path or an s3:// / gs:// URI (barp_ray.storage)."""
        from barp_ray import storage

        storage.write_bytes_atomic(path, json.dumps(self.to_dict(), indent=2).encode())
        return path if storage.is_uri(path) else Path(storage.absolute(path))

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """A calibration JSON from a local path or an s3:// / gs:// URI."""
        from barp_ray import storage

        return cls.from_dict(json.loads(storage.read_bytes(path)))

    def markdown(self, chosen: CalibrationRow | None = None, every: int = 1) -> str:
        lines = [
            f"| w_c | mean cost / query (USD) | mean score | share to {self.largest_model} |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for i, r in enumerate(self.rows):
            if i % every and r is not chosen and i != len(self.rows) - 1:
                continue
            mark = " **<- chosen**" if r is chosen else ""
            lines.append(f"| {r.w_cost:.3f} | {r.mean_cost:.6f} | {r.mean_score:.4f} | {r.largest_share:.3f}{mark} |")
        return "\n".join(lines)


def calibrate(
    policy,
    embeddings: np.ndarray,
    scores: np.ndarray,
    costs: np.ndarray,
    models: list[str],
    grid_points: int = 101,
    largest: str | None = None,
) -> Calibration:
    """The cost-quality table of greedy routing with `policy` (a BarpPolicy) over a w_c grid."""
    from barp_ray.objective import greedy_curve, largest_model, w_grid

    if list(models) != list(policy.spec.models):
        raise ValueError(f"data models {models} differ from the policy's {policy.spec.models}")
    if len(embeddings) == 0:
        raise ValueError("no validation prompts to calibrate on")
    scores = np.asarray(scores, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    largest = largest or largest_model(models, costs)
    curve = greedy_curve(
        policy,
        np.asarray(embeddings),
        scores,
        costs,
        w_grid(grid_points),
        policy.spec.cost_scale,
        largest_index=list(models).index(largest),
    )
    rows = [
        CalibrationRow(w_cost=round(float(wc), 6), mean_cost=float(c), mean_score=float(s), largest_share=float(b))
        for wc, c, s, b in zip(curve.w_cost, curve.cost, curve.score, curve.largest_share, strict=True)
    ]
    return Calibration(
        models=list(models),
        largest_model=largest,
        rows=rows,
        model_mean_cost={m: float(c) for m, c in zip(models, costs.mean(axis=0), strict=True)},
        model_mean_score={m: float(s) for m, s in zip(models, scores.mean(axis=0), strict=True)},
        num_prompts=len(scores),
        split="",
    )


def calibrate_from_shards(
    policy_location: str,
    data: str,
    split: str = "val",
    grid_points: int = 101,
    policy=None,
) -> Calibration:
    """Calibrate a checkpoint on a prepared + embedded shard folder (`barp prepare` + `barp embed`)."""
    from barp_ray.data.shards import read_shards
    from barp_ray.policy.checkpoint import load_policy
    from barp_ray.serving.engine import policy_version

    policy = policy if policy is not None else load_policy(policy_location)
    table = read_shards(data)
    if table.embeddings is None:
        raise ValueError(f"{data}: shards have no embeddings; run `barp embed --data {data}` first")
    if table.split is not None and split != "all":
        if not (table.split == split).any():
            raise ValueError(f"{data}: no rows in split {split!r}; use --split val|test|train|all")
        table = table.where_split(split)
    cal = calibrate(policy, table.embeddings, table.scores, table.costs, table.models, grid_points)
    cal.split = split
    cal.source = str(data)
    cal.policy_version = policy_version(policy_location)
    return cal


def load_calibration(location: str, policy_location: str, grid_points: int = 101, policy=None) -> Calibration:
    """A calibration JSON file, or a shard folder calibrated now (its `val` split, else all rows); local paths
    and s3:// / gs:// URIs alike (barp_ray.storage)."""
    import pyarrow.fs as pafs

    from barp_ray import storage

    fs, path = storage.resolve(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        try:
            return calibrate_from_shards(policy_location, location, "val", grid_points, policy)
        except ValueError as exc:
            if "no rows in split" not in str(exc):
                raise
            return calibrate_from_shards(policy_location, location, "all", grid_points, policy)
    return Calibration.load(location)
