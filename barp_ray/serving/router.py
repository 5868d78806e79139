"""The router deployment: its HTTP endpoints, wired to the serving modules that do the work (docs/serving.md).

Endpoints (all but /healthz need `Authorization: Bearer <key>` when auth is on): ``POST /v1/chat/completions``
(OpenAI chat; `stream: true` answers with server-sent events), ``POST /v1/route`` (the decision only),
``POST /v1/feedback``, ``GET /v1/decisions/{decision_id}``, ``GET /v1/models``, ``GET /healthz``.

The path of the preference w from the request to the policy, 5 hops: `resolve_preference` (preferences.py)
-> `PolicyForward.forward` (`@serve.batch`) -> `ForwardCoalescer.run` (batching.py) -> `RoutingEngine.forward`
(engine.py) -> `BarpPolicy.forward`.

Policy rollout: Serve calls `reconfigure(user_config)` with `{"policy": <checkpoint>}` (see
`barp_ray.serving.rollout` and policy_slot.py).
"""

# no `from __future__ import annotations`: FastAPI must see real annotations (Request) on the methods
import asyncio
import hashlib
import logging
import math
import os
import re
import time

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from barp_ray.serving import decisions
from barp_ray.serving import openai_format as oai
from barp_ray.serving.batching import ForwardCoalescer, PolicyForward
from barp_ray.serving.config import ServeAppConfig
from barp_ray.serving.decisions import Decision, MeanCosts, decision_info, decision_json
from barp_ray.serving.fallback import UpstreamCaller, all_failed, short_error
from barp_ray.serving.guards import Admission, RateLimiter
from barp_ray.serving.http import (
    admitted,
    api_key_hashes,
    app,
    authorize,
    check_messages,
    configured_keys,
    counts_rejections,
    parse_body,
)
from barp_ray.serving.policy_slot import ActivePolicy, PolicySlot, RolloutTarget, replica_id
from barp_ray.serving.preferences import (
    forced_model,
    parse_budget_header,
    parse_preference_header,
    resolve_preference,
)
from barp_ray.serving.schemas import (
    DECISION_ID_PATTERN,
    ApiError,
    ChatCompletionRequest,
    ChatMessage,
    FeedbackRequest,
    RouteRequest,
    validation_error,
)

logger = logging.getLogger("ray.serve")

