"""The sections of the Serve router app's config, one pydantic model each (composed by `ServeAppConfig`).

Preferences and budgets (shared with the HTTP schemas), the upstreams (replay or OpenAI-compatible), the
router deployment's resources / autoscaling, batching, exploration, fallback, auth, rate limits, request
limits and the decision log. Every section refuses unknown fields.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- preferences and budgets (shared with the HTTP schemas) ---------------------------------------------
PREFERENCE_TOLERANCE = 1e-6


class Preference(_Strict):
    """w = (w_q, w_c) on the simplex. Give both (they must sum to 1) or one (the other is 1 minus it)."""

    quality: float | None = Field(default=None, description="w_q in [0, 1]")
    cost: float | None = Field(default=None, description="w_c in [0, 1]")

    @model_validator(mode="after")
    def _on_simplex(self) -> Preference:
        q, c = self.quality, self.cost
        if q is None and c is None:
            raise ValueError('give quality and/or cost, e.g. {"quality": 0.7, "cost": 0.3}')
        for name, value in (("quality", q), ("cost", c)):
            if value is None:
                continue
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number (got {value})")
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (got {value})")
            if value > 1:
                raise ValueError(f"{name} must be <= 1 (got {value})")
        if q is not None and c is not None and abs(q + c - 1.0) > PREFERENCE_TOLERANCE:
            raise ValueError(f"quality + cost must sum to 1 (got {q} + {c} = {q + c:g})")
        return self

    @property
    def w_cost(self) -> float:
        return float(self.cost) if self.cost is not None else 1.0 - float(self.quality)


class Budget(_Strict):
    """A budget instead of a preference, turned into w_c by the calibration table (`barp calibrate`)."""

    max_cost_per_query: float | None = Field(default=None, description="USD: expected mean cost per query")
    max_largest_share: float | None = Field(default=None, description="share of queries sent to the largest model")

    @model_validator(mode="after")
    def _exactly_one(self) -> Budget:
        given = [n for n in ("max_cost_per_query", "max_largest_share") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of max_cost_per_query (USD) or max_largest_share (0..1)")
        value = getattr(self, given[0])
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{given[0]} must be a finite number >= 0 (got {value})")
        if given[0] == "max_largest_share" and value > 1:
            raise ValueError(f"max_largest_share must be <= 1 (got {value})")
        return self


# ---- upstreams ------------------------------------------------------------------------------------------
class ReplaySettings(_Strict):
    """Answer RouterBench prompts with the model's recorded response and cost (offline, no LLM)."""

    data: str | None = Field(default=None, description="raw RouterBench logs; default $BARP_DATA_DIR")
    on_miss: Literal["placeholder", "error"] = Field(
        default="placeholder",
        description="prompt not in the data: answer a placeholder at the model's mean cost, or fail",
    )
    error_rate: float = Field(default=0.0, ge=0, le=1, description="simulated failure rate (chaos / tests)")
    latency_s: float = Field(default=0.0, ge=0, description="simulated latency before answering")
    stream_chunk_chars: int = Field(default=16, ge=1, description="characters per streamed chunk")
    stream_delay_s: float = Field(default=0.0, ge=0, description="pause between streamed chunks")
    allow_pickle: bool = Field(default=False, description="read .pkl replay data (runs code from the file)")


