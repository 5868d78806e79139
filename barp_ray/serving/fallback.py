"""Upstream calls in ranking order: the ONE ordered-attempt loop for streaming and non-streaming requests.

The chosen model is tried first, then the next-ranked ones, with at most `1 + fallback.max_fallbacks`
calls. Error semantics (docs/serving.md, "Upstream errors"):

- an upstream 4xx other than 408 / 429 (the request is wrong: bad `temperature`, context too long) ends
  the loop: the client gets that status and the upstream's message, and no other model is paid for;
- 408, 429, 5xx, timeouts, connection errors and broken replicas fall back to the next-ranked model;
- a per-model circuit breaker (`fallback.breaker_failures` consecutive failures) skips a model for
  `fallback.breaker_cooldown_s` without calling it; skipped models do not count as calls.

Each attempt has the upstream's `attempt_timeout_s()` (for a stream: until its first item). Every attempt,
skips included, is recorded in `Decision.attempts`, which the `barp` block and the decision log show.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from barp_ray.serving.config_sections import FallbackConfig, UpstreamConfig
from barp_ray.serving.decisions import Decision
from barp_ray.serving.schemas import ApiError

logger = logging.getLogger("ray.serve")

DEFAULT_TIMEOUT_S = 30.0
CLOSED, OPEN, HALF_OPEN = 0, 1, 2  # breaker states, as exported in barp_router_upstream_circuit_state


def short_error(exc: BaseException) -> str:
    """One line about an upstream failure (Ray wraps remote exceptions with their traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip().splitlines()
    line = next((t for t in reversed(text) if t.strip()), "") if text else ""
    return f"{type(exc).__name__}: {line}"[:300]


def error_text(err: dict) -> str:
    """An upstream error value (`UpstreamError.to_dict()`) as one line for attempts and logs."""
    status = err.get("status")
    return (f"HTTP {status}: " if status else "") + str(err.get("message") or "upstream error")[:300]


class CircuitBreaker:
    """Consecutive-failure breakers, one per model, local to a router replica.

    `failures` failed attempts in a row open a model's breaker: `allow` is False for `cooldown_s`. After
    that the breaker is half-open: the next attempt runs; a failure opens it again, a success closes it.
    """

    def __init__(
        self,
        failures: int,
        cooldown_s: float,
        on_state: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures, self.cooldown_s, self.on_state, self.clock = failures, cooldown_s, on_state, clock
        self._count: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._state: dict[str, int] = {}

    def _set(self, model: str, state: int) -> None:
        if self._state.get(model, CLOSED) != state:
            self._state[model] = state
            if self.on_state is not None:
                self.on_state(model, state)

    def allow(self, model: str) -> bool:
        until = self._open_until.get(model)
        if until is None:
            return True
        if self.clock() < until:
            return False
        self._set(model, HALF_OPEN)
        return True

    def record(self, model: str, ok: bool) -> None:
        if not self.failures:
            return
        if ok:
            self._count[model] = 0
            self._open_until.pop(model, None)
            self._set(model, CLOSED)
            return
        self._count[model] = self._count.get(model, 0) + 1
        if self._count[model] >= self.failures:
            self._open_until[model] = self.clock() + self.cooldown_s
            self._set(model, OPEN)
            logger.warning(
                "upstream %s: circuit open for %gs after %d failures in a row",
                model,
                self.cooldown_s,
                self._count[model],
            )

    def state(self, model: str) -> str:
        self.allow(model)  # an expired cooldown reads as half-open
        return {CLOSED: "closed", OPEN: "open", HALF_OPEN: "half_open"}[self._state.get(model, CLOSED)]

    def retry_after_s(self, models: list[str]) -> float:
        """Seconds until the first of `models` may be called again."""
        now = self.clock()
        return max(0.0, min((self._open_until.get(m, now) - now for m in models), default=0.0))


@dataclass
class Answer:
    """What the attempt loop got: an answer (`index` + `result` or `stream`/`first`), a client error, or neither."""

    index: int | None = None  # policy index of the model that answered
    result: dict | None = None  # complete(): the upstream's result dict
    stream: Any = None  # stream(): the response generator ...
    first: dict | None = None  # ... and its first item
    client_error: ApiError | None = None  # an upstream 4xx, answered to the client as it is


async def _await(response):
    return await response


class UpstreamCaller:
    """Calls the upstream deployments of a decision's ranking until one answers (see the module docstring)."""

    def __init__(
        self,
        handles: Mapping[str, Any],
        upstream_cfg: Mapping[str, UpstreamConfig],
        fallback: FallbackConfig,
        metrics: Any,
    ) -> None:
        self.handles = dict(handles)
        self.stream_handles = {m: h.options(stream=True) for m, h in self.handles.items()}
        self.upstream_cfg, self.max_fallbacks, self.metrics = upstream_cfg, fallback.max_fallbacks, metrics
        self.breaker = CircuitBreaker(
            fallback.breaker_failures,
            fallback.breaker_cooldown_s,
            on_state=lambda m, s: metrics.circuit.set(s, tags={"model": m}),
        )
        for model in self.handles:  # every model's state is exported from the start
            metrics.circuit.set(CLOSED, tags={"model": model})

    def timeout(self, model: str) -> float:
        return self.upstream_cfg[model].attempt_timeout_s() if model in self.upstream_cfg else DEFAULT_TIMEOUT_S

    def stream_deadline(self, model: str) -> float:
        return self.upstream_cfg[model].stream_deadline_s if model in self.upstream_cfg else 300.0

    async def call(self, d: Decision, payload: dict, stream: bool) -> Answer:
        """Try the ranking in order; `Answer()` (no index, no client error) when every call failed."""
        calls, limit = 0, 1 + self.max_fallbacks
        n = (payload.get("params") or {}).get("n") or 1
        chosen = d.active.models[d.choice.index]
        if n != 1 and chosen in self.upstream_cfg and self.upstream_cfg[chosen].kind == "replay":
            return Answer(
                client_error=ApiError(  # known before any call: the replay upstream has one answer
                    400,
                    f"n: the upstream of {chosen} (replay) answers n=1 only (got {n})",
                    param="n",
                    code="unsupported_value",
                )
            )
        for idx in d.choice.ranking:
            if calls >= limit:
                break
            model = d.active.models[idx]
            if not self.breaker.allow(model):
                self._attempt(d, model, False, "circuit_open", "skipped: circuit breaker open", None)
                self.metrics.fallbacks.inc(tags={"model": model, "reason": "circuit_open"})
                continue
            calls += 1
            last = calls == limit
            timeout, started = self.timeout(model), time.perf_counter()
            if stream:
                gen = self.stream_handles[model].stream.remote(payload)
                waiting, cancel, what = gen.__anext__(), gen.cancel, "no first chunk"
            else:
                response = self.handles[model].complete.remote(payload)
                waiting, cancel, what = _await(response), response.cancel, "no answer"
            try:
                value = await asyncio.wait_for(waiting, timeout)
            except StopAsyncIteration:  # an empty stream
                value = {"done": True}
            except asyncio.TimeoutError:
                cancel()
                self._failed(d, model, "timeout", f"{what} within {timeout:g}s", started, last)
                continue
            except Exception as exc:  # the upstream replica broke (Ray error): a failure of this model
                if stream:
                    cancel()
                self._failed(d, model, "error", short_error(exc), started, last)
                continue
            err = value.get("error")
            if err is not None:
                if stream:
                    cancel()
                if not err.get("retryable", True):  # the request is wrong: the client gets it, nobody else is paid
                    self.breaker.record(model, True)  # the upstream is alive
                    self._attempt(d, model, False, "client_error", error_text(err), started)
                    return Answer(client_error=self._client_error(err, d, model))
                reason = "rate_limited" if err.get("status") == 429 else "error"
                self._failed(d, model, reason, error_text(err), started, last)
                continue
            self.breaker.record(model, True)
            self._attempt(d, model, True, None, None, started)
            if stream:
                return Answer(index=idx, stream=gen, first=value)
            return Answer(index=idx, result=value)
        return Answer()

    @staticmethod
    def _attempt(
        d: Decision, model: str, ok: bool, reason: str | None, error: str | None, started: float | None
    ) -> None:
        latency = 0.0 if started is None else round((time.perf_counter() - started) * 1000.0, 3)
        d.attempts.append({"model": model, "ok": ok, "reason": reason, "error": error, "latency_ms": latency})

    def _failed(self, d: Decision, model: str, reason: str, error: str, started: float, last: bool) -> None:
        """Record a failed call (counted as a fallback unless it was the last one allowed)."""
        self._attempt(d, model, False, reason, error, started)
        self.breaker.record(model, False)
        if not last:
            self.metrics.fallbacks.inc(tags={"model": model, "reason": reason})
        logger.warning("upstream %s failed (%s): %s", model, reason, error)

    @staticmethod
    def _client_error(err: dict, d: Decision, model: str) -> ApiError:
        return ApiError(
            int(err.get("status") or 400),
            str(err.get("message") or "rejected by the upstream"),
            param=err.get("param"),
            code=err.get("code"),
            type_=err.get("type") or "invalid_request_error",
            headers={"x-barp-decision-id": d.decision_id, "x-barp-model": model},
        )


def all_failed(d: Decision, breaker: CircuitBreaker | None = None) -> ApiError:
    """502 when every call failed; 503 with Retry-After when every candidate was skipped by its breaker."""
    called = [a for a in d.attempts if a["reason"] != "circuit_open"]
    if not called and d.attempts and breaker is not None:
        wait = breaker.retry_after_s([a["model"] for a in d.attempts])
        return ApiError(
            503,
            f"no upstream available: the circuit breakers of {[a['model'] for a in d.attempts]} "
            f"are open; retry in {wait:.0f}s; decision {d.decision_id}",
            code="upstream_unavailable",
            type_="upstream_error",
            headers={"Retry-After": str(max(1, round(wait)))},
        )
    detail = "; ".join(f"{a['model']}: {a['error']}" for a in d.attempts)
    return ApiError(
        502,
        f"all {len(called)} upstreams tried failed ({detail}); decision {d.decision_id}",
        code="upstream_failed",
        type_="upstream_error",
    )
