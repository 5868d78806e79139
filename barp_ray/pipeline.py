"""`barp demo`: the whole pipeline, raw logs -> prepared shards -> embeddings -> Ray Train -> report."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pydantic import Field

from barp_ray.config import JobConfig, LocalPath, default_data_dir
from barp_ray.data.prepare import PrepareConfig, prepare_from_config
from barp_ray.data.shards import read_manifest, read_shards
from barp_ray.embeddings.job import EmbedConfig, run_embed
from barp_ray.evaluation.barp_router import BarpRouter
from barp_ray.evaluation.evaluate import DEFAULT_BASELINES, EvaluationResult, build_baselines, evaluate_routers
from barp_ray.evaluation.job import EvaluateConfig, _validation_markdown, evaluate_policy
from barp_ray.evaluation.report import write_report
from barp_ray.training.config import TrainConfig
from barp_ray.training.trainer import train_policy

log = logging.getLogger(__name__)


class DemoConfig(JobConfig):
    """Config of `barp demo` (every stage's settings in one object)."""

    data_dir: LocalPath = Field(
        default_factory=default_data_dir, description="raw RouterBench-format logs ($BARP_DATA_DIR)"
    )
    out_dir: LocalPath = Field(default=Path("runs/demo"), description="every output of the run goes here")
    encoder: str = Field(default_factory=lambda: EmbedConfig().encoder, description="sentence encoder (name or path)")
    cache_dir: LocalPath = Field(
        default_factory=lambda: EmbedConfig().cache_dir,
        description="embedding cache (content hash -> vector); a warm cache embeds nothing",
    )
    val_fraction: float = Field(default=0.15, ge=0, lt=1, description="share of each task's train rows carved into val")
    seed: int = Field(default=0, description="seed of the split and of the main (Ray Train) policy")
    loto: bool = Field(default=True, description="also run the leave-one-task-out folds")
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        description="seeds of the extra in-distribution runs (test AIQ reported as mean and 95% interval); "
        "run concurrently as Ray tasks, no Ray Train start each",
    )
    loto_seeds: list[int] = Field(default_factory=lambda: [0], description="seeds of each leave-one-task-out fold")
    cpus_per_run: float = Field(default=1.0, gt=0, description="CPUs each seed / fold run holds (runs overlap)")
    seed_baselines: bool = Field(
        default=False,
        description="also fit the learned baselines once per seed (each seed evaluated as a Ray task), "
        "so every router's test AIQ gets a mean and 95% interval (off by default: on 2 cores it multiplies "
        "the evaluate stage by the number of seeds; BaRP's own interval is always computed)",
    )
    learning_curve: bool = Field(
        default=False,
        description="also compute the learning curve (test AIQ vs logged interactions, several "
        "learners x budgets x seeds; minutes of CPU) into eval/learning_curve.png",
    )
    max_rows_per_task: int | None = Field(default=None, ge=1, description="subsample (smoke tests, CI)")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the training settings of every run")


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Deprecated alias of `barp_ray.ray_connect.connect` (kept for old scripts)."""
    from barp_ray.ray_connect import connect

    connect(address, num_cpus=num_cpus)


def _subsample(data_dir: Path, max_rows: int | None) -> None:
    """Keep at most `max_rows` rows per task and split in the prepared shards (deterministic)."""
    if max_rows is None:
        return
    from barp_ray.data.shards import write_shards

    manifest = read_manifest(data_dir)
    table = read_shards(data_dir)
    keep = []
    for task in table.task_names:
        for split in ("train", "val", "test"):
            idx = [i for i in range(len(table)) if table.tasks[i] == task and table.split[i] == split]
            keep.extend(idx[:max_rows] if split != "val" else idx[: max(8, max_rows // 4)])
    keep_manifest = {k: v for k, v in manifest.items() if k in ("prepare", "validation")}
    write_shards(table.take(sorted(keep)), data_dir, num_shards=len(manifest["files"]), extra_manifest=keep_manifest)


def run_demo(cfg: DemoConfig) -> dict[str, Path]:
    """Run every stage; returns the output paths (also printed by the CLI) and prints a summary table."""
    from barp_ray.training.runs import grid, train_runs

    out = cfg.out_dir
    data = out / "data"
    timings: dict[str, float] = {}

    def stage(name: str, index: int, total: int = 5) -> float:
        print(f"\n== [{index}/{total}] {name} ==", flush=True)
        return time.perf_counter()

    t = stage("prepare", 1)
    prepared = prepare_from_config(
        PrepareConfig(data_dir=cfg.data_dir, out_dir=data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    )
    _subsample(data, cfg.max_rows_per_task)
    print(prepared.report, flush=True)
    timings["prepare_s"] = time.perf_counter() - t

    t = stage("embed", 2)
    stats = run_embed(EmbedConfig(data=data, encoder=cfg.encoder, cache_dir=cfg.cache_dir))
    print(f"embeddings: {stats}", flush=True)
    timings["embed_s"] = time.perf_counter() - t

    t = stage("train (Ray Train)", 3)
    storage = cfg.train.storage_path if cfg.train.storage_path != TrainConfig().storage_path else str(out / "ray")
    train_cfg = cfg.train.model_copy(update={"data": str(data), "storage_path": storage, "seed": cfg.seed})
    outcome = train_policy(train_cfg, export_dir=out / "policy")
    timings["train_s"] = time.perf_counter() - t

    table = read_shards(data)
    train, test = table.take(table.split != "test"), table.where_split("test")
    # the main run above is seed `cfg.seed` already (same learner and config): not trained twice
    extra_seeds = [s for s in cfg.seeds if s != cfg.seed]
    specs = grid(extra_seeds) + (grid(cfg.loto_seeds, table.task_names) if cfg.loto else [])
    t = stage(
        f"{len(specs)} more runs: seeds {extra_seeds}"
        + (" + leave-one-task-out" if cfg.loto else "")
        + " (concurrent Ray tasks)",
        4,
    )
    runs = train_runs(train_cfg, specs, table=table, export_root=out / "runs", cpus_per_run=cfg.cpus_per_run)
    if cfg.seed in cfg.seeds:
        from barp_ray.policy.checkpoint import load_policy
        from barp_ray.training.runs import RunResult, RunSpec

        main_run = RunResult(
            spec=RunSpec(seed=cfg.seed),
            best=outcome.best_metrics,
            history=outcome.history,
            tau=outcome.tau,
            seconds=outcome.seconds,
            policy_dir=out / "policy",
            policy=load_policy(out / "policy"),
        )
        runs = [main_run, *runs]
    timings["runs_s"] = time.perf_counter() - t

    t = stage("evaluate", 5)
    seed_runs = [r for r in runs if r.spec.held_out_task is None]
    loto_runs = [r for r in runs if r.spec.held_out_task is not None and r.spec.seed == cfg.loto_seeds[0]]
    result, loto_results, per_seed = evaluate_all(out / "policy", seed_runs, loto_runs, train, test, cfg)
    seed_aiq = {r.spec.seed: res["routers"]["barp"]["aiq"] for r, res in zip(seed_runs, per_seed, strict=True)}
    timings["evaluate_s"] = time.perf_counter() - t

    if cfg.learning_curve:
        from barp_ray.evaluation.learning_curve import learning_curve, plot_learning_curve

        curve = learning_curve(
            table.where_split("train"),
            table.where_split("val"),
            test,
            train_cfg,
            seeds=cfg.seeds,
            progress=lambda line: print(line, flush=True),
        )
        (out / "eval").mkdir(parents=True, exist_ok=True)
        (out / "eval" / "learning_curve.json").write_text(json.dumps(curve, indent=2))
        plot_learning_curve(curve, out / "eval" / "learning_curve.png")
        timings["learning_curve_s"] = time.perf_counter() - t - timings["evaluate_s"]

    from barp_ray.evaluation.intervals import aggregate_results

    manifest = read_manifest(data)
    seeds_summary = mean_interval(list(seed_aiq.values()))
    per_router = aggregate_results(per_seed) if per_seed else {}
    sections = {
        "Data validation": _validation_markdown(manifest["validation"]),
        "Training": _training_markdown(train_cfg, outcome, stats, timings),
        "Seeds": _seeds_markdown(seed_aiq, seeds_summary),
    }
    paths = write_report(result, out / "eval", "BaRP on RouterBench (test split)", sections, loto=loto_results or None)
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    (out / "eval" / "seeds.json").write_text(
        json.dumps({"test_aiq": seed_aiq, **seeds_summary, "routers": per_router}, indent=2)
    )
    train_cfg.to_yaml(out / "train_config.yaml")
    print(summary_table(result, per_router, seeds_summary, loto_results, timings), flush=True)
    return {
        "shards": data,
        "policy": out / "policy",
        "train_config": out / "train_config.yaml",
        "ray_results": Path(storage) / train_cfg.name,
        "runs": out / "runs",
        **paths,
        "seeds": out / "eval" / "seeds.json",
        "timings": out / "timings.json",
    }


def _evaluate_seed(policy, train, test, seed: int, with_baselines: bool) -> dict:
    """metrics.json dict of one seed: its BaRP policy (+ the learned baselines fitted with this seed)."""
    router = BarpRouter(policy)
    router.fit(train, policy.spec.cost_scale)
    routers = {"barp": router}
    if with_baselines:
        routers.update(
            build_baselines(
                train,
                policy.spec.cost_scale,
                seed=seed,
                include=("offline_mlp", "knn", "linucb", "lin_ts", "eps_greedy"),
            )
        )
    return evaluate_routers(routers, test).to_json_dict()


#: The baselines whose fitting dominates the evaluate stage (simulated bandit loops, ~30-40 s each on RouterBench):
#: the main evaluation fits each in its own Ray task.
SLOW_BASELINES = ("eps_greedy", "linucb", "lin_ts")


def _evaluate_baseline(name: str, train, test, scale, seed: int) -> EvaluationResult:
    """One baseline fitted on `train` and routed over `test` (its `EvaluationResult` holds only it)."""
    return evaluate_routers(build_baselines(train, scale, seed=seed, include=(name,)), test)


#: What a leave-one-task-out fold is compared with (its targets: the offline MLP and the fold's best single
#: model); the same-information bandits are compared in distribution only, which keeps the stage short.
LOTO_BASELINES = ("single", "random", "oracle", "offline_mlp", "knn")


def evaluate_all(policy_dir: Path, seed_runs, loto_runs, train, test, cfg: DemoConfig):
    """Every evaluation of the demo as concurrent Ray tasks (the tables put in the object store once): the
    main policy against every baseline, each leave-one-task-out fold against its fold's baselines, and each
    seed's policy (+ its own learned baselines when `cfg.seed_baselines`). Returns (main result, task ->
    fold result, per-seed metrics dicts in `seed_runs` order)."""
    import ray

    from barp_ray.policy.checkpoint import load_policy

    evaluate = ray.remote(num_cpus=cfg.cpus_per_run)(evaluate_policy)
    per_seed = ray.remote(num_cpus=cfg.cpus_per_run)(_evaluate_seed)
    one_baseline = ray.remote(num_cpus=cfg.cpus_per_run)(_evaluate_baseline)
    train_ref, test_ref = ray.put(train), ray.put(test)
    policy = load_policy(policy_dir)
    # the slowest baselines first, each its own task, so that they overlap one another and everything else
    slow_refs = [
        one_baseline.remote(name, train_ref, test_ref, policy.spec.cost_scale, cfg.seed) for name in SLOW_BASELINES
    ]
    fast = tuple(b for b in DEFAULT_BASELINES if b not in SLOW_BASELINES)
    main_ref = evaluate.remote(policy, train_ref, test_ref, seed=cfg.seed, baselines=fast)
    fold_refs = {
        r.spec.held_out_task: evaluate.remote(
            r.policy,
            train.where_tasks([r.spec.held_out_task], keep=False),
            test.where_tasks([r.spec.held_out_task]),
            seed=cfg.seed,
            baselines=LOTO_BASELINES,
        )
        for r in loto_runs
    }
    seed_refs = [per_seed.remote(r.policy, train_ref, test_ref, r.spec.seed, cfg.seed_baselines) for r in seed_runs]
    folds = dict(zip(fold_refs, ray.get(list(fold_refs.values())), strict=True))
    result = ray.get(main_ref)
    slow = dict(zip(SLOW_BASELINES, ray.get(slow_refs), strict=True))
    for name in DEFAULT_BASELINES:  # the report lists routers in DEFAULT_BASELINES order
        if name in slow:
            result.routers.update(slow[name].routers)
    return result, folds, ray.get(seed_refs)


def mean_interval(values: list[float], level: float = 0.95) -> dict[str, float]:
    """Mean and Student-t `level` interval (`evaluation.intervals.mean_interval`) as a plain dict."""
    from barp_ray.evaluation.intervals import mean_interval as interval

    i = interval(values, level)
    return {"n": i.n, "mean": i.mean, "low": i.lo, "high": i.hi}


def _seeds_markdown(seed_aiq: dict[int, float], summary: dict[str, float]) -> str:
    rows = ["| seed | test AIQ |", "| ---: | ---: |"] + [f"| {s} | {a:.4f} |" for s, a in sorted(seed_aiq.items())]
    rows.append(
        f"\nMean over {summary['n']} seeds: {summary['mean']:.4f} "
        f"(95% interval {summary['low']:.4f} - {summary['high']:.4f})."
    )
    return "\n".join(rows)


def summary_table(result, per_router: dict, seeds: dict, loto: dict, timings: dict[str, float]) -> str:
    """The table printed at the end of the main job: test AIQ per router (seed 0 of Ray Train, and the mean
    with its 95% interval over the seeds where a router was run per seed), each LOTO fold, stage times."""
    lines = ["", "== summary ==", f"{'router':36s} {'test AIQ':>9s}  {'over seeds: mean [95% interval]':>34s}"]
    ranked = sorted(result.routers.items(), key=lambda kv: -kv[1].aiq)
    for name, r in ranked[:10]:
        over = per_router.get(name, {}).get("aiq")
        tail = f"{over['mean']:.4f} [{over['lo']:.4f}, {over['hi']:.4f}] n={over['n']}" if over else ""
        lines.append(f"{name[:36]:36s} {r.aiq:9.4f}  {tail:>34s}")
    if seeds.get("n"):
        lines.append(
            f"{'BaRP over ' + str(seeds['n']) + ' seeds':36s} {seeds['mean']:9.4f}  "
            f"[{seeds['low']:.4f}, {seeds['high']:.4f}]"
        )
    for task, fold in sorted(loto.items()):
        lines.append(f"{'leave-one-task-out ' + task + ' (BaRP)':36s} {fold.routers['barp'].aiq:9.4f}")
    total = sum(timings.values())
    stages = ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in timings.items())
    lines.append(f"stage times: {stages}; total {total:.0f}s")
    return "\n".join(lines)


def _training_markdown(cfg: TrainConfig, outcome, stats, timings: dict[str, float]) -> str:
    best = outcome.best_metrics
    rows = [
        f"- Ray Train: {cfg.num_workers} worker(s), use_gpu={cfg.use_gpu}; {cfg.epochs} epochs x "
        f"{cfg.steps_per_epoch} steps x batch {cfg.batch_size}.",
        f"- cost scale: {outcome.scale.describe()} (tau {'given' if cfg.tau else cfg.tau_rule}); best epoch: "
        f"{best.get('epoch')} (val AIQ {best.get('val_aiq', float('nan')):.4f}, "
        f"val mean reward {best.get('val_reward', float('nan')):.4f}).",
        f"- Embeddings: {stats}.",
        "- Stage wall times: " + ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in timings.items()) + ".",
    ]
    return "\n".join(rows)


__all__ = ["DemoConfig", "EvaluateConfig", "ensure_ray", "mean_interval", "run_demo", "summary_table"]