class OpenAISettings(_Strict):
    """Any OpenAI-compatible chat endpoint: vLLM, Ray Serve LLM, a hosted API."""

    base_url: str = Field(description="e.g. http://127.0.0.1:8001/v1 or https://api.openai.com/v1")
    model_name: str | None = Field(default=None, description="model name the endpoint knows (default: model)")
    api_key_env: str | None = Field(default="OPENAI_API_KEY", description="env var holding the API key")
    timeout_s: float = Field(default=60.0, gt=0, description="HTTP timeout per attempt (openai SDK)")
    max_retries: int = Field(
        default=2,
        ge=0,
        description="SDK retries on connection errors, 408, 409, 429 and "
        "5xx: jittered exponential backoff (0.5 s doubling, at most 8 s) or the Retry-After",
    )
    retry_backoff_s: float = Field(
        default=0.5,
        ge=0,
        description="unused since the openai SDK makes the calls "
        "(its backoff starts at 0.5 s); kept so that existing configs still load",
    )
    usd_per_1k_input: float | None = Field(default=None, ge=0, description="price, for the cost of an answer")
    usd_per_1k_output: float | None = Field(default=None, ge=0)
    stream_usage: bool = Field(default=True, description="ask for usage in streams (stream_options)")
    extra_headers: dict[str, str] = Field(default_factory=dict)
    extra_body: dict = Field(default_factory=dict, description="merged into every request body")
    deny_params: list[str] = Field(
        default_factory=list,
        description="request fields never forwarded to this upstream (every other field "
        "of the client's request is, including ones the router does not know, e.g. top_k or reasoning_effort)",
    )

    def max_call_s(self) -> float:
        """The longest one call can take inside the SDK: every attempt's timeout plus the backoff between them."""
        return self.timeout_s * (self.max_retries + 1) + 8.0 * self.max_retries


class UpstreamConfig(_Strict):
    """One candidate model's upstream deployment."""

    model: str = Field(description="model id, as in the policy checkpoint's model list")
    kind: Literal["replay", "openai"] = "replay"
    replay: ReplaySettings = Field(default_factory=ReplaySettings)
    openai: OpenAISettings | None = None
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="router-side limit per attempt (for a stream: until its first chunk, and "
        "between chunks); None: replay 30 s, openai the backend's timeout_s x attempts + backoff. An openai "
        "upstream's value below its backend's timeout_s x (max_retries + 1) is refused (the router would cancel "
        "answers the backend still waits for and pay for them again on another model)",
    )
    stream_deadline_s: float = Field(
        default=300.0,
        gt=0,
        description="total time a streamed answer may take, first chunk to last; "
        "router.graceful_shutdown_timeout_s must cover it (a draining replica waits for its streams)",
    )
    mean_cost_usd: float | None = Field(
        default=None, ge=0, description="expected cost per query; default: calibration or the upstream's own"
    )
    num_cpus: float = Field(default=0.05, gt=0, description="per replica (fractional: upstreams mostly wait)")
    num_replicas: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(default=256, ge=1, description="requests in flight per replica")

    @model_validator(mode="after")
    def _settings_for_kind(self) -> UpstreamConfig:
        if self.kind == "openai" and self.openai is None:
            raise ValueError(f"upstream {self.model!r}: kind 'openai' needs an `openai:` block with base_url")
        if self.kind == "openai" and self.timeout_s is not None:
            o = self.openai
            needed = o.timeout_s * (o.max_retries + 1)
            if self.timeout_s < needed:
                raise ValueError(
                    f"upstream {self.model!r}: timeout_s ({self.timeout_s:g}) < openai.timeout_s ({o.timeout_s:g}) x "
                    f"attempts ({o.max_retries + 1}) = {needed:g}: the router would cut calls the backend still "
                    f"waits for; raise timeout_s (>= {o.max_call_s():g} covers the backoff too), lower "
                    "openai.timeout_s / max_retries, or leave timeout_s unset"
                )
        return self

    def attempt_timeout_s(self) -> float:
        """The router's limit for one attempt at this upstream (see `timeout_s`)."""
        if self.timeout_s is not None:
            return self.timeout_s
        return self.openai.max_call_s() if self.kind == "openai" and self.openai is not None else 30.0


