"""Synthetic routing logs with a known optimal policy, at any size (`barp synth-logs`).

Each row is a prompt embedding drawn near a real one (real MiniLM embeddings of a prepared directory, plus
Gaussian noise) or near random cluster centres; a ground-truth model gives every candidate LLM an expected
score q_k(x) = sigmoid(a_k + s * z_k(x)) (z_k a standardised projection of x on a model-specific direction)
and a cost c_k(x) = price_k * length(x). The observed score is a Bernoulli draw of q_k(x) (0/1, like
RouterBench) or q_k(x) itself (`binary_scores=False`). Since q and c are known, so is the optimal policy
at every preference: argmax_k (1 - w_c) q_k(x) - w_c min(c_k(x) / tau, 1) (`optimal_rewards`).

The output is a prepared directory in the shard schema (docs/ARCHITECTURE.md), so `barp train` reads it
unchanged, plus columns `expected_scores` (ground truth) and one logged bandit interaction per row from a
softmax logging policy (`logged_w_cost`, `logged_model`, `logged_propensity`), the off-policy view. Rows are
generated and written chunk by chunk (memory stays flat at any `rows`); the folder may be an s3:// URI.
"""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field
from tqdm.auto import tqdm

from barp_ray import storage
from barp_ray.config import JobConfig
from barp_ray.data.table import RoutingTable
from barp_ray.objective import CostScale, derive_tau, reward

SYNTH_FORMAT = "barp-ray synthetic routing shards v1"


class SynthConfig(JobConfig):
    """`barp synth-logs`: how many rows, where, and the ground truth's shape."""

    out: str = Field(description="output folder (local path or s3:// / gs:// URI); gets shards + manifest.json")
    rows: int = Field(default=100_000, ge=10, description="number of logged decisions (rows) to write")
    source: str | None = Field(
        default=None,
        description="a prepared, embedded directory whose real embeddings seed the prompt distribution "
        "(None: random cluster centres)",
    )
    num_models: int = Field(default=8, ge=2, le=64, description="candidate LLMs in the synthetic pool")
    num_centres: int = Field(default=256, ge=2, description="prompt clusters (centres drawn from `source`)")
    noise: float = Field(default=0.35, ge=0.0, description="std of the noise around a centre (in units of its norm)")
    skill_scale: float = Field(default=1.5, gt=0.0, description="how strongly the prompt moves q_k(x) (logit scale)")
    binary_scores: bool = Field(default=True, description="observed scores are 0/1 draws of q_k(x) (else q_k(x))")
    val_fraction: float = Field(default=0.1, ge=0.0, lt=0.5, description="share of rows in the val split")
    test_fraction: float = Field(default=0.1, ge=0.0, lt=0.5, description="share of rows in the test split")
    rows_per_shard: int = Field(default=100_000, ge=100, description="rows per parquet file")
    embedding_dtype: str = Field(
        default="float32",
        pattern="^(float32|float16)$",
        description="on-disk embedding type (float16 halves the bytes)",
    )
    logging_temperature: float = Field(
        default=0.3, gt=0.0, description="softmax temperature of the logging policy over true rewards"
    )
    seed: int = Field(default=0, description="seed of the ground truth and every draw")