# re-exported: the names tests and tools import from here
__all__ = [
    "BarpRouter",
    "ForwardCoalescer",
    "RolloutTarget",
    "api_key_hashes",
    "decision_json",
    "parse_budget_header",
    "parse_preference_header",
    "short_error",
    "validation_error",
]


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(app)
class BarpRouter:
    """Loads the checkpoint (MiniLM + policy) and routes each request to one upstream DeploymentHandle."""

    def __init__(self, config: dict, upstreams: dict[str, DeploymentHandle]) -> None:
        from barp_ray.serving.metrics import RouterMetrics

        cfg = self.cfg = ServeAppConfig.model_validate(config)
        if cfg.router.torch_threads:
            import torch

            torch.set_num_threads(cfg.router.torch_threads)
        if not upstreams:
            raise ValueError("no upstreams: bind at least one candidate model")
        self.upstreams = dict(upstreams)
        self.upstream_cfg = {u.model: u for u in cfg.upstreams}
        self.key_hashes = configured_keys(cfg.auth)
        self.metrics = RouterMetrics()
        self.router_names = [*cfg.router_model_names, cfg.name]
        self.replica = replica_id()
        # the policy itself is loaded by Serve's first reconfigure() (build_app always sets user_config)
        self.slot = PolicySlot(cfg, self.upstreams)
        self.costs = MeanCosts(self.upstream_cfg)
        # never raises, also when the store is down (rows are buffered, byte-bounded, drops counted)
        self.log = decisions.open_log(cfg.decision_log, self.replica, on_stats=self.metrics.sync_log)
        self.admission = Admission(cfg.router.max_ongoing_requests, cfg.router.max_queued_requests)
        rl = cfg.rate_limits
        self.limiter = RateLimiter(rl.requests_per_s, rl.burst, rl.per_key) if rl.enabled else None

        seed = cfg.exploration.seed
        self.rng = np.random.default_rng(
            None if seed is None else [seed, int(hashlib.sha256(self.replica.encode()).hexdigest()[:8], 16)]
        )
        self.caller = UpstreamCaller(self.upstreams, self.upstream_cfg, cfg.fallback, self.metrics)
        self.forwarder = PolicyForward(
            cfg.batching,
            self.metrics.batch_size.observe,
            cfg.router.torch_threads,
            on_isolate=self.metrics.isolated.inc,
        )
        logger.info(
            "BaRP router replica %s up: %d upstreams, batching=%s, exploration=%s; loading the policy in "
            "the first reconfigure",
            self.replica,
            len(self.upstreams),
            cfg.batching.enabled,
            cfg.exploration.mode,
        )

    @property
    def active(self) -> ActivePolicy:
        if self.slot.active is None:  # only before Serve's first reconfigure, which precedes traffic
            raise ApiError(
                503,
                "the router is still loading its policy; retry shortly",
                code="loading",
                type_="server_error",
                headers={"Retry-After": "1"},
            )
        return self.slot.active

    async def _admit(self, request: Request) -> str | None:
        """Auth, then the per-key rate limit: the caller's key id (None: auth off)."""
        key = authorize(request, self.key_hashes)
        if self.limiter is not None:
            try:
                self.limiter.check(key)
            except ApiError:
                self.metrics.shed.inc(tags={"reason": "rate_limit"})
                raise
        return key

    # ---- policy rollout -------------------------------------------------------------------------
    async def reconfigure(self, user_config: dict | None) -> None:
        """Serve's hook for `user_config`: load, warm up and swap in a policy (refusals keep the old one)."""

        async def prepare(new: ActivePolicy) -> None:
            await self.forwarder.warm_up(new.engine)
            if self.log is not None:
                await asyncio.to_thread(self.log.write_policy, new.version, new.engine.spec.model_dump(mode="json"))

        outcome, replaced = await self.slot.reconfigure(user_config, prepare)
        if outcome == "started":
            self.costs.update(self.active)
            self.metrics.set_policy(self.active.version, None)
        elif outcome == "swapped":
            self.costs.update(self.active)
            self.metrics.set_policy(self.active.version, replaced.version)
            self.metrics.policy_rollouts.inc(tags={"outcome": "ok"})
        elif outcome == "refused":
            self.metrics.policy_rollouts.inc(tags={"outcome": "refused"})

    async def rollout_status(self) -> dict:
        """This replica's policy and last rollout (for `barp rollout`, through a DeploymentHandle)."""
        return {"replica": self.replica, "pid": os.getpid(), "upstreams": sorted(self.upstreams), **self.slot.status()}

    async def __del__(self) -> None:
        """Serve's graceful shutdown (after the replica drained): every buffered row is written (retried up to
        decision_log.close_timeout_s; what is still unwritten then is counted as dropped)."""
        if self.log is not None:
            lost = await asyncio.to_thread(self.log.close, self.cfg.decision_log.close_timeout_s)
            self.metrics.sync_log(self.log.stats())
            logger.info("decision log closed: %d rows written in all, %d lost", self.log.written, lost)
        self.forwarder.close()

    # ---- the decision ---------------------------------------------------------------------------
    async def _decide(self, request: Request, body, messages, started: float, key: str | None) -> Decision:
        """The routing decision of one chat or route request (both endpoints share it)."""
        text, active = check_messages(messages, self.cfg.limits), self.active  # the request keeps `active`
        forced = forced_model(body.model, self.router_names, self.upstreams, active.models)
        pref = resolve_preference(
            body.preference,
            body.budget,
            request.headers,
            active.calibration,
            self.cfg.default_budget,
            self.cfg.default_preference,
        )  # w: hop 1
        forwarded = await self.forwarder.forward(text, pref.w_cost, active)  # w: hops 2-5
        if isinstance(forwarded, BaseException):  # this request's own forward failed (its batch peers did not)
            raise forwarded
        probs, batch_size = forwarded
        d = decisions.decide(
            active, text, pref, probs, batch_size, forced, self.cfg.exploration, self.rng, started, body.prompt_id
        )
        d.key_hash = key  # reads and feedback of this decision are this key's only
        self.metrics.decision_latency.observe(
            d.decision_latency_ms, tags={"batched": str(self.cfg.batching.enabled).lower()}
        )
        await self.costs.ensure(self.upstreams)
        return d

    def _record(
        self,
        d: Decision,
        endpoint: str,
        status: str,
        served: int | None = None,
        result: dict | None = None,
        upstream_ms: float | None = None,
        stream: bool = False,
    ) -> None:
        result = result or {}
        models, cost = d.active.models, result.get("cost_usd")
        self.metrics.requests.inc(tags={"model": models[d.choice.index], "endpoint": endpoint, "status": status})
        if served is not None:
            self.metrics.served.inc(tags={"model": models[served]})
            if cost is not None and math.isfinite(cost):
                self.metrics.cost.inc(float(cost), tags={"model": models[served]})
        if self.log is not None:
            self.log.append(
                decisions.log_row(
                    d,
                    self.costs,
                    endpoint=endpoint,
                    status=status,
                    served=served,
                    result=result,
                    upstream_ms=upstream_ms,
                    stream=stream,
                    replica=self.replica,
                    log_prompt_text=self.cfg.decision_log.log_prompt_text,
                )
            )

    # ---- endpoints ------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    @counts_rejections
    @admitted
    async def chat_completions(self, request: Request):
        started = time.perf_counter()
        key = await self._admit(request)
        body: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest, self.cfg.limits.max_body_bytes)
        d = await self._decide(request, body, body.messages, started, key)
        payload = {
            "messages": [m.model_dump(exclude_none=True) for m in body.messages],
            "params": body.upstream_params(),
            "request_id": d.decision_id,
        }
        up_started = time.perf_counter()
        answer = await self.caller.call(d, payload, stream=body.stream)
        if answer.index is None:  # an upstream 4xx goes back as it is; else every call failed
            status = "client_error" if answer.client_error is not None else "upstream_failed"
            self._record(d, "chat", status, upstream_ms=(time.perf_counter() - up_started) * 1000.0, stream=body.stream)
            raise answer.client_error or all_failed(d, self.caller.breaker)
        served, served_model = answer.index, d.active.models[answer.index]
        headers = {"x-barp-decision-id": d.decision_id, "x-barp-model": served_model}
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            events = self._sse(d, served, answer.stream, answer.first, include_usage, up_started)
            return StreamingResponse(
                events, media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"}
            )
        status = "ok" if served == d.choice.index else "fallback"
        self._record(d, "chat", status, served, answer.result, (time.perf_counter() - up_started) * 1000.0)
        barp = decision_info(d, self.costs, served, answer.result.get("cost_usd"))
        return JSONResponse(
            oai.completion(answer.result, served_model, barp, f"chatcmpl-{d.decision_id}"), headers=headers
        )

    def _sse(self, d: Decision, served: int, gen, first: dict, include_usage: bool, up_started: float):
        served_model = d.active.models[served]

        def on_end(status: str, last: dict, error: str | None) -> None:
            if error is not None:
                d.attempts.append(
                    {
                        "model": served_model,
                        "ok": False,
                        "reason": "stream_error",
                        "error": error,
                        "latency_ms": round((time.perf_counter() - up_started) * 1000.0, 3),
                    }
                )
            elif served != d.choice.index:
                status = "fallback"
            self._record(d, "chat", status, served, last, (time.perf_counter() - up_started) * 1000.0, stream=True)

        caller = self.caller
        return oai.relay_stream(
            gen,
            first,
            caller.timeout(served_model),
            caller.stream_deadline(served_model),
            served_model,
            include_usage,
            lambda cost: decision_info(d, self.costs, served, cost),
            on_end,
        )

    @app.post("/v1/route")
    @counts_rejections
    @admitted
    async def route(self, request: Request):
        started = time.perf_counter()
        key = await self._admit(request)
        body: RouteRequest = await parse_body(request, RouteRequest, self.cfg.limits.max_body_bytes)
        if body.messages is not None and body.prompt is not None:
            raise ApiError(400, "messages: give messages or prompt, not both", param="messages")
        if body.prompt is not None:
            if not body.prompt.strip():
                raise ApiError(400, "prompt: empty", param="prompt")
            messages = [ChatMessage(role="user", content=body.prompt)]
        else:
            messages = body.messages or []
        d = await self._decide(request, body, messages, started, key)
        self._record(d, "route", "route_only")
        return JSONResponse(decision_info(d, self.costs), headers={"x-barp-decision-id": d.decision_id})

    @app.post("/v1/feedback")
    @counts_rejections
    async def feedback(self, request: Request):
        key = await self._admit(request)
        body: FeedbackRequest = await parse_body(request, FeedbackRequest, self.cfg.limits.max_body_bytes)
        if body.comment is not None and len(body.comment) > self.cfg.limits.max_comment_chars:
            raise ApiError(
                400,
                f"comment: {len(body.comment)} characters, over the limit of {self.cfg.limits.max_comment_chars}",
                param="comment",
            )
        return await decisions.record_feedback(self.log, body, key, self.replica, self.cfg.decision_log)

    @app.get("/v1/decisions/{decision_id}")
    @counts_rejections
    async def get_decision(self, decision_id: str, request: Request):
        key = await self._admit(request)
        if not re.match(DECISION_ID_PATTERN, decision_id):
            raise ApiError(400, "decision_id: expected 32 lowercase hex digits", param="decision_id")
        if self.log is None:
            raise decisions.log_disabled()
        row = await decisions.lookup(self.log.get, decision_id, key, self.cfg.decision_log.flush_interval_s)
        if row is None:
            raise decisions.unknown_decision(decision_id)
        return JSONResponse(decision_json(row))

    @app.get("/v1/models")
    @counts_rejections
    async def list_models(self, request: Request):
        await self._admit(request)
        return {"object": "list", "data": self._models()}

    def _models(self) -> list[dict]:
        kinds = {m: (self.upstream_cfg[m].kind if m in self.upstream_cfg else "custom") for m in self.upstreams}
        return oai.model_list(self.cfg.router_model_names[0], self.active.version, self.active.models, kinds)

    @app.get("/v1/models/{model_id:path}")
    @counts_rejections
    async def get_model(self, model_id: str, request: Request):
        await self._admit(request)
        found = next((m for m in self._models() if m["id"] == model_id), None)
        if found is None:
            raise ApiError(
                404,
                f"model: unknown model {model_id!r}; GET /v1/models lists them",
                param="model",
                code="model_not_found",
            )
        return found

    @app.get("/healthz")
    async def healthz(self):
        last = self.slot.rollout
        return {
            "status": "ok",
            "replica": self.replica,
            "policy_version": self.active.version,
            "policy_loaded_at": self.active.loaded_at,
            "last_rollout": {"id": last["id"], "ok": last["ok"], "at": last["at"]},
            "models": len(self.upstreams),
            "batching": self.cfg.batching.enabled,
            "log_buffered": self.log.buffered if self.log else 0,
            "upstream_circuits": {m: self.caller.breaker.state(m) for m in sorted(self.upstreams)},
            "decision_log": self.log.stats() if self.log else None,
        }

    def check_health(self) -> None:
        if self.forwarder.closed:
            raise RuntimeError("forward executor is shut down")
