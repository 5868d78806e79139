"""Write `metrics.json`, `report.md` and `cost_quality.png` for an evaluation (and a LOTO summary)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from barp_ray.evaluation.evaluate import EvaluationResult, RouterResult
from barp_ray.evaluation.metrics import w_key

HEADLINE_W = (0.0, 0.5, 1.0)


# ---- formatting ----------------------------------------------------------------------------------------
def _usd(c: float | None) -> str:
    return "—" if c is None else f"${c:.6f}"


def _num(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _short(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ordered(result: EvaluationResult) -> list[RouterResult]:
    """Preference-aware routers first, then the rest; each group by AIQ, best first."""
    return sorted(result.routers.values(), key=lambda r: (not r.preference_aware, -r.aiq))


def _headline_ws(result: EvaluationResult) -> list[float]:
    """Grid values nearest to w_c = 0, 0.5, 1 (deduplicated, in order)."""
    out: list[float] = []
    for w in HEADLINE_W:
        g = min(result.w_grid, key=lambda v: abs(v - w))
        if g not in out:
            out.append(g)
    return out


def _dump_json(obj: dict, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")


# ---- markdown sections ---------------------------------------------------------------------------------
def summary_markdown(result: EvaluationResult) -> str:
    """The main table: router | AIQ | score / cost at w_c = 0, 0.5, 1 | lowest cost reaching the largest."""
    ws = _headline_ws(result)
    header = ["router", "AIQ"]
    for w in ws:
        header += [f"score @w_c={w_key(w)}", f"cost @w_c={w_key(w)}"]
    target = f"{_short(result.largest_model)} ({result.largest_score:.4f})"
    header += [f"lowest cost reaching {target}", "ρ(w_c, cost)"]  # noqa: RUF001
    rows = []
    for r in _ordered(result):
        row = [f"`{r.name}`", _num(r.aiq)]
        for w in ws:
            p = r.point_at(w)
            row += [_num(p.score), _usd(p.cost)]
        row += [_usd(r.cost_to_reach_largest), _num(r.spearman_cost_vs_wc, 3)]
        rows.append(row)
    return _md_table(header, rows)


def per_task_markdown(result: EvaluationResult, w_cost: float = 0.5) -> str:
    """Per-task mean score / mean cost of every router at the grid point nearest `w_cost`."""
    header = ["router"] + [f"{t} score / cost" for t in result.tasks]
    rows = []
    for r in _ordered(result):
        p = r.point_at(w_cost)
        cells = []
        for t in result.tasks:
            d = p.per_task.get(t)
            cells.append("—" if d is None else f"{d['score']:.4f} / {_usd(d['cost'])}")
        rows.append([f"`{r.name}`", *cells])
    return _md_table(header, rows)


def choices_markdown(result: EvaluationResult, top: int = 3) -> str:
    """Most chosen models (share of rows) of each preference-aware router at w_c = 0, 0.5, 1."""
    ws = _headline_ws(result)
    header = ["router"] + [f"top models @w_c={w_key(w)}" for w in ws]
    rows = []
    for r in _ordered(result):
        if not r.preference_aware:
            continue
        cells = []
        for w in ws:
            ch = r.point_at(w).choices
            total = max(sum(ch.values()), 1)
            best = sorted(ch.items(), key=lambda kv: -kv[1])[:top]
            cells.append(", ".join(f"{_short(m)} {n / total:.0%}" for m, n in best if n))
        rows.append([f"`{r.name}`", *cells])
    return _md_table(header, rows)


def single_models_markdown(result: EvaluationResult) -> str:
    """Reference points: each single model's mean score, mean cost and AIQ."""
    rows = [
        [f"`{m}`", _num(d["score"]), _usd(d["cost"]), _num(d["aiq"])]
        for m, d in sorted(result.single_models.items(), key=lambda kv: kv[1]["cost"])
    ]
    return _md_table(["model", "mean score", "mean cost", "AIQ"], rows)


# ---- figure ----------------------------------------------------------------------------------------------
def _w_labels(points: Sequence) -> list[tuple[str, float, float]]:
    """One label per run of consecutive grid points at the same (cost, score): "0.3" or "0.0-0.4"."""
    out: list[tuple[str, float, float]] = []
    run: list = []
    for p in [*points, None]:
        if run and (p is None or (p.cost, p.score) != (run[0].cost, run[0].score)):
            first, last = w_key(run[0].w_cost), w_key(run[-1].w_cost)
            out.append((first if len(run) == 1 else f"{first}-{last}", run[0].cost, run[0].score))
            run = []
        if p is not None:
            run.append(p)
    return out


def plot_cost_quality(result: EvaluationResult, path: Path, title: str = "") -> Path:
    """Cost-quality plane (log-scale x): preference-aware routers as lines annotated with w_c, single
    models as labelled squares, other preference-blind routers (random) as diamonds."""
    fig = Figure(figsize=(12, 7), dpi=150)  # Agg canvas, no pyplot / global backend state
    ax = fig.add_subplot()
    floor = 1e-9  # log axis: keep zero-cost points drawable
    for m, d in result.single_models.items():
        xy = (max(d["cost"], floor), d["score"])
        ax.scatter(*xy, marker="s", color="black", s=28, zorder=3)
        ax.annotate(_short(m), xy, fontsize=7, xytext=(4, -9), textcoords="offset points")
    cmap = matplotlib.colormaps["tab10"]
    drawn = [r for r in _ordered(result) if r.kind != "single"]
    for i, r in enumerate(drawn):
        xs = [max(p.cost, floor) for p in r.points]
        ys = [p.score for p in r.points]
        color = cmap(i % 10)
        label = f"{r.name} (AIQ {r.aiq:.3f})"
        if r.preference_aware:
            style = "--" if r.kind == "oracle" else "-"
            ax.plot(xs, ys, style, marker="o", ms=4, color=color, label=label)
            for text, x, y in _w_labels(r.points):
                ax.annotate(
                    text,
                    (max(x, floor), y),
                    fontsize=6,
                    color=color,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        else:
            ax.scatter(xs[0], ys[0], marker="D", s=40, color=color, label=label, zorder=3)
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.05)
    ax.set_xlabel("mean cost per query (USD, log scale)")
    ax.set_ylabel("mean score")
    ax.set_title(title or "cost vs quality")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="labels on markers: w_c")
    fig.tight_layout()
    fig.savefig(path)
    return path


