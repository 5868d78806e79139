"""`barp demo`: the whole pipeline, raw logs -> prepared shards -> embeddings -> Ray Train -> report."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from pydantic import Field
from tqdm.auto import tqdm

from barp_ray.config import JobConfig, default_data_dir
from barp_ray.data.prepare import PrepareConfig, prepare_from_config
from barp_ray.data.shards import read_manifest, read_shards
from barp_ray.embeddings.job import EmbedConfig, run_embed
from barp_ray.evaluation.job import EvaluateConfig, _validation_markdown, evaluate_policy
from barp_ray.evaluation.report import write_report
from barp_ray.training.config import TrainConfig
from barp_ray.training.trainer import train_policy

log = logging.getLogger(__name__)


class DemoConfig(JobConfig):
    """Config of `barp demo` (every stage's settings in one object)."""

    data_dir: Path = Field(default_factory=default_data_dir, description="raw RouterBench-format logs")
    out_dir: Path = Path("runs/demo")
    encoder: str = EmbedConfig().encoder
    cache_dir: Path = EmbedConfig().cache_dir
    val_fraction: float = 0.15
    seed: int = 0
    loto: bool = Field(default=True, description="also run the leave-one-task-out folds")
    max_rows_per_task: int | None = Field(default=None, description="subsample (smoke tests, CI)")
    train: TrainConfig = Field(default_factory=TrainConfig)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` / $RAY_ADDRESS (e.g. under `ray job submit`), else start a local instance."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus or max(2, os.cpu_count() or 2), include_dashboard=False)


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
    """Run every stage; returns the output paths (also printed by the CLI)."""
    out = cfg.out_dir
    data = out / "data"
    timings: dict[str, float] = {}
    stages = tqdm(total=5 if cfg.loto else 4, desc="barp demo", unit="stage")

    def stage(name: str):
        stages.set_postfix_str(name)
        return time.perf_counter()

    t = stage("prepare")
    prepared = prepare_from_config(
        PrepareConfig(data_dir=cfg.data_dir, out_dir=data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    )
    _subsample(data, cfg.max_rows_per_task)
    print(prepared.report, flush=True)
    timings["prepare_s"] = time.perf_counter() - t
    stages.update()

    t = stage("embed")
    stats = run_embed(EmbedConfig(data=data, encoder=cfg.encoder, cache_dir=cfg.cache_dir))
    print(f"embeddings: {stats}", flush=True)
    timings["embed_s"] = time.perf_counter() - t
    stages.update()

    t = stage("train")
    storage = cfg.train.storage_path if cfg.train.storage_path != TrainConfig().storage_path else str(out / "ray")
    train_cfg = cfg.train.model_copy(update={"data": str(data), "storage_path": storage, "seed": cfg.seed})
    outcome = train_policy(train_cfg, export_dir=out / "policy")
    timings["train_s"] = time.perf_counter() - t
    stages.update()

    t = stage("evaluate")
    table = read_shards(data)
    train, test = table.take(table.split != "test"), table.where_split("test")
    result = evaluate_policy(out / "policy", train, test, seed=cfg.seed)
    timings["evaluate_s"] = time.perf_counter() - t
    stages.update()

    loto_results = {}
    if cfg.loto:
        t = stage("leave-one-task-out")
        for task in tqdm(table.task_names, desc="LOTO folds", unit="fold", leave=False):
            fold_cfg = train_cfg.model_copy(update={"exclude_tasks": [task], "name": f"{train_cfg.name}-loto-{task}"})
            fold_dir = out / "loto" / task
            train_policy(fold_cfg, export_dir=fold_dir / "policy")
            fold_train = train.where_tasks([task], keep=False)
            fold_test = test.where_tasks([task])
            loto_results[task] = evaluate_policy(fold_dir / "policy", fold_train, fold_test, seed=cfg.seed)
        timings["loto_s"] = time.perf_counter() - t
        stages.update()
    stages.close()

    manifest = read_manifest(data)
    sections = {
        "Data validation": _validation_markdown(manifest["validation"]),
        "Training": _training_markdown(train_cfg, outcome, stats, timings),
    }
    paths = write_report(result, out / "eval", "BaRP on RouterBench (test split)", sections, loto=loto_results or None)
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    train_cfg.to_yaml(out / "train_config.yaml")
    return {
        "shards": data,
        "policy": out / "policy",
        "train_config": out / "train_config.yaml",
        "ray_results": Path(storage) / train_cfg.name,
        **paths,
        "timings": out / "timings.json",
    }


def _training_markdown(cfg: TrainConfig, outcome, stats, timings: dict[str, float]) -> str:
    best = outcome.best_metrics
    rows = [
        f"- Ray Train: {cfg.num_workers} worker(s), use_gpu={cfg.use_gpu}; {cfg.epochs} epochs x "
        f"{cfg.steps_per_epoch} steps x batch {cfg.batch_size}.",
        f"- tau = ${outcome.tau:.6f} ({'given' if cfg.tau else cfg.tau_rule}); best epoch by val AIQ: "
        f"{best.get('epoch')} (val AIQ {best.get('val_aiq', float('nan')):.4f}, "
        f"val mean reward {best.get('val_reward', float('nan')):.4f}).",
        f"- Embeddings: {stats}.",
        "- Stage wall times: " + ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in timings.items()) + ".",
    ]
    return "\n".join(rows)


__all__ = ["DemoConfig", "EvaluateConfig", "ensure_ray", "run_demo"]