# ---- router ---------------------------------------------------------------------------------------------
class RouterDeploymentConfig(_Strict):
    """Ray Serve options of the router deployment."""

    num_cpus: float = Field(default=0.5, gt=0)
    num_gpus: float = Field(
        default=0.0,
        ge=0,
        description="GPUs per replica; a replica Ray gives a GPU runs the encoder on CUDA (encoding.device: auto)",
    )
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float = Field(default=16, gt=0)
    max_ongoing_requests: int = Field(
        default=256,
        ge=1,
        description="requests in flight per replica (they "
        "wait on upstreams too); >= batching.max_batch_size * 8 avoids a Serve warning",
    )
    max_queued_requests: int = Field(
        default=256,
        ge=0,
        description="requests a replica holds waiting for one of its max_ongoing_requests "
        "slots; past that it answers 503 (OpenAI-style body, Retry-After) at once instead of queueing. Serve "
        "sends a replica up to max_ongoing + 2 * max_queued, and its proxy queues at most max_queued more "
        "(Serve's own plain-text 503 beyond that)",
    )
    upscale_delay_s: float = Field(default=10.0, ge=0)
    downscale_delay_s: float = Field(default=30.0, ge=0)
    look_back_period_s: float = Field(
        default=30.0,
        gt=0,
        description="window of load averaged by the autoscaler (Serve: must exceed the "
        "metrics push interval, 10 s by default; set RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S in "
        "runtime_env.env_vars to change that, it replaces the deprecated metrics_interval_s)",
    )
    graceful_shutdown_timeout_s: float | None = Field(
        default=None,
        ge=0,
        description="how long a stopping replica may drain its requests (streams included) "
        "and flush its decision log before Serve kills it; None: the longest upstream stream_deadline_s plus "
        "decision_log.close_timeout_s. A smaller value is refused (decisions of cut streams would be lost)",
    )
    health_check_period_s: float = Field(
        default=10.0, gt=0, description="how often Serve calls each router replica's health check"
    )
    health_check_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="a health check unanswered this long counts as failed; after 3 failures in a row Serve "
        "replaces the replica. A replica process that got SIGTERM from outside Serve stops answering but is "
        "only replaced this way (Ray keeps the async actor's process alive, ray-project/ray#50004): lower it "
        "to replace such replicas sooner (~3 x (period + timeout))",
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="None: Ray's default (1 if fractional). Measured on 2 cores: 2 threads "
        "in the replica's forward thread made one short-prompt forward 41 ms instead of 22 ms; keep 1 and scale "
        "with replicas",
    )

    @model_validator(mode="before")
    @classmethod
    def _removed_fields(cls, data):
        if isinstance(data, dict) and "metrics_interval_s" in data:
            raise ValueError(
                "router.metrics_interval_s was removed (deprecated in Ray 2.60): set the env var "
                "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S in the app's runtime_env instead"
            )
        return data

    @model_validator(mode="after")
    def _bounds(self) -> RouterDeploymentConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self

    def autoscaling_config(self) -> dict:
        cfg = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            "look_back_period_s": self.look_back_period_s,
        }
        if self.initial_replicas is not None:
            cfg["initial_replicas"] = self.initial_replicas
        return cfg

    def serve_max_ongoing_requests(self) -> int:
        """Serve's cap per replica: the working slots, the replica's own queue, and as many again that the
        replica answers with an immediate 503 (so overload gets an OpenAI-style error, not a proxy queue)."""
        return self.max_ongoing_requests + 2 * self.max_queued_requests


class BatchingConfig(_Strict):
    """`@serve.batch` on the encoder + policy forward: concurrent requests share one forward pass."""

    enabled: bool = True
    max_batch_size: int = Field(default=32, ge=1)
    batch_wait_timeout_s: float = Field(default=0.002, ge=0, description="wait for more requests after the first")
    coalesce: bool = Field(
        default=True, description="merge @serve.batch batches that wait behind a running forward into one pass"
    )
    max_forward_size: int = Field(default=64, ge=1, description="prompts per merged forward pass, at most")


class ExplorationConfig(_Strict):
    """Serve-time exploration (off by default): argmax, sample a ~ pi, or epsilon-greedy."""

    mode: Literal["greedy", "sample", "epsilon"] = "greedy"
    epsilon: float = Field(default=0.0, ge=0, le=1)
    seed: int | None = Field(default=None, description="None: a fresh seed per replica")


