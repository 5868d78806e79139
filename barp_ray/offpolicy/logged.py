"""Logged bandit data: the router's decision log turned into (context, preference, action, propensity,
outcome) rows that off-policy training and evaluation read.

Each kept row is one served decision whose answer came from the model the serving rule chose, with:
the prompt's embedding, the caller's w_c, the chosen model (index into `models`), its propensity under the
serving rule (1 for greedy, pi(a) when sampling, the epsilon mixture for epsilon), the feedback score and
the cost of the answer. The score and cost of a model's answer do not depend on w, so a row logged at one
preference can be re-weighted to evaluate (or train) a policy at any other preference.

Rows that cannot be used are counted by reason (`LogReadReport`) and skipped, never silently: fallback rows
(another model answered, so the logged propensity is not that answer's), route-only rows, rows without
feedback (unless `missing_feedback="default"`), unknown models. Missing, zero or out-of-range propensities
are an error, not a skip: they mean the log cannot support importance weighting at all.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from barp_ray.data.table import RoutingTable

log = logging.getLogger(__name__)

MissingFeedback = Literal["skip", "default"]
EMBEDDING = "embedding"


@dataclass
class LogReadReport:
    """What reading a decision log kept and dropped, by reason."""

    decisions: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    defaulted_feedback: int = 0  # rows whose missing feedback got `default_score`
    encoded_prompts: int = 0  # embeddings computed from logged text (not found in `embeddings_from`)
    policy_versions: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "decisions": self.decisions,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "defaulted_feedback": self.defaulted_feedback,
            "encoded_prompts": self.encoded_prompts,
            "policy_versions": dict(self.policy_versions),
        }

    def summary(self) -> str:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        return (
            f"{self.kept} of {self.decisions} logged decisions usable (dropped: {drops}; "
            f"feedback defaulted: {self.defaulted_feedback}; prompts encoded: {self.encoded_prompts})"
        )


@dataclass
class LoggedBandit:
    """N logged bandit rows, in the model order `models`."""

    models: list[str]
    embeddings: np.ndarray  # (N, D) float32
    w_cost: np.ndarray  # (N,) the preference the caller sent
    actions: np.ndarray  # (N,) int64 index into models
    propensities: np.ndarray  # (N,) P(serving rule picks the action | x, w), in (0, 1]
    scores: np.ndarray  # (N,) feedback score in [0, 1]
    costs: np.ndarray  # (N,) USD cost of the answer
    prompt_hashes: np.ndarray  # (N,) str
    policy_versions: np.ndarray  # (N,) str
    tau: float | None = None  # the logging policy's cost scale, if the log has its spec
    cost_floor: float | None = None  # and its log scale's floor (None: linear)
    encoder: str | None = None
    report: LogReadReport = field(default_factory=LogReadReport)
    predicted_scores: np.ndarray | None = None  # (N, K) a reward model's q_hat, for the doubly robust gradient
    predicted_costs: np.ndarray | None = None  # (N, K) its c_hat (USD)

    def __post_init__(self) -> None:
        n = len(self.actions)
        for name in ("embeddings", "w_cost", "propensities", "scores", "costs", "prompt_hashes", "policy_versions"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"LoggedBandit.{name} has {len(getattr(self, name))} rows, expected {n}")
        check_propensities(self.propensities)

    def __len__(self) -> int:
        return len(self.actions)

    def take(self, index: np.ndarray) -> LoggedBandit:
        index = np.asarray(index)
        names = (
            "embeddings",
            "w_cost",
            "actions",
            "propensities",
            "scores",
            "costs",
            "prompt_hashes",
            "policy_versions",
            "predicted_scores",
            "predicted_costs",
        )
        return replace(self, **{k: getattr(self, k)[index] for k in names if getattr(self, k) is not None})

    def split_by_prompt(self, fraction: float, seed: int = 0) -> tuple[LoggedBandit, LoggedBandit]:
        """(rest, held-out): about `fraction` of the distinct prompts go to held-out, all of their rows."""
        unique = np.unique(self.prompt_hashes)
        rng = np.random.default_rng(seed)
        held = set(rng.choice(unique, size=round(fraction * len(unique)), replace=False).tolist())
        mask = np.array([h in held for h in self.prompt_hashes], dtype=bool)
        return self.take(np.flatnonzero(~mask)), self.take(np.flatnonzero(mask))


def check_propensities(propensities: np.ndarray, decision_ids=None) -> None:
    """Reject propensities that importance weighting cannot use: missing (NaN), <= 0 or > 1."""
    p = np.asarray(propensities, dtype=np.float64)
    bad = ~np.isfinite(p) | (p <= 0) | (p > 1)
    if bad.any():
        where = np.flatnonzero(bad)
        ids = [str(decision_ids[i]) for i in where[:3]] if decision_ids is not None else where[:3].tolist()
        missing = int((~np.isfinite(p)).sum())
        raise ValueError(
            f"propensity: {int(bad.sum())} of {len(p)} logged rows have a missing ({missing}), zero/negative or "
            f">1 propensity (e.g. {ids}). Off-policy training and evaluation divide by it, so these logs cannot "
            "be used as they are: log with the BaRP router (it records `propensity` for every decision), or "
            "remove the rows written without it"
        )


def read_logged_bandit(
    log_uri: str | Path,
    models: list[str] | None = None,
    embeddings_from: str | Path | RoutingTable | None = None,
    encoder: str | None = None,
    missing_feedback: MissingFeedback = "skip",
    default_score: float | None = None,
    prompt_hashes: set[str] | None = None,
) -> LoggedBandit:
    """Read a decision log (local path or URI) into logged bandit rows.

    models: the action order (default: the newest logged policy's models). embeddings_from: a prepared +
    embedded shard folder (or its table, already read) to look prompts up in by content hash (prompts not
    found there are encoded from the logged text with `encoder`). prompt_hashes: keep only these prompts
    (e.g. one split of a replay).
    """
    from barp_ray.serving.decision_log import read_decision_log, read_policies

    frame = read_decision_log(log_uri)
    report = LogReadReport(decisions=len(frame))
    if frame.empty:
        raise ValueError(f"{log_uri}: the decision log has no decisions (is `decision_log.path` right?)")
    specs = read_policies(log_uri)
    newest = _newest_spec(frame, specs)
    models = list(models or (newest or {}).get("models") or sorted(frame["chosen_model"].dropna().unique()))
    tau, cost_floor = (newest or {}).get("tau"), (newest or {}).get("cost_floor")
    encoder = encoder or (newest or {}).get("encoder")
    index_of = {m: i for i, m in enumerate(models)}

    drop = Counter()
    keep = np.ones(len(frame), dtype=bool)

    def drop_where(mask: np.ndarray, reason: str) -> None:
        nonlocal keep
        hit = mask & keep
        if hit.any():
            drop[reason] += int(hit.sum())
            keep &= ~mask

    status = frame["status"].astype(str).to_numpy()
    chosen = frame["chosen_model"].astype(str).to_numpy()
    served = frame["served_model"].astype(object).to_numpy()
    drop_where(status == "route_only", "route_only (no answer served)")
    drop_where(np.isin(status, ["upstream_failed", "stream_error"]), "no answer (upstream failed)")
    drop_where(
        np.array([s is None or s != c for s, c in zip(served, chosen, strict=True)]),
        "answered by a fallback model (its propensity is not logged)",
    )
    drop_where(~np.isin(chosen, list(index_of)), "chosen model not in `models`")
    drop_where(frame["exploration"].astype(str).to_numpy() == "forced", "model forced by the caller")
    if prompt_hashes is not None:
        drop_where(~frame["prompt_hash"].isin(prompt_hashes).to_numpy(), "prompt not selected")
    cost = frame["cost_usd"].to_numpy(dtype=np.float64)
    drop_where(~np.isfinite(cost) | (cost < 0), "no cost recorded")

    score = frame["feedback_score"].to_numpy(dtype=np.float64)
    no_feedback = ~np.isfinite(score)
    if missing_feedback == "default":
        if default_score is None:
            raise ValueError("default_score: set it (e.g. 0.0) when missing_feedback is 'default'")
        report.defaulted_feedback = int((no_feedback & keep).sum())
        score = np.where(no_feedback, default_score, score)
    elif missing_feedback == "skip":
        drop_where(no_feedback, "no feedback")
    else:
        raise ValueError(f"missing_feedback must be 'skip' or 'default', got {missing_feedback!r}")
    drop_where((score < 0) | (score > 1), "feedback score outside [0, 1]")

    rows = frame[keep]
    check_propensities(rows["propensity"].to_numpy(dtype=np.float64), rows["decision_id"].to_numpy())
    if rows.empty:
        raise ValueError(f"{log_uri}: no usable rows: " + ", ".join(f"{k}: {v}" for k, v in drop.items()))
    hashes = rows["prompt_hash"].astype(str).to_numpy()
    emb, encoded = _embeddings(rows, hashes, embeddings_from, encoder)
    report.kept, report.dropped, report.encoded_prompts = len(rows), dict(drop), encoded
    report.policy_versions = {str(k): int(v) for k, v in rows["policy_version"].value_counts().items()}
    log.info("decision log %s: %s", log_uri, report.summary())
    return LoggedBandit(
        models=models,
        embeddings=emb,
        w_cost=rows["w_cost"].to_numpy(dtype=np.float64),
        actions=np.array([index_of[m] for m in rows["chosen_model"]], dtype=np.int64),
        propensities=rows["propensity"].to_numpy(dtype=np.float64),
        scores=score[keep],
        costs=cost[keep],
        prompt_hashes=hashes.astype(object),
        policy_versions=rows["policy_version"].astype(str).to_numpy().astype(object),
        tau=float(tau) if tau else None,
        cost_floor=float(cost_floor) if cost_floor else None,
        encoder=encoder,
        report=report,
    )


def _newest_spec(frame, specs: dict[str, dict]) -> dict | None:
    if not specs:
        return None
    by_time = frame.sort_values("decided_at")["policy_version"].dropna()
    for version in reversed(by_time.tolist()):
        if version in specs:
            return specs[version]
    return next(iter(specs.values()))


def _embeddings(rows, hashes: np.ndarray, embeddings_from, encoder: str | None) -> tuple[np.ndarray, int]:
    """Embeddings by prompt hash from a shard folder; the rest encoded from the logged prompt text."""
    found: dict[str, np.ndarray] = {}
    if embeddings_from is not None:
        from barp_ray.data.shards import read_shards
        from barp_ray.data.table import RoutingTable

        table = embeddings_from if isinstance(embeddings_from, RoutingTable) else read_shards(embeddings_from)
        where = "the given table" if isinstance(embeddings_from, RoutingTable) else str(embeddings_from)
        if table.embeddings is None:
            raise ValueError(f"embeddings_from: {where} has no embeddings; run `barp embed` on it")
        if encoder and table.encoder and table.encoder != encoder:
            raise ValueError(
                f"embeddings_from: {where} was embedded with {table.encoder!r}, the logged policy uses {encoder!r}"
            )
        wanted = set(hashes.tolist())
        for h, e in zip(table.content_hashes, table.embeddings, strict=True):
            if h in wanted:
                found[h] = e
    missing = sorted({h for h in hashes if h not in found})
    if missing:
        texts = {}
        for h, text in zip(hashes, rows["prompt"].to_numpy(), strict=True):
            if h in missing and isinstance(text, str):
                texts[h] = text
        lacking = [h for h in missing if h not in texts]
        if lacking:
            raise ValueError(
                f"{len(lacking)} logged prompts (e.g. {lacking[:2]}) have no embedding: the log has no prompt "
                "text for them (decision_log.log_prompt_text was off) and `embeddings_from` does not have them. "
                "Point embeddings_from at the embedded shards of these prompts"
            )
        if not encoder:
            raise ValueError("encoder: the log names no encoder; pass the policy's encoder to embed logged prompts")
        from barp_ray.embeddings.encoder import encode, load_encoder

        model = load_encoder(encoder)
        order = list(texts)
        vectors = encode(model, [texts[h] for h in order])
        found.update(dict(zip(order, vectors, strict=True)))
    return np.stack([found[h] for h in hashes]).astype(np.float32), len(missing)