# ---- LOTO -----------------------------------------------------------------------------------------------
def loto_summary(fold_results: dict[str, EvaluationResult]) -> dict:
    """Per-fold AIQ per router and the mean over the folds where the router was evaluated."""
    folds = {task: {name: r.aiq for name, r in res.routers.items()} for task, res in fold_results.items()}
    names: list[str] = []
    for res in fold_results.values():
        names += [n for n in res.routers if n not in names]
    mean, n_folds = {}, {}
    for n in names:
        vals = [f[n] for f in folds.values() if n in f]
        mean[n] = sum(vals) / len(vals)
        n_folds[n] = len(vals)
    reach = {
        task: {name: r.cost_to_reach_largest for name, r in res.routers.items()} for task, res in fold_results.items()
    }
    return {"folds": folds, "mean_aiq": mean, "n_folds": n_folds, "cost_to_reach_largest": reach}


def loto_markdown(fold_results: dict[str, EvaluationResult]) -> str:
    """Table: router | AIQ on each held-out task | mean over folds."""
    s = loto_summary(fold_results)
    tasks = list(fold_results)
    rows = []
    for name in sorted(s["mean_aiq"], key=lambda n: -s["mean_aiq"][n]):
        cells = [_num(s["folds"][t].get(name)) for t in tasks]
        mean = _num(s["mean_aiq"][name])
        if s["n_folds"][name] < len(tasks):
            mean += f" ({s['n_folds'][name]}/{len(tasks)} folds)"
        rows.append([f"`{name}`", *cells, mean])
    intro = (
        "Leave-one-task-out: each column trains without that task and tests on it only; AIQ uses that "
        "task's single-model cost window.\n\n"
    )
    return intro + _md_table(["router"] + [f"held out: {t}" for t in tasks] + ["mean AIQ"], rows)


def write_loto_report(fold_results: dict[str, EvaluationResult], out_dir: str | Path) -> dict[str, Path]:
    """Write `loto_metrics.json` (per-fold AIQ, fold means, every fold's metrics) and `loto_report.md`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = loto_summary(fold_results)
    summary["fold_metrics"] = {t: r.to_json_dict() for t, r in fold_results.items()}
    paths = {"loto_metrics": out / "loto_metrics.json", "loto_report": out / "loto_report.md"}
    _dump_json(summary, paths["loto_metrics"])
    paths["loto_report"].write_text("# Leave-one-task-out summary\n\n" + loto_markdown(fold_results) + "\n")
    return paths


# ---- main report ----------------------------------------------------------------------------------------
def write_report(
    result: EvaluationResult,
    out_dir: str | Path,
    title: str,
    extra_sections: dict[str, str] | None = None,
    loto: dict[str, EvaluationResult] | None = None,
) -> dict[str, Path]:
    """Write `metrics.json`, `report.md` and `cost_quality.png` into `out_dir`; returns name -> path.

    `extra_sections`: heading -> markdown body (e.g. the data validation report), appended in order.
    `loto`: held-out task -> fold result; adds a LOTO section and writes `loto_metrics.json` and
    `loto_report.md` too.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "report": out / "report.md", "figure": out / "cost_quality.png"}
    _dump_json(result.to_json_dict(), paths["metrics"])
    plot_cost_quality(result, paths["figure"], title)

    c_min, c_max = result.cost_range
    md = [
        f"# {title}",
        "",
        f"Test rows: {result.n_rows}; tasks: {', '.join(result.tasks)}; models: {len(result.models)}; "
        f"w_c grid: {', '.join(w_key(w) for w in result.w_grid)}.",
        "",
        "## Routers",
        "",
        summary_markdown(result),
        "",
        f"AIQ: area under the router's non-decreasing upper concave envelope in the (mean cost, mean score) "
        f"plane over the single-model cost window [{_usd(c_min)}, {_usd(c_max)}] (linear cost), divided by "
        f"the window width; 0 left of the router's cheapest point (RouterBench, arXiv 2403.12031). "
        f"Cost columns are mean USD per query. Preference-blind routers have one point for every w_c. "
        f"ρ: Spearman correlation of w_c with cost. Target score: `{result.largest_model}` = "  # noqa: RUF001
        f"{result.largest_score:.4f}.",
        "",
        "## Single models",
        "",
        single_models_markdown(result),
        "",
        "## Per task (w_c = 0.5)",
        "",
        per_task_markdown(result, 0.5),
        "",
        "## Model choices",
        "",
        choices_markdown(result),
        "",
        "## Cost-quality plot",
        "",
        f"![cost vs quality]({paths['figure'].name}) — x axis is log scale.",
        "",
    ]
    for heading, body in (extra_sections or {}).items():
        md += [f"## {heading}", "", body.rstrip(), ""]
    if loto:
        md += ["## Leave-one-task-out", "", loto_markdown(loto), ""]
        paths.update(write_loto_report(loto, out))
    paths["report"].write_text("\n".join(md))
    return paths
