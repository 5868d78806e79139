"""The routing decision of one request: its record, the `barp` block clients see, and its decision-log row.

`decide` turns the policy's probabilities into a `Decision` (masking models without an upstream, applying
the exploration rule); `decision_info` is the `barp` block of a response; `log_row` is the row the
decision log stores for off-policy training.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from barp_ray.data.table import prompt_hash
from barp_ray.serving.config_sections import DecisionLogConfig, ExplorationConfig, UpstreamConfig
from barp_ray.serving.decision_log import DecisionLog, LogUnavailable, decision_ms, new_decision_id, utcnow
from barp_ray.serving.engine import Choice, choose
from barp_ray.serving.policy_slot import ActivePolicy
from barp_ray.serving.preferences import ResolvedPreference, budget_met
from barp_ray.serving.schemas import ApiError

logger = logging.getLogger("ray.serve")


@dataclass
class Decision:
    active: ActivePolicy  # the policy that decided (and that the models indices below refer to)
    decision_id: str
    text: str
    preference: ResolvedPreference
    probs: np.ndarray
    choice: Choice
    exploration: str
    decision_latency_ms: float
    batch_size: int
    forced: bool
    started: float
    prompt_id: str | None = None
    attempts: list[dict] = field(default_factory=list)
    key_hash: str | None = None  # the calling API key's id (decision_log.key_id); reads and feedback check it

    @property
    def w_cost(self) -> float:
        return self.preference.w_cost

    @property
    def failures(self) -> int:
        return sum(1 for a in self.attempts if not a["ok"])


def decide(
    active: ActivePolicy,
    text: str,
    pref: ResolvedPreference,
    probs: np.ndarray,
    batch_size: int,
    forced: int | None,
    exploration: ExplorationConfig,
    rng: np.random.Generator,
    started: float,
    prompt_id: str | None,
) -> Decision:
    """The decision from the policy's probabilities: models without an upstream masked, then the choice rule."""
    available = active.available
    probs = np.where(available, probs, 0.0)
    probs = probs / probs.sum() if probs.sum() > 0 else available / available.sum()
    choice = choose(probs, exploration.mode, exploration.epsilon, rng, forced)
    return Decision(
        active=active,
        decision_id=new_decision_id(),
        text=text,
        preference=pref,
        probs=probs,
        choice=choice,
        exploration="forced" if forced is not None else exploration.mode,
        decision_latency_ms=(time.perf_counter() - started) * 1000.0,
        batch_size=batch_size,
        forced=forced is not None,
        started=started,
        prompt_id=prompt_id,
    )


class MeanCosts:
    """Expected cost per model: config > calibration > the upstream's own `info()` (asked once, on first use)."""

    def __init__(self, upstream_cfg: Mapping[str, UpstreamConfig]) -> None:
        self.upstream_cfg = upstream_cfg
        self.costs: dict[str, float | None] = {}
        self._asked = False
        self._lock = asyncio.Lock()

    def update(self, active: ActivePolicy) -> None:
        for m in active.models:
            self.costs.setdefault(m, None)
        if active.calibration is not None:
            self.costs.update(active.calibration.model_mean_cost)
        for m, u in self.upstream_cfg.items():
            if u.mean_cost_usd is not None:
                self.costs[m] = u.mean_cost_usd

    def get(self, model: str) -> float | None:
        return self.costs.get(model)

    async def ensure(self, upstreams: Mapping[str, Any]) -> None:
        """Ask the upstreams without a known cost (their DeploymentHandles) once."""
        if self._asked or all(v is not None for v in self.costs.values()):
            return
        async with self._lock:
            if self._asked:
                return
            self._asked = True
            todo = [m for m, v in self.costs.items() if v is None and m in upstreams]

            async def ask(m: str):
                async def info():
                    return await upstreams[m].info.remote()

                try:
                    return m, await asyncio.wait_for(info(), 10.0)
                except Exception as exc:
                    logger.warning("upstream %s: info() failed: %s", m, type(exc).__name__)
                    return m, {}

            for m, info in await asyncio.gather(*(ask(m) for m in todo)):
                if info.get("mean_cost_usd") is not None:
                    self.costs[m] = float(info["mean_cost_usd"])

    def expected(self, models: list[str], probs: np.ndarray) -> float | None:
        costs = [self.costs.get(m) for m in models]
        used = [(p, c) for p, c in zip(probs, costs, strict=True) if p > 0]
        if any(c is None for _, c in used):
            return None
        return float(sum(p * c for p, c in used))