class FallbackConfig(_Strict):
    """Fallback to the next-ranked models, and the per-model circuit breaker (per router replica)."""

    max_fallbacks: int = Field(default=2, ge=0, description="next-ranked models tried after the chosen one")
    breaker_failures: int = Field(
        default=5,
        ge=0,
        description="consecutive failed attempts (429, 5xx, timeout, connection) after which a "
        "model is skipped for breaker_cooldown_s; 0: no breaker",
    )
    breaker_cooldown_s: float = Field(
        default=30.0,
        gt=0,
        description="how long an open breaker skips its model; then one failure re-opens it, one success closes it",
    )


class AuthConfig(_Strict):
    """Bearer API keys. Keys come from an env var (comma separated) and/or a file (one per line)."""

    enabled: bool = True
    api_keys_env: str | None = Field(
        default="BARP_API_KEYS",
        description="env var with comma-separated keys "
        "(on Kubernetes: from a Secret, see deploy/rayservice-router.yaml)",
    )
    api_keys_file: str | None = Field(default=None, description="file with one key per line (# comments)")


class RateLimitConfig(_Strict):
    """Optional per-API-key rate limits (a token bucket per key and replica; 429 with Retry-After past it).

    The limit holds per router replica: the cluster-wide rate of a key is at most `requests_per_s` times
    the number of router replicas.
    """

    enabled: bool = Field(default=False, description="off by default")
    requests_per_s: float = Field(default=20.0, gt=0, description="sustained requests per second per key")
    burst: int = Field(default=40, ge=1, description="requests a key may send at once above the rate")
    per_key: dict[str, float] = Field(
        default_factory=dict,
        description="overrides: key id (sha256(key)[:16], as logged in key_hash) -> requests per second",
    )


class LimitsConfig(_Strict):
    """Request limits, checked before any upstream call (a 4xx naming the field past them)."""

    max_prompt_chars: int = Field(default=32_000, ge=1, description="all message text together")
    max_messages: int = Field(default=128, ge=1, description="messages per request")
    max_body_bytes: int = Field(
        default=1_000_000,
        ge=1024,
        description="request body, read streamed and cut at this size with or without Content-Length (413 past it)",
    )
    max_json_depth: int = Field(default=32, ge=2, description="nesting of the JSON body (400 past it)")
    max_comment_chars: int = Field(default=2_000, ge=0, description="feedback comment length")


class DecisionLogConfig(_Strict):
    """Parquet decision log (local path or object-store URI); see barp_ray/serving/decision_log.py."""

    enabled: bool = Field(default=True, description="off: no log, /v1/feedback and /v1/decisions answer 409")
    path: str = Field(
        default="runs/serve/decisions",
        description="local folder or s3:// gs:// URI; shared "
        "storage (object store or a shared volume) in a cluster, so every replica's rows survive it",
    )
    flush_rows: int = Field(default=512, ge=1, description="flush when this many rows are buffered")
    flush_interval_s: float = Field(default=5.0, gt=0, description="... or this long after the first one")
    max_buffer_bytes: int = Field(
        default=64 * 1024**2,
        ge=1024,
        description="bound of the in-memory buffer while the store fails; the "
        "oldest rows are dropped past it and counted (barp_router_decision_log_dropped_total)",
    )
    max_buffer_rows: int | None = Field(default=None, ge=1, description="optional bound in rows as well")
    write_retries: int = Field(default=2, ge=0, description="retries of a failed feedback write before a 503")
    feedback_window_s: float = Field(
        default=0.002,
        ge=0,
        description="group commit: feedback arriving within this window (or while a write runs) shares one file",
    )
    close_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="at replica shutdown, how long to keep "
        "retrying the final flush before the rows are counted as dropped",
    )
    log_prompt_text: bool = Field(default=True, description="store the prompt text (else only its hash)")
    feedback_sync: bool = Field(
        default=True,
        description="write feedback before answering (durable, group-committed); false: buffer it "
        "with the decisions (lost if the replica is killed before the next flush)",
    )
