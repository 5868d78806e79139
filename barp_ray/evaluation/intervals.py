"""Mean and 95% interval over training seeds, for any metric of any router.

The interval is Student's t on the seed means: ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` (n seeds; one seed
gives a zero-width interval, reported as such). `aggregate_results` folds several `metrics.json` dicts (one
per seed, same test split) into per-router AIQ and per-w score / cost summaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """Mean of `n` values and its two-sided `level` t-interval [lo, hi]."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2.0

    def to_dict(self) -> dict:
        return asdict(self)

    def fmt(self, digits: int = 4) -> str:
        """``0.8512 ± 0.0031`` (the half-width of the interval)."""
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}" if self.n > 1 else f"{self.mean:.{digits}f}"


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and t-interval of `values` (finite values only)."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    m = float(x.mean())
    if len(x) == 1:
        return Interval(m, m, m, 1)
    half = float(stats.t.ppf(0.5 + level / 2.0, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return Interval(m, m - half, m + half, len(x))


def aggregate_results(results: Sequence[dict], level: float = 0.95) -> dict:
    """Per router over seeds: ``aiq`` interval, per-w ``score`` / ``cost`` intervals, and the seeds' AIQs.

    `results`: `metrics.json` dicts (``EvaluationResult.to_json_dict()``), one per seed, same test rows.
    A router missing from some seeds is summarised over the seeds that have it.
    """
    names = sorted({n for r in results for n in r["routers"]})
    out: dict[str, dict] = {}
    for name in names:
        runs = [r["routers"][name] for r in results if name in r["routers"]]
        keys = list(runs[0]["points"])
        out[name] = {
            "kind": runs[0].get("kind", ""),
            "aiq": mean_interval([r["aiq"] for r in runs], level).to_dict(),
            "aiq_per_seed": [r["aiq"] for r in runs],
            "points": {
                k: {
                    m: mean_interval([r["points"][k][m] for r in runs if k in r["points"]], level).to_dict()
                    for m in ("score", "cost")
                }
                for k in keys
            },
        }
    return out