def decision_info(d: Decision, costs: MeanCosts, served: int | None = None, cost: float | None = None) -> dict:
    """The `barp` block of a response: the decision, its probabilities, costs and fallback attempts."""
    models = d.active.models
    chosen = models[d.choice.index]
    budget = d.preference.budget
    return {
        "decision_id": d.decision_id,
        "model": chosen,
        "served_model": None if served is None else models[served],
        "w_cost": d.w_cost,
        "preference": {"quality": 1.0 - d.w_cost, "cost": d.w_cost},
        "preference_source": d.preference.source,
        "budget": None if budget is None else budget.model_dump(exclude_none=True),
        "budget_met": budget_met(d.active.calibration, budget),
        "probabilities": {m: float(p) for m, p in zip(models, d.probs, strict=True)},
        "probability": float(d.probs[d.choice.index]),
        "propensity": d.choice.propensity,
        "exploration": d.exploration,
        "explored": d.choice.explored,
        "ranking": [models[i] for i in d.choice.ranking],
        "expected_cost_usd": costs.expected(models, d.probs),
        "chosen_expected_cost_usd": costs.get(chosen),
        "cost_usd": cost,
        "fallback": {
            "count": d.failures if served is not None else len(d.attempts),
            "attempts": d.attempts,
        },
        "policy_version": d.active.version,
        "decision_latency_ms": round(d.decision_latency_ms, 3),
    }


def log_row(
    d: Decision,
    costs: MeanCosts,
    *,
    endpoint: str,
    status: str,
    served: int | None,
    result: dict,
    upstream_ms: float | None,
    stream: bool,
    replica: str,
    log_prompt_text: bool,
) -> dict:
    """The decision-log row of a finished request (see barp_ray/serving/decision_log.py for the schema)."""
    models = d.active.models
    prompt_id = d.prompt_id or result.get("replay_prompt_id") or f"h:{prompt_hash(d.text)}"
    budget = d.preference.budget
    budget_kind = budget_value = None
    if budget is not None:
        budget_kind = "max_cost_per_query" if budget.max_cost_per_query is not None else "max_largest_share"
        budget_value = getattr(budget, budget_kind)
    return {
        "decision_id": d.decision_id,
        "decided_at": utcnow(),
        "endpoint": endpoint,
        "prompt_id": prompt_id,
        "prompt_hash": prompt_hash(d.text),
        "prompt": d.text if log_prompt_text else None,
        "prompt_chars": len(d.text),
        "w_cost": d.w_cost,
        "preference_source": d.preference.source,
        "budget_kind": budget_kind,
        "budget_value": budget_value,
        "policy_version": d.active.version,
        "chosen_model": models[d.choice.index],
        "chosen_index": d.choice.index,
        "probability": float(d.probs[d.choice.index]),
        "propensity": d.choice.propensity,
        "exploration": d.exploration,
        "explored": d.choice.explored,
        "probabilities": [float(p) for p in d.probs],
        "expected_cost_usd": costs.expected(models, d.probs),
        "served_model": None if served is None else models[served],
        "served_index": served,
        "status": status,
        "fallback_count": d.failures,
        "attempts": json.dumps(d.attempts),
        "cost_usd": result.get("cost_usd"),
        "prompt_tokens": result.get("prompt_tokens"),
        "completion_tokens": result.get("completion_tokens"),
        "decision_latency_ms": d.decision_latency_ms,
        "upstream_latency_ms": upstream_ms,
        "total_latency_ms": (time.perf_counter() - d.started) * 1000.0,
        "stream": stream,
        "batch_size": d.batch_size,
        "replica": replica,
        "key_hash": d.key_hash,
    }


