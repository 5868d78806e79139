"""The router deployment: FastAPI ingress, batched encoder + policy forward, upstream calls with fallback.

Endpoints (all but /healthz need `Authorization: Bearer <key>` when auth is on):

- ``POST /v1/chat/completions``: OpenAI chat completion; the policy picks the model from the preference
  (body `preference` / `budget`, header `x-barp-preference` / `x-barp-budget`, else the config default),
  the chosen model's upstream answers (falling back to the next-ranked models on failure); `stream: true`
  answers with server-sent events. The response's `model` is the model that answered and `barp` holds the
  routing decision.
- ``POST /v1/route``: the decision only (no upstream call).
- ``POST /v1/feedback``: `{"decision_id", "score" in [0, 1], "comment"}` appended to the decision log.
- ``GET /v1/decisions/{decision_id}``: a logged decision with its feedback, read back from the log.
- ``GET /v1/models``, ``GET /healthz``.

Policy rollout: Serve calls `reconfigure(user_config)` with `{"policy": <checkpoint>}` (see
`barp_ray.serving.rollout`); the replica loads the new policy beside the old one and swaps it in whole
(`ActivePolicy`): a request keeps the policy it started with, and its decision logs that policy's version.
"""

# no `from __future__ import annotations`: FastAPI must see real annotations (Request) on the methods
import asyncio
import functools
import hashlib
import json
import logging
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from barp_ray.data.table import prompt_hash
from barp_ray.serving.config import Budget, Preference, ServeAppConfig, UpstreamConfig
from barp_ray.serving.decision_log import DecisionLog, read_decision_log, utcnow
from barp_ray.serving.engine import Choice, RoutingEngine, choose
from barp_ray.serving.schemas import (
    DECISION_ID_PATTERN,
    ApiError,
    ChatCompletionRequest,
    FeedbackRequest,
    RouteRequest,
    prompt_text,
)

logger = logging.getLogger("ray.serve")

PREFERENCE_HEADER = "x-barp-preference"
# @serve.batch batches that may be in flight at once: they queue in the ForwardCoalescer and share a forward
MAX_CONCURRENT_BATCHES = 8
BUDGET_HEADER = "x-barp-budget"

app = FastAPI(
    title="BaRP router",
    description="Preference-conditioned LLM routing (BaRP) with an OpenAI-compatible API.",
    version="1",
)
@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    err = ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
    return JSONResponse(err.body(), status_code=exc.status_code)


@app.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error in %s %s", request.method, request.url.path)
    err = ApiError(500, f"internal error: {type(exc).__name__}", type_="server_error")
    return JSONResponse(err.body(), status_code=500)


# ---- request parsing helpers ----------------------------------------------------------------------------
def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def validation_error(exc: ValidationError, prefix: str = "") -> ApiError:
    """The first pydantic error as a 400 naming the field (`param`), e.g. `preference.cost`."""
    first = exc.errors()[0]
    loc = tuple(p for p in first.get("loc", ()) if p not in ("__root__",))
    # a union of str | list[...] reports the branch names; keep the field path only
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "list"))))
    if prefix:
        param = prefix + ("." + _loc(loc) if loc else "")
    else:
        param = _loc(loc)  # "body" when the error is about the whole object
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return ApiError(400, f"{param}: {msg}{more}", param=param, code="invalid_value")


def api_key_hashes(auth, env: dict[str, str] | None = None) -> set[str]:
    """sha256 hex of every configured key (the env var holds comma-separated keys, the file one per line)."""
    env = os.environ if env is None else env
    keys: list[str] = []
    if auth.api_keys_env and env.get(auth.api_keys_env):
        keys += [k.strip() for k in env[auth.api_keys_env].split(",")]
    if auth.api_keys_file:
        path = Path(auth.api_keys_file)
        if not path.exists():
            raise FileNotFoundError(f"auth.api_keys_file {path} does not exist")
        keys += [line.strip() for line in path.read_text().splitlines() if not line.strip().startswith("#")]
    return {hashlib.sha256(k.encode()).hexdigest() for k in keys if k}


def parse_preference_header(value: str) -> Preference:
    """`quality=0.7,cost=0.3`, `cost=0.3` or a bare number (w_c)."""
    value = value.strip()
    try:
        if "=" not in value:
            return Preference(cost=float(value))
        fields = {}
        for part in value.split(","):
            key, _, number = part.partition("=")
            fields[key.strip()] = float(number)
        return Preference(**fields)
    except ValidationError as exc:
        raise validation_error(exc, PREFERENCE_HEADER) from None
    except (TypeError, ValueError):
        raise ApiError(400, f"{PREFERENCE_HEADER}: expected 'quality=0.7,cost=0.3', 'cost=0.3' or a number in "
                       f"[0, 1] (the cost weight), got {value[:80]!r}", param=PREFERENCE_HEADER) from None


def parse_budget_header(value: str) -> Budget:
    """`max_cost_per_query=0.001`, `max_largest_share=0.2` or a bare number (USD per query)."""
    value = value.strip()
    try:
        if "=" not in value:
            return Budget(max_cost_per_query=float(value))
        key, _, number = value.partition("=")
        return Budget(**{key.strip(): float(number)})
    except ValidationError as exc:
        raise validation_error(exc, BUDGET_HEADER) from None
    except (TypeError, ValueError):
        raise ApiError(400, f"{BUDGET_HEADER}: expected 'max_cost_per_query=0.001', 'max_largest_share=0.2' or "
                       f"a number (USD per query), got {value[:80]!r}", param=BUDGET_HEADER) from None