class GroundTruth:
    """The synthetic world: prompt centres, per-model skill directions, prices, and the cost scale tau."""

    def __init__(self, cfg: SynthConfig, centres: np.ndarray, centre_tasks: list[str]) -> None:
        rng = np.random.default_rng(cfg.seed)
        self.cfg = cfg
        self.centres = centres.astype(np.float32)
        self.centre_tasks = centre_tasks
        k, d = cfg.num_models, centres.shape[1]
        spread = centres - centres.mean(axis=0)
        mix = rng.normal(size=(k, min(len(centres), 32)))
        picks = rng.choice(len(centres), size=mix.shape[1], replace=False)
        directions = mix @ spread[picks]
        directions /= np.linalg.norm(directions, axis=1, keepdims=True) + 1e-12
        self.directions = directions.astype(np.float32)  # (K, D)
        projected = centres @ self.directions.T
        self.proj_mean, self.proj_std = projected.mean(axis=0), projected.std(axis=0) + 1e-6
        # Prices log-spaced over ~50x; stronger models cost more, with noise so that none dominates.
        self.prices = np.sort(np.exp(rng.uniform(np.log(1e-4), np.log(5e-3), size=k)))
        self.bias = np.linspace(-0.6, 1.4, k) + rng.normal(0, 0.35, size=k)
        self.models = [f"synth-model-{i:02d}" for i in range(k)]
        self.dim = d
        self.tau = float(derive_tau(self._costs(np.exp(rng.normal(0.0, 0.3, size=4096))), "p99_top_model"))

    def _costs(self, length: np.ndarray) -> np.ndarray:
        return np.outer(length, self.prices)

    def expected_scores(self, x: np.ndarray) -> np.ndarray:
        """q_k(x) for a batch of embeddings (N, D) -> (N, K)."""
        z = (x @ self.directions.T - self.proj_mean) / self.proj_std
        return 1.0 / (1.0 + np.exp(-(self.bias + self.cfg.skill_scale * z)))

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """n rows: embedding, task, expected and observed scores, costs."""
        which = rng.integers(0, len(self.centres), size=n)
        base = self.centres[which]
        scale = np.linalg.norm(base, axis=1, keepdims=True)
        x = base + rng.normal(size=base.shape).astype(np.float32) * (self.cfg.noise * scale / np.sqrt(self.dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
        q = self.expected_scores(x)
        observed = (rng.random(q.shape) < q).astype(np.float32) if self.cfg.binary_scores else q.astype(np.float32)
        length = np.exp(rng.normal(0.0, 0.3, size=n))
        return {
            "embedding": x.astype(np.float32),
            "task": np.asarray([self.centre_tasks[i] for i in which], dtype=object),
            "expected_scores": q.astype(np.float32),
            "scores": observed,
            "costs": self._costs(length),
        }

    def spec(self) -> dict:
        """JSON-able description written into the manifest (enough to audit the ground truth)."""
        return {
            "models": self.models,
            "prices": self.prices.tolist(),
            "bias": self.bias.tolist(),
            "skill_scale": self.cfg.skill_scale,
            "tau": self.tau,
        }


def optimal_rewards(
    expected_scores: np.ndarray, costs: np.ndarray, tau: float | CostScale, grid: np.ndarray
) -> np.ndarray:
    """Mean expected reward of the optimal policy at each w_c of `grid` (G,), under the cost scale `tau`."""
    return np.asarray([reward(expected_scores, costs, wc, tau).max(axis=1).mean() for wc in grid])


def policy_rewards(
    choices: np.ndarray, expected_scores: np.ndarray, costs: np.ndarray, tau: float | CostScale, grid: np.ndarray
) -> np.ndarray:
    """Mean expected reward at each w_c of `grid` of given choices (G, N), e.g. `GreedyCurve.choices`."""
    rows = np.arange(expected_scores.shape[0])
    return np.asarray(
        [reward(expected_scores[rows, c], costs[rows, c], wc, tau).mean() for wc, c in zip(grid, choices, strict=True)]
    )


def _centres(cfg: SynthConfig, rng: np.random.Generator, dim: int = 384) -> tuple[np.ndarray, list[str]]:
    if cfg.source is None:
        centres = rng.normal(size=(cfg.num_centres, dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        return centres, [f"cluster-{i % 8}" for i in range(cfg.num_centres)]
    from barp_ray.data.shards import read_shards

    table = read_shards(cfg.source)
    if table.embeddings is None:
        raise ValueError(f"synth-logs --source {cfg.source}: the shards have no embeddings; run `barp embed` first")
    train = table.where_split("train") if table.split is not None else table
    pick = rng.choice(len(train), size=min(cfg.num_centres, len(train)), replace=False)
    return train.embeddings[pick], [str(t) for t in train.tasks[pick]]


def _logged(truth: GroundTruth, rows: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One bandit interaction per row from a softmax logging policy over the true expected rewards."""
    n = len(rows["embedding"])
    w_cost = rng.random(n)
    r = reward(rows["expected_scores"], rows["costs"], w_cost[:, None], truth.tau)
    logits = r / truth.cfg.logging_temperature
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    action = (probs.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    return {"logged_w_cost": w_cost, "logged_model": action, "logged_propensity": probs[np.arange(n), action]}


def _chunk_table(
    truth: GroundTruth, cfg: SynthConfig, start: int, rows: dict, logged: dict, split: np.ndarray
) -> pa.Table:
    n = len(split)
    ids = [f"synth-{start + i:010d}" for i in range(n)]
    table = RoutingTable(
        prompt_ids=np.asarray(ids, dtype=object),
        prompts=[f"synthetic prompt {i}" for i in ids],
        tasks=rows["task"],
        models=truth.models,
        scores=rows["scores"],
        costs=rows["costs"],
        split=split,
        embeddings=rows["embedding"],
        encoder="synthetic",
    ).to_arrow()
    k = len(truth.models)
    table = table.append_column(
        "expected_scores", pa.FixedSizeListArray.from_arrays(pa.array(rows["expected_scores"].reshape(-1)), k)
    )
    for name, values in logged.items():
        table = table.append_column(name, pa.array(values))
    if cfg.embedding_dtype == "float16":
        index = table.schema.get_field_index("embedding")
        flat = pa.array(rows["embedding"].astype(np.float16).reshape(-1), pa.float16())
        table = table.set_column(
            index, "embedding", pa.FixedSizeListArray.from_arrays(flat, rows["embedding"].shape[1])
        )
    return table


def synth_logs(cfg: SynthConfig, progress: bool = True) -> dict:
    """Write `cfg.rows` synthetic rows as a prepared directory at `cfg.out`; returns the manifest."""
    rng = np.random.default_rng(cfg.seed)
    centres, tasks = _centres(cfg, rng)
    truth = GroundTruth(cfg, centres, tasks)
    files, counts, per_task = [], Counter(), Counter()
    bar = tqdm(total=cfg.rows, unit="rows", desc="synth-logs", disable=not progress)
    for index, start in enumerate(range(0, cfg.rows, cfg.rows_per_shard)):
        n = min(cfg.rows_per_shard, cfg.rows - start)
        chunk_rng = np.random.default_rng([cfg.seed, index])
        rows = truth.sample(n, chunk_rng)
        u = chunk_rng.random(n)
        split = np.where(
            u < cfg.test_fraction, "test", np.where(u < cfg.test_fraction + cfg.val_fraction, "val", "train")
        ).astype(object)
        table = _chunk_table(truth, cfg, start, rows, _logged(truth, rows, chunk_rng), split)
        name = f"part-{index:05d}.parquet"
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        storage.write_bytes_atomic(storage.join(cfg.out, name), buffer.getvalue())
        files.append({"file": name, "num_rows": n})
        counts.update(split.tolist())
        per_task.update(rows["task"].tolist())
        bar.update(n)
    bar.close()
    manifest = {
        "format": SYNTH_FORMAT,
        "models": truth.models,
        "encoder": "synthetic",
        "embedding_dim": truth.dim,
        "embedding_dtype": cfg.embedding_dtype,
        "files": files,
        "num_rows": cfg.rows,
        "per_split": dict(sorted(counts.items())),
        "per_task": dict(sorted(per_task.items())),
        "ground_truth": truth.spec(),
        "synth_config": cfg.model_dump(mode="json"),
    }
    storage.write_bytes_atomic(storage.join(cfg.out, "manifest.json"), (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def read_synth_split(location: str, split: str, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    """One split of a synthetic folder as numpy columns (for small checks and tests; streams file by file)."""
    manifest = json.loads(storage.read_bytes(storage.join(location, "manifest.json")))
    parts: dict[str, list] = {}
    for entry in manifest["files"]:
        fs, path = storage.resolve(storage.join(location, entry["file"]))
        table = pq.read_table(path, filesystem=fs, columns=columns, filters=[("split", "=", split)])
        for name in table.column_names:
            column = table.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(column.type):
                values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
            else:
                values = column.to_numpy(zero_copy_only=False)
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}