def _jsonable(value: Any):
    """A decision-log cell as plain JSON (NaN / NaT -> null, numpy -> lists and numbers, times -> ISO)."""
    import pandas as pd

    if isinstance(value, (np.ndarray, list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def open_log(lc: DecisionLogConfig, replica: str, on_stats=None) -> DecisionLog | None:
    """The replica's decision log writer (None when the log is off). Never raises: an unwritable store is
    retried by the log's own flush thread, and rows past its byte bound are counted as dropped (`on_stats`)."""
    if not lc.enabled:
        return None
    return DecisionLog(
        lc.path,
        writer=replica,
        flush_rows=lc.flush_rows,
        flush_interval_s=lc.flush_interval_s,
        max_buffer_bytes=lc.max_buffer_bytes,
        max_buffer_rows=lc.max_buffer_rows,
        feedback_window_s=lc.feedback_window_s,
        write_retries=lc.write_retries,
        autoflush=True,
        on_stats=on_stats,
    )


def decision_json(row) -> dict:
    """A decision row (a `DecisionLog.get` dict, or the first row of a `read_decision_log` frame) as plain JSON."""
    if hasattr(row, "iloc"):
        row = row.iloc[0].to_dict()
    return {k: _jsonable(v) for k, v in row.items()}


async def lookup(find, decision_id: str, key: str | None, flush_interval_s: float):
    """`find(decision_id, key)` (DecisionLog.get / .exists) off the event loop.

    An id made less than `flush_interval_s` + 2 s ago may still sit in another replica's buffer: it is looked
    up again (every 0.5 s) until that replica must have flushed it. A 503 when the store cannot be read.
    """
    made_ms = decision_ms(decision_id)
    horizon = (made_ms or 0) / 1000.0 + flush_interval_s + 2.0
    while True:
        try:
            found = await asyncio.to_thread(find, decision_id, key)
        except OSError as exc:
            raise ApiError(
                503,
                f"decision_id: the decision log store cannot be read ({type(exc).__name__}); retry later",
                param="decision_id",
                code="log_unavailable",
                type_="server_error",
                headers={"Retry-After": "5"},
            ) from None
        if found or time.time() >= horizon:
            return found
        await asyncio.sleep(0.5)


def unknown_decision(decision_id: str) -> ApiError:
    """The 404 of a decision that does not exist or belongs to another API key (the same answer: nothing leaks)."""
    return ApiError(
        404, f"decision_id: no decision {decision_id} for this API key", param="decision_id", code="not_found"
    )


def log_disabled() -> ApiError:
    """The 409 of a feedback or lookup call on a router whose decision log is off."""
    return ApiError(
        409, "decision_id: the decision log is disabled on this router", param="decision_id", code="log_disabled"
    )


async def record_feedback(log: DecisionLog | None, body, key: str | None, replica: str, lc: DecisionLogConfig) -> dict:
    """Record one /v1/feedback body (a FeedbackRequest) for `key`'s decision; the endpoint's JSON answer.

    With `lc.feedback_sync` the row is group-committed and in the store before this returns (else a 503);
    otherwise it is buffered with the decisions (at most flush_interval_s late; lost if the replica crashes).
    """
    if log is None:
        raise log_disabled()
    if not await lookup(log.exists, body.decision_id, key, lc.flush_interval_s):
        raise unknown_decision(body.decision_id)
    row = {
        "decision_id": body.decision_id,
        "score": body.score,
        "comment": body.comment,
        "recorded_at": utcnow(),
        "replica": replica,
        "key_hash": key,
    }
    if lc.feedback_sync:
        try:
            await log.commit_feedback(row)
        except LogUnavailable as exc:
            raise ApiError(
                503, str(exc), code="log_unavailable", type_="server_error", headers={"Retry-After": "5"}
            ) from None
    else:
        log.append_feedback(row)
    return {"decision_id": body.decision_id, "score": body.score, "recorded": True, "durable": lc.feedback_sync}