def short_error(exc: BaseException) -> str:
    """One line about an upstream failure (Ray wraps remote exceptions with their traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip().splitlines()
    line = next((t for t in reversed(text) if t.strip()), "") if text else ""
    return f"{type(exc).__name__}: {line}"[:300]


class ForwardCoalescer:
    """Runs `fn(texts, w_costs)` on one executor thread and merges every batch waiting behind a running forward.

    `@serve.batch` forms the next batch as soon as its wait window closes, even while the previous forward
    still runs, so under load it hands over several small batches in a row. They all wait here, and the
    next forward takes all of them (up to `max_items` prompts): one forward pass per free moment of the
    thread, with no extra waiting when the replica is idle.
    """

    def __init__(self, fn, executor, max_items: int, on_forward=None) -> None:
        self.fn, self.executor, self.max_items, self.on_forward = fn, executor, max_items, on_forward
        self.pending: list[tuple[list[str], list[float], asyncio.Future, Any]] = []
        self.task: asyncio.Task | None = None

    async def run(self, texts: list[str], w_costs: list[float], fn=None) -> tuple[np.ndarray, int]:
        """(probabilities of these prompts, size of the forward pass they were part of).

        `fn` (default: the coalescer's) is the forward to run them with; only prompts with the same `fn` share
        a pass, so during a policy swap each request is still answered by the policy it was decided with.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((list(texts), list(w_costs), future, fn if fn is not None else self.fn))
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            take, n, fn = [], 0, self.pending[0][3]
            while (self.pending and self.pending[0][3] == fn  # one policy per pass (bound methods: == by object)
                   and (not take or n + len(self.pending[0][0]) <= self.max_items)):
                item = self.pending.pop(0)
                if item[2].done():  # cancelled while waiting (client went away)
                    continue
                take.append(item)
                n += len(item[0])
            if not take:
                continue
            texts = [t for item in take for t in item[0]]
            w_costs = [w for item in take for w in item[1]]
            try:
                probs = await loop.run_in_executor(self.executor, fn, texts, w_costs)
            except Exception as exc:  # every waiting request gets the error, none hangs
                for _, _, future, _ in take:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self.on_forward is not None:
                self.on_forward(n)
            start = 0
            for item_texts, _, future, _ in take:
                if not future.done():
                    future.set_result((probs[start : start + len(item_texts)], n))
                start += len(item_texts)


def counts_rejections(endpoint):
    """Count the 4xx answers of an endpoint method in `barp_router_rejected_total` (the signature is kept)."""

    @functools.wraps(endpoint)
    async def wrapper(self, *args, **kwargs):
        try:
            return await endpoint(self, *args, **kwargs)
        except ApiError as exc:
            if 400 <= exc.status < 500:
                self.metrics.rejected.inc(tags={"status": str(exc.status)})
            raise

    return wrapper


@dataclass(eq=False)
class ActivePolicy:
    """The policy a replica routes with and everything derived from it, swapped as one object on a rollout.

    A request takes `router.active` once when it starts and uses that object to the end (forward pass, model
    indices, calibration, logged `policy_version`), so a swap never mixes two policies in one decision.
    """

    engine: RoutingEngine
    available: np.ndarray  # per model of the policy: it has an upstream (the others get probability 0)
    calibration: Any | None  # barp_ray.serving.calibration.Calibration, computed for (or given with) this policy
    calibration_location: str | None
    loaded_at: str

    @property
    def models(self) -> list[str]:
        return self.engine.models

    @property
    def version(self) -> str:
        return self.engine.version

    @property
    def location(self) -> str:
        return self.engine.location


@dataclass(frozen=True)
class RolloutTarget:
    """What a `user_config` asks for: `{"policy", "calibration", "version", "rollout_id"}` (all optional)."""

    policy: str
    calibration: str | None
    version: str | None = None  # expected content hash (`barp rollout` pins what it checked)
    rollout_id: str | None = None

    @classmethod
    def from_user_config(cls, user_config: Any, cfg: ServeAppConfig) -> "RolloutTarget":
        uc = user_config or {}
        if not isinstance(uc, dict):
            raise ValueError(f"user_config: expected a mapping like {{'policy': <checkpoint>}}, got "
                             f"{type(uc).__name__}")
        unknown = sorted(set(uc) - {"policy", "calibration", "version", "rollout_id"})
        if unknown:
            raise ValueError(f"user_config: unknown keys {unknown} (policy, calibration, version, rollout_id)")
        policy = uc.get("policy") or cfg.policy
        if uc.get("policy") and "://" not in str(policy) and not Path(str(policy)).is_absolute():
            raise ValueError(f"user_config.policy: {policy!r} is a relative path; give an absolute path or a URI "
                             "(replicas do not share the deployer's working directory)")
        calibration = uc["calibration"] if uc.get("calibration") is not None else cfg.calibration
        return cls(policy=str(policy), calibration=calibration, version=uc.get("version"),
                   rollout_id=uc.get("rollout_id"))


@dataclass
class Decision:
    active: ActivePolicy  # the policy that decided (and that the models indices below refer to)
    decision_id: str
    text: str
    w_cost: float
    preference_source: str
    budget: Budget | None
    probs: np.ndarray
    choice: Choice
    exploration: str
    decision_latency_ms: float
    batch_size: int
    forced: bool
    started: float
    prompt_id: str | None = None
    attempts: list[dict] = field(default_factory=list)


def utcnow_iso() -> str:
    return utcnow().isoformat(timespec="milliseconds")


def decision_json(frame) -> dict:
    """The first row of a `read_decision_log` frame as plain JSON."""
    return {k: _jsonable(v) for k, v in frame.iloc[0].to_dict().items()}


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


# ---- the deployment --------------------------------------------------------------------------------------
# (module helpers it uses are defined above: Serve pickles the ingress class by value, with the globals seen
# when it is decorated)
@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(app)
class BarpRouter:
    """Loads the checkpoint (MiniLM + policy) and routes each request to one upstream DeploymentHandle."""

    def __init__(self, config: dict, upstreams: dict[str, DeploymentHandle]) -> None:
        from barp_ray.serving.metrics import RouterMetrics

        cfg = ServeAppConfig.model_validate(config)
        self.cfg = cfg
        if cfg.router.torch_threads:
            import torch

            torch.set_num_threads(cfg.router.torch_threads)
        if not upstreams:
            raise ValueError("no upstreams: bind at least one candidate model")
        self.upstreams = dict(upstreams)
        self.stream_handles = {m: h.options(stream=True) for m, h in self.upstreams.items()}
        self.upstream_cfg: dict[str, UpstreamConfig] = {u.model: u for u in cfg.upstreams}

        self.key_hashes = api_key_hashes(cfg.auth) if cfg.auth.enabled else set()
        if cfg.auth.enabled and not self.key_hashes:
            raise ValueError(
                f"auth is enabled but no API key is configured: set ${cfg.auth.api_keys_env} (comma-separated "
                "keys) or auth.api_keys_file, or set auth.enabled: false for a local trial"
            )
        self.default_budget = cfg.default_budget

        try:
            context = serve.get_replica_context()
            self.replica = context.replica_id.unique_id
            # the user_config this replica starts with (a rolled-out policy, after a restart or a scale-up):
            # load that one now, so that Serve's first reconfigure() call finds it loaded and loads nothing
            start_config = getattr(context, "_deployment_config", None)
            start_config = getattr(start_config, "user_config", None)
        except Exception:  # outside Serve (unit use)
            self.replica = uuid.uuid4().hex[:8]
            start_config = None
        self._start_target = RolloutTarget.from_user_config(start_config, cfg)
        self.policy_loads = 0  # policies this replica loaded (1 after start: the first reconfigure loads nothing)
        self.active: ActivePolicy = self._load_active(self._start_target)
        self.rollout: dict = {"id": self._start_target.rollout_id, "ok": True, "policy": self.active.location,
                              "version": self.active.version, "error": None, "at": self.active.loaded_at}
        self._reload_lock = asyncio.Lock()

        # expected cost per model: config > calibration > the upstream's own (asked on first use)
        self.mean_costs: dict[str, float | None] = {}
        self._set_mean_costs(self.active)
        self._costs_asked = False
        self._costs_lock = asyncio.Lock()

        self.log: DecisionLog | None = None
        if cfg.decision_log.enabled:
            lc = cfg.decision_log
            self.log = DecisionLog(lc.path, writer=self.replica, flush_rows=lc.flush_rows,
                                   flush_interval_s=lc.flush_interval_s, max_buffer_rows=lc.max_buffer_rows)
            self.log.write_policy(self.active.version, self.active.engine.spec.model_dump(mode="json"))
        self._flusher: asyncio.Task | None = None
        self._dropped_reported = 0

        seed = cfg.exploration.seed
        self.rng = np.random.default_rng(None if seed is None else [seed, int(hashlib.sha256(
            self.replica.encode()).hexdigest()[:8], 16)])
        self.metrics = RouterMetrics()
        self.metrics.set_policy(self.active.version, None)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="barp-forward")
        if cfg.router.torch_threads:
            import torch

            self._executor.submit(torch.set_num_threads, cfg.router.torch_threads).result()
        self.coalescer = None
        if cfg.batching.enabled and cfg.batching.coalesce:
            self.coalescer = ForwardCoalescer(None, self._executor, cfg.batching.max_forward_size,
                                              on_forward=lambda n: self.metrics.batch_size.observe(n))
        self._forward_batched.set_max_batch_size(cfg.batching.max_batch_size)
        self._forward_batched.set_batch_wait_timeout_s(cfg.batching.batch_wait_timeout_s)
        self._executor.submit(self.active.engine.forward, ["warm up the encoder"], [0.5]).result()
        logger.info("BaRP router ready: policy %s (%s), %d upstreams, batching=%s, exploration=%s",
                    self.active.location, self.active.version, len(self.upstreams), cfg.batching.enabled,
                    cfg.exploration.mode)

    # ---- policy loading and rollout -------------------------------------------------------------
    def _load_active(self, target: RolloutTarget, current: ActivePolicy | None = None) -> ActivePolicy:
        """Load and check a policy (blocking: call it off the event loop once serving). Raises if unusable.

        The checks are those of a fresh start: every bound upstream must be a model of the policy, the
        encoder width must match, a calibration must cover the same models, and `target.version` (if given)
        must be the checkpoint's content hash. The encoder object of `current` is reused when the new policy
        names the same encoder, so a rollout loads only the policy weights.
        """
        from barp_ray.serving.engine import read_policy_spec

        cfg = self.cfg
        spec = read_policy_spec(target.policy)  # cheap: refuse a wrong checkpoint before loading weights
        unknown = sorted(set(self.upstreams) - set(spec["models"]))
        if unknown:
            raise ValueError(f"upstreams {unknown} are not models of the policy {spec['models']} ({target.policy}); "
                             "every bound upstream must be a candidate model of the policy")
        encoder_name = cfg.encoder or spec["encoder"]
        shared = current.engine.encoder if current is not None and current.engine.encoder_name == encoder_name else None
        engine = RoutingEngine(target.policy, cfg.encoder, encoder_model=shared)
        self.policy_loads += 1
        if target.version and engine.version != target.version:
            raise ValueError(f"{target.policy} has version {engine.version}, not the expected {target.version} "
                             "(the checkpoint changed after it was checked)")
        missing = [m for m in engine.models if m not in self.upstreams]
        if missing:
            logger.warning("models without an upstream are never routed to: %s", missing)

        calibration = None
        if target.calibration:
            from barp_ray.serving.calibration import load_calibration

            calibration = load_calibration(target.calibration, target.policy, cfg.calibration_grid_points,
                                           policy=engine.policy)
            if calibration.models != engine.models:
                raise ValueError(f"calibration {target.calibration} is for models {calibration.models}, the "
                                 f"policy has {engine.models}")
            if calibration.policy_version not in (None, engine.version):
                logger.warning("calibration %s was computed for policy %s, not %s: budgets map to w_c with a "
                               "table of another policy (give a matching calibration with the rollout)",
                               target.calibration, calibration.policy_version, engine.version)
        if self.default_budget is not None and calibration is None:
            raise ValueError("default_budget needs `calibration` (a `barp calibrate` JSON or a shard folder)")
        return ActivePolicy(engine=engine, available=np.array([m in self.upstreams for m in engine.models]),
                            calibration=calibration, calibration_location=target.calibration, loaded_at=utcnow_iso())

    def _set_mean_costs(self, active: ActivePolicy) -> None:
        for m in active.models:
            self.mean_costs.setdefault(m, None)
        if active.calibration is not None:
            self.mean_costs.update(active.calibration.model_mean_cost)
        for m, u in self.upstream_cfg.items():
            if u.mean_cost_usd is not None:
                self.mean_costs[m] = u.mean_cost_usd

    async def reconfigure(self, user_config: dict | None) -> None:
        """Serve's hook for `user_config` (at start and on every change, on the running replica).

        `{"policy": <checkpoint folder or URI>, "calibration": ..., "version": ..., "rollout_id": ...}`; a
        missing policy / calibration means the app config's. The new policy is loaded and warmed up beside
        the old one while requests keep being served, then swapped in. A policy that fails to load or does
        not fit (see `_load_active`) is refused: the replica keeps serving the old one and reports the error
        in `rollout_status()` and /healthz. It does not raise: Serve answers a failed reconfigure by stopping
        the replica and starting one with the new config (which would fail too), i.e. an outage.
        """
        async with self._reload_lock:
            try:
                target = RolloutTarget.from_user_config(user_config, self.cfg)
            except ValueError as exc:
                self._refused(user_config or {}, exc)
                return
            if target == self._start_target:  # the call at replica start: __init__ loaded exactly this
                self._start_target = None
                return
            self._start_target = None
            current = self.active
            started = time.perf_counter()
            try:
                if target.policy == current.location and target.calibration == current.calibration_location:
                    from barp_ray.serving.engine import policy_version

                    same = await asyncio.to_thread(policy_version, target.policy)
                    if same == current.version and target.version in (None, same):
                        self.rollout = {"id": target.rollout_id, "ok": True, "policy": current.location,
                                        "version": current.version, "error": None, "at": utcnow_iso()}
                        return
                new = await asyncio.to_thread(self._load_active, target, current)
                # warm up on the forward thread (it also serializes with the old policy's forwards)
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, new.engine.forward, ["warm up the new policy"], [0.5])
                if self.log is not None:
                    await asyncio.to_thread(self.log.write_policy, new.version, new.engine.spec.model_dump(mode="json"))
            except Exception as exc:  # noqa: BLE001 - refused, reported, and the old policy keeps serving
                self._refused(user_config or {}, exc)
                return
            self._set_mean_costs(new)
            self.active = new  # the swap: requests from now on take `new`; running ones keep theirs
            self.rollout = {"id": target.rollout_id, "ok": True, "policy": new.location, "version": new.version,
                            "error": None, "at": new.loaded_at}
            self.metrics.set_policy(new.version, current.version)
            self.metrics.policy_rollouts.inc(tags={"outcome": "ok"})
            logger.info("policy rollout: %s -> %s (%s) in %.2fs", current.version, new.version, new.location,
                        time.perf_counter() - started)

    def _refused(self, user_config: dict, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        self.rollout = {"id": user_config.get("rollout_id") if isinstance(user_config, dict) else None, "ok": False,
                        "policy": user_config.get("policy") if isinstance(user_config, dict) else None,
                        "version": self.active.version, "error": error, "at": utcnow_iso()}
        self.metrics.policy_rollouts.inc(tags={"outcome": "refused"})
        logger.error("policy rollout refused, still serving %s (%s): %s", self.active.version, self.active.location,
                     error)

    async def rollout_status(self) -> dict:
        """This replica's policy and last rollout (for `barp rollout`, through a DeploymentHandle)."""
        a = self.active
        return {"replica": self.replica, "pid": os.getpid(), "policy": a.location, "policy_version": a.version,
                "models": list(a.models), "upstreams": sorted(self.upstreams), "encoder": a.engine.encoder_name,
                "calibration": a.calibration_location, "loaded_at": a.loaded_at, "policy_loads": self.policy_loads,
                "rollout": dict(self.rollout)}

    # ---- lifecycle ------------------------------------------------------------------------------
    async def __del__(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        if self.log is not None:
            await asyncio.to_thread(self.log.flush)
        self._executor.shutdown(wait=False)

    def _ensure_flusher(self) -> None:
        if self.log is not None and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        period = min(1.0, self.cfg.decision_log.flush_interval_s / 2)
        while True:
            await asyncio.sleep(period)
            try:
                if self.log.due():
                    await asyncio.to_thread(self.log.flush)
                if self.log.dropped > self._dropped_reported:
                    self.metrics.log_dropped.inc(self.log.dropped - self._dropped_reported)
                    self._dropped_reported = self.log.dropped
            except Exception:  # never let the flusher die silently
                logger.exception("decision log flush failed")

    # ---- request checks -------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        if not self.cfg.auth.enabled:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or hashlib.sha256(key.strip().encode()).hexdigest() not in self.key_hashes:
            raise ApiError(
                401, "missing or invalid API key: send 'Authorization: Bearer <key>'", code="invalid_api_key",
                type_="authentication_error", headers={"WWW-Authenticate": "Bearer"},
            )

    async def _parse(self, request: Request, model: type[BaseModel]) -> Any:
        declared = request.headers.get("content-length")
        limit = self.cfg.limits.max_body_bytes
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"body: {declared} bytes, over the limit of {limit}", param="body",
                           code="body_too_large")
        raw = await request.body()
        if len(raw) > limit:
            raise ApiError(413, f"body: {len(raw)} bytes, over the limit of {limit}", param="body",
                           code="body_too_large")
        try:
            data = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"body: not valid JSON ({exc})", param="body", code="invalid_json") from None
        except RecursionError:
            raise ApiError(400, "body: JSON nested too deeply", param="body", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "body: expected a JSON object", param="body", code="invalid_json")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None

    def _check_messages(self, messages) -> str:
        limits = self.cfg.limits
        if not messages:
            raise ApiError(400, "messages: must hold at least one message", param="messages")
        if len(messages) > limits.max_messages:
            raise ApiError(400, f"messages: {len(messages)} messages, over the limit of {limits.max_messages}",
                           param="messages")
        text = prompt_text(messages)
        if not text.strip():
            raise ApiError(400, "messages: no text content to route on", param="messages")
        if len(text) > limits.max_prompt_chars:
            raise ApiError(400, f"messages: the prompt is {len(text)} characters, over the limit of "
                           f"{limits.max_prompt_chars}", param="messages", code="prompt_too_long")
        return text

    def _forced_model(self, active: ActivePolicy, model: str | None) -> int | None:
        if model is None or model in self.cfg.router_model_names or model == self.cfg.name:
            return None
        if model in self.upstreams:
            return active.models.index(model)  # every upstream is a model of every policy a replica accepts
        hint = f"use '{self.cfg.router_model_names[0]}' to let the router choose, or one of {sorted(self.upstreams)}"
        if model in active.models:
            raise ApiError(404, f"model: {model!r} has no upstream in this deployment; {hint}", param="model",
                           code="model_not_found")
        raise ApiError(404, f"model: unknown model {model!r}; {hint}", param="model", code="model_not_found")

    def _resolve_w(self, active: ActivePolicy, request: Request, preference: Preference | None,
                   budget: Budget | None) -> tuple[float, str, Budget | None]:
        """(w_c, where it came from, the budget if one was used)."""
        if preference is not None and budget is not None:
            raise ApiError(400, "preference: give a preference or a budget, not both", param="preference")
        header_pref = request.headers.get(PREFERENCE_HEADER)
        header_budget = request.headers.get(BUDGET_HEADER)
        if preference is None and budget is None:
            if header_pref is not None and header_budget is not None:
                raise ApiError(400, f"{PREFERENCE_HEADER}: give a preference or a budget header, not both",
                               param=PREFERENCE_HEADER)
            if header_pref is not None:
                return parse_preference_header(header_pref).w_cost, "header", None
            if header_budget is not None:
                budget = parse_budget_header(header_budget)
        elif preference is not None:
            return preference.w_cost, "body", None
        if budget is not None:
            return self._budget_w(active, budget, "budget"), "budget", budget
        if self.default_budget is not None:
            return (self._budget_w(active, self.default_budget, "default_budget"), "default_budget",
                    self.default_budget)
        return self.cfg.default_preference.w_cost, "default", None

    def _budget_w(self, active: ActivePolicy, budget: Budget, param: str) -> float:
        if active.calibration is None:
            raise ApiError(400, f"{param}: this router has no calibration table, so it cannot turn a budget into "
                           "a preference; give `preference` instead (operators: set `calibration`)", param=param)
        return float(active.calibration.w_cost_for(budget))

    @staticmethod
    def _budget_met(active: ActivePolicy, budget: Budget | None) -> bool | None:
        return None if budget is None or active.calibration is None else bool(active.calibration.choose(budget)[1])

    # ---- the decision ---------------------------------------------------------------------------
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002, max_concurrent_batches=MAX_CONCURRENT_BATCHES)
    async def _forward_batched(self, texts: list[str], w_costs: list[float], actives: list[ActivePolicy]
                               ) -> list[tuple[np.ndarray, int]]:
        # a batch formed during a policy swap holds requests of both policies: each runs on its own
        groups: dict[int, list[int]] = {}
        for i, active in enumerate(actives):
            groups.setdefault(id(active), []).append(i)
        out: list[tuple[np.ndarray, int]] = [None] * len(texts)  # type: ignore[list-item]
        for idx in groups.values():
            engine = actives[idx[0]].engine
            part_texts, part_w = [texts[i] for i in idx], [w_costs[i] for i in idx]
            if self.coalescer is not None:
                probs, size = await self.coalescer.run(part_texts, part_w, engine.forward)
            else:
                probs = await asyncio.get_running_loop().run_in_executor(
                    self._executor, engine.forward, part_texts, part_w)
                size = len(part_texts)
                self.metrics.batch_size.observe(size)
            for j, i in enumerate(idx):
                out[i] = (probs[j], size)
        return out

    async def _forward(self, active: ActivePolicy, text: str, w_cost: float) -> tuple[np.ndarray, int]:
        if self.cfg.batching.enabled:
            return await self._forward_batched(text, w_cost, active)
        probs = await asyncio.get_running_loop().run_in_executor(
            self._executor, active.engine.forward, [text], [w_cost])
        self.metrics.batch_size.observe(1)
        return probs[0], 1

    async def _decide(self, request: Request, body, text: str, started: float) -> Decision:
        active = self.active  # this request's policy, whatever a rollout swaps in meanwhile
        forced = self._forced_model(active, body.model)
        w_cost, source, budget = self._resolve_w(active, request, body.preference, body.budget)
        probs, batch_size = await self._forward(active, text, w_cost)
        available = active.available
        probs = np.where(available, probs, 0.0)
        probs = probs / probs.sum() if probs.sum() > 0 else available / available.sum()
        ex = self.cfg.exploration
        choice = choose(probs, ex.mode, ex.epsilon, self.rng, forced)
        latency = (time.perf_counter() - started) * 1000.0
        self.metrics.decision_latency.observe(latency, tags={"batched": str(self.cfg.batching.enabled).lower()})
        return Decision(
            active=active, decision_id=uuid.uuid4().hex, text=text, w_cost=w_cost, preference_source=source,
            budget=budget, probs=probs, choice=choice, exploration="forced" if forced is not None else ex.mode,
            decision_latency_ms=latency, batch_size=batch_size, forced=forced is not None, started=started,
            prompt_id=body.prompt_id,
        )

    async def _ensure_mean_costs(self) -> None:
        if self._costs_asked or all(v is not None for v in self.mean_costs.values()):
            return
        async with self._costs_lock:
            if self._costs_asked:
                return
            self._costs_asked = True
            todo = [m for m, v in self.mean_costs.items() if v is None and m in self.upstreams]

            async def ask(m: str):
                try:
                    return m, await asyncio.wait_for(self._await(self.upstreams[m].info.remote()), 10.0)
                except Exception as exc:
                    logger.warning("upstream %s: info() failed: %s", m, short_error(exc))
                    return m, {}

            for m, info in await asyncio.gather(*(ask(m) for m in todo)):
                if info.get("mean_cost_usd") is not None:
                    self.mean_costs[m] = float(info["mean_cost_usd"])

    def _expected_cost(self, models: list[str], probs: np.ndarray) -> float | None:
        costs = [self.mean_costs.get(m) for m in models]
        used = [(p, c) for p, c in zip(probs, costs, strict=True) if p > 0]
        if any(c is None for _, c in used):
            return None
        return float(sum(p * c for p, c in used))

    def decision_info(self, d: Decision, served: int | None = None, cost: float | None = None) -> dict:
        models = d.active.models
        chosen = models[d.choice.index]
        return {
            "decision_id": d.decision_id,
            "model": chosen,
            "served_model": None if served is None else models[served],
            "w_cost": d.w_cost,
            "preference": {"quality": 1.0 - d.w_cost, "cost": d.w_cost},
            "preference_source": d.preference_source,
            "budget": None if d.budget is None else d.budget.model_dump(exclude_none=True),
            "budget_met": self._budget_met(d.active, d.budget),
            "probabilities": {m: float(p) for m, p in zip(models, d.probs, strict=True)},
            "probability": float(d.probs[d.choice.index]),
            "propensity": d.choice.propensity,
            "exploration": d.exploration,
            "explored": d.choice.explored,
            "ranking": [models[i] for i in d.choice.ranking],
            "expected_cost_usd": self._expected_cost(models, d.probs),
            "chosen_expected_cost_usd": self.mean_costs.get(chosen),
            "cost_usd": cost,
            "fallback": {
                "count": sum(1 for a in d.attempts if not a["ok"]) if served is not None else len(d.attempts),
                "attempts": d.attempts,
            },
            "policy_version": d.active.version,
            "decision_latency_ms": round(d.decision_latency_ms, 3),
        }

    # ---- upstream calls -------------------------------------------------------------------------
    @staticmethod
    async def _await(response):
        return await response

    def _candidates(self, d: Decision) -> list[int]:
        return d.choice.ranking[: 1 + self.cfg.fallback.max_fallbacks]

    def _failed(self, d: Decision, model: str, reason: str, error: str, started: float, last: bool) -> None:
        d.attempts.append({"model": model, "ok": False, "reason": reason, "error": error,
                           "latency_ms": round((time.perf_counter() - started) * 1000.0, 3)})
        if not last:
            self.metrics.fallbacks.inc(tags={"model": model, "reason": reason})
        logger.warning("upstream %s failed (%s): %s", model, reason, error)

    async def _complete(self, d: Decision, payload: dict) -> tuple[int | None, dict | None]:
        candidates = self._candidates(d)
        for n, idx in enumerate(candidates):
            model = d.active.models[idx]
            timeout = self.upstream_cfg[model].timeout_s if model in self.upstream_cfg else 30.0
            started = time.perf_counter()
            response = self.upstreams[model].complete.remote(payload)
            try:
                result = await asyncio.wait_for(self._await(response), timeout)
            except asyncio.TimeoutError:
                response.cancel()
                self._failed(d, model, "timeout", f"no answer within {timeout:g}s", started, n == len(candidates) - 1)
                continue
            except Exception as exc:
                self._failed(d, model, "error", short_error(exc), started, n == len(candidates) - 1)
                continue
            d.attempts.append({"model": model, "ok": True, "reason": None, "error": None,
                               "latency_ms": round((time.perf_counter() - started) * 1000.0, 3)})
            return idx, result
        return None, None

    async def _open_stream(self, d: Decision, payload: dict):
        candidates = self._candidates(d)
        for n, idx in enumerate(candidates):
            model = d.active.models[idx]
            timeout = self.upstream_cfg[model].timeout_s if model in self.upstream_cfg else 30.0
            started = time.perf_counter()
            gen = self.stream_handles[model].stream.remote(payload)
            try:
                first = await asyncio.wait_for(gen.__anext__(), timeout)
            except StopAsyncIteration:
                first = {"done": True, "finish_reason": "stop"}
            except asyncio.TimeoutError:
                gen.cancel()
                self._failed(d, model, "timeout", f"no first chunk within {timeout:g}s", started,
                             n == len(candidates) - 1)
                continue
            except Exception as exc:
                gen.cancel()
                self._failed(d, model, "error", short_error(exc), started, n == len(candidates) - 1)
                continue
            d.attempts.append({"model": model, "ok": True, "reason": None, "error": None,
                               "latency_ms": round((time.perf_counter() - started) * 1000.0, 3)})
            return idx, gen, first, timeout
        return None, None, None, None

    def _all_failed(self, d: Decision) -> ApiError:
        detail = "; ".join(f"{a['model']}: {a['error']}" for a in d.attempts)
        return ApiError(502, f"all {len(d.attempts)} upstreams tried failed ({detail}); decision "
                        f"{d.decision_id}", code="upstream_failed", type_="upstream_error")

    # ---- logging --------------------------------------------------------------------------------
    def _record(self, d: Decision, endpoint: str, status: str, served: int | None = None,
                result: dict | None = None, upstream_ms: float | None = None, stream: bool = False) -> None:
        result = result or {}
        models = d.active.models
        chosen = models[d.choice.index]
        cost = result.get("cost_usd")
        self.metrics.requests.inc(tags={"model": chosen, "endpoint": endpoint, "status": status})
        if served is not None:
            self.metrics.served.inc(tags={"model": models[served]})
            if cost is not None and math.isfinite(cost):
                self.metrics.cost.inc(float(cost), tags={"model": models[served]})
        if self.log is None:
            return
        prompt_id = d.prompt_id or result.get("replay_prompt_id") or f"h:{prompt_hash(d.text)}"
        row = {
            "decision_id": d.decision_id, "decided_at": utcnow(), "endpoint": endpoint, "prompt_id": prompt_id,
            "prompt_hash": prompt_hash(d.text), "prompt": d.text if self.cfg.decision_log.log_prompt_text else None,
            "prompt_chars": len(d.text), "w_cost": d.w_cost, "preference_source": d.preference_source,
            "budget_kind": None, "budget_value": None, "policy_version": d.active.version,
            "chosen_model": chosen, "chosen_index": d.choice.index,
            "probability": float(d.probs[d.choice.index]), "propensity": d.choice.propensity,
            "exploration": d.exploration, "explored": d.choice.explored,
            "probabilities": [float(p) for p in d.probs], "expected_cost_usd": self._expected_cost(models, d.probs),
            "served_model": None if served is None else models[served], "served_index": served,
            "status": status, "fallback_count": sum(1 for a in d.attempts if not a["ok"]),
            "attempts": json.dumps(d.attempts), "cost_usd": cost,
            "prompt_tokens": result.get("prompt_tokens"), "completion_tokens": result.get("completion_tokens"),
            "decision_latency_ms": d.decision_latency_ms, "upstream_latency_ms": upstream_ms,
            "total_latency_ms": (time.perf_counter() - d.started) * 1000.0, "stream": stream,
            "batch_size": d.batch_size, "replica": self.replica,
        }
        if d.budget is not None:
            kind = "max_cost_per_query" if d.budget.max_cost_per_query is not None else "max_largest_share"
            row["budget_kind"], row["budget_value"] = kind, getattr(d.budget, kind)
        self.log.append(row)

    # ---- endpoints ------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    @counts_rejections
    async def chat_completions(self, request: Request):
        started = time.perf_counter()
        self._ensure_flusher()
        self._authorize(request)
        body: ChatCompletionRequest = await self._parse(request, ChatCompletionRequest)
        text = self._check_messages(body.messages)
        d = await self._decide(request, body, text, started)
        await self._ensure_mean_costs()
        payload = {
            "messages": [m.model_dump(exclude_none=True) for m in body.messages],
            "params": body.upstream_params(), "request_id": d.decision_id,
        }
        if body.stream:
            return await self._stream_response(d, payload, body)
        up_started = time.perf_counter()
        served, result = await self._complete(d, payload)
        upstream_ms = (time.perf_counter() - up_started) * 1000.0
        if served is None:
            self._record(d, "chat", "upstream_failed", upstream_ms=upstream_ms)
            raise self._all_failed(d)
        status = "ok" if served == d.choice.index else "fallback"
        self._record(d, "chat", status, served, result, upstream_ms)
        served_model = d.active.models[served]
        pt, ct = result.get("prompt_tokens"), result.get("completion_tokens")
        content = {
            "id": f"chatcmpl-{d.decision_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served_model,
            "choices": [{
                "index": 0, "message": {"role": "assistant", "content": result.get("text", "")},
                "finish_reason": result.get("finish_reason") or "stop", "logprobs": None,
            }],
            "usage": None if pt is None else {"prompt_tokens": pt, "completion_tokens": ct or 0,
                                              "total_tokens": pt + (ct or 0)},
            "barp": self.decision_info(d, served, result.get("cost_usd")),
        }
        return JSONResponse(content, headers={"x-barp-decision-id": d.decision_id, "x-barp-model": served_model})

    async def _stream_response(self, d: Decision, payload: dict, body: ChatCompletionRequest):
        up_started = time.perf_counter()
        served, gen, first, timeout = await self._open_stream(d, payload)
        if served is None:
            self._record(d, "chat", "upstream_failed", upstream_ms=(time.perf_counter() - up_started) * 1000.0,
                         stream=True)
            raise self._all_failed(d)
        served_model = d.active.models[served]
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        created = int(time.time())
        chunk_id = f"chatcmpl-{d.decision_id}"

        def event(delta: dict, finish: str | None = None, **extra) -> str:
            chunk = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": served_model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
            return f"data: {json.dumps(chunk)}\n\n"

        async def sse():
            status, last = "ok" if served == d.choice.index else "fallback", {}
            try:
                yield event({"role": "assistant", "content": ""}, barp=self.decision_info(d, served))
                chunk = first
                while True:
                    if chunk.get("done"):
                        last = chunk
                        break
                    if chunk.get("delta"):
                        yield event({"content": chunk["delta"]})
                    try:
                        chunk = await asyncio.wait_for(gen.__anext__(), timeout)
                    except StopAsyncIteration:
                        break
                info = self.decision_info(d, served, last.get("cost_usd"))
                yield event({}, last.get("finish_reason") or "stop", barp=info)
                pt, ct = last.get("prompt_tokens"), last.get("completion_tokens")
                if include_usage:
                    usage = None if pt is None else {"prompt_tokens": pt, "completion_tokens": ct or 0,
                                                     "total_tokens": pt + (ct or 0)}
                    yield (f"data: {json.dumps({'id': chunk_id, 'object': 'chat.completion.chunk', 'created': created, 'model': served_model, 'choices': [], 'usage': usage})}\n\n")  # noqa: E501
                yield "data: [DONE]\n\n"
            except (asyncio.TimeoutError, Exception) as exc:  # the upstream broke mid-stream: tell the client
                status = "stream_error"
                message = "upstream stopped sending" if isinstance(exc, asyncio.TimeoutError) else short_error(exc)
                d.attempts.append({"model": served_model, "ok": False, "reason": "stream_error", "error": message,
                                   "latency_ms": round((time.perf_counter() - up_started) * 1000.0, 3)})
                gen.cancel()
                err = ApiError(502, f"upstream {served_model} failed mid-stream: {message}", code="stream_error",
                               type_="upstream_error")
                yield f"data: {json.dumps(err.body())}\n\n"
            finally:
                self._record(d, "chat", status, served, last, (time.perf_counter() - up_started) * 1000.0,
                             stream=True)

        headers = {"x-barp-decision-id": d.decision_id, "x-barp-model": served_model, "Cache-Control": "no-cache"}
        return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)

    @app.post("/v1/route")
    @counts_rejections
    async def route(self, request: Request):
        started = time.perf_counter()
        self._ensure_flusher()
        self._authorize(request)
        body: RouteRequest = await self._parse(request, RouteRequest)
        if body.messages is not None and body.prompt is not None:
            raise ApiError(400, "messages: give messages or prompt, not both", param="messages")
        if body.prompt is not None:
            from barp_ray.serving.schemas import ChatMessage

            if not body.prompt.strip():
                raise ApiError(400, "prompt: empty", param="prompt")
            messages = [ChatMessage(role="user", content=body.prompt)]
        else:
            messages = body.messages or []
        text = self._check_messages(messages)
        d = await self._decide(request, body, text, started)
        await self._ensure_mean_costs()
        self._record(d, "route", "route_only")
        return JSONResponse(self.decision_info(d), headers={"x-barp-decision-id": d.decision_id})

    @app.post("/v1/feedback")
    @counts_rejections
    async def feedback(self, request: Request):
        self._ensure_flusher()
        self._authorize(request)
        body: FeedbackRequest = await self._parse(request, FeedbackRequest)
        if body.comment is not None and len(body.comment) > self.cfg.limits.max_comment_chars:
            raise ApiError(400, f"comment: {len(body.comment)} characters, over the limit of "
                           f"{self.cfg.limits.max_comment_chars}", param="comment")
        if self.log is None:
            raise ApiError(409, "decision_id: the decision log is disabled on this router", param="decision_id",
                           code="log_disabled")
        row = {"decision_id": body.decision_id, "score": body.score, "comment": body.comment,
               "recorded_at": utcnow(), "replica": self.replica}
        durable = self.cfg.decision_log.feedback_sync
        if durable:
            await asyncio.to_thread(self.log.flush)  # the decision itself, if this replica still buffers it
            await asyncio.to_thread(self.log.write_feedback, [row])
        else:  # buffered with the decisions (at most flush_interval_s late; lost if the replica crashes)
            self.log.append_feedback(row)
        return {"decision_id": body.decision_id, "score": body.score, "recorded": True, "durable": durable}

    @app.get("/v1/decisions/{decision_id}")
    @counts_rejections
    async def get_decision(self, decision_id: str, request: Request):
        self._authorize(request)
        import re

        if not re.match(DECISION_ID_PATTERN, decision_id):
            raise ApiError(400, "decision_id: expected 32 lowercase hex digits", param="decision_id")
        if self.log is None:
            raise ApiError(409, "decision_id: the decision log is disabled on this router", param="decision_id")
        await asyncio.to_thread(self.log.flush)
        frame = await asyncio.to_thread(read_decision_log, self.log.uri, decision_id)
        if frame.empty:
            raise ApiError(404, f"decision_id: {decision_id} is not in the log (yet: other replicas flush every "
                           f"{self.cfg.decision_log.flush_interval_s:g}s)", param="decision_id", code="not_found")
        return JSONResponse(decision_json(frame))

    @app.get("/v1/models")
    @counts_rejections
    async def list_models(self, request: Request):
        self._authorize(request)
        created = int(time.time())
        active = self.active
        data = [{"id": self.cfg.router_model_names[0], "object": "model", "created": created, "owned_by": "barp",
                 "barp": {"router": True, "policy_version": active.version}}]
        for m in active.models:
            if m in self.upstreams:
                kind = self.upstream_cfg[m].kind if m in self.upstream_cfg else "custom"
                data.append({"id": m, "object": "model", "created": created, "owned_by": f"barp-upstream-{kind}"})
        return {"object": "list", "data": data}

    @app.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "replica": self.replica, "policy_version": self.active.version,
                "policy_loaded_at": self.active.loaded_at,
                "last_rollout": {"id": self.rollout["id"], "ok": self.rollout["ok"], "at": self.rollout["at"]},
                "models": len(self.upstreams), "batching": self.cfg.batching.enabled,
                "log_buffered": self.log.buffered if self.log else 0}

    def check_health(self) -> None:
        if self._executor._shutdown:  # noqa: SLF001
            raise RuntimeError("forward executor is shut down")
