"""The one config object of the Serve router app (`args:` of the Serve YAML, or `build_app(dict)`).

Everything BaRP-specific lives here: the checkpoint, the upstreams, batching, exploration, fallback, auth,
limits, the decision log and the replica resources / autoscaling the builder gives each deployment. A
Serve YAML may still carry a `deployments:` section; Serve's rule is that it wins over what the builder set.
The model of each section is in `barp_ray.serving.config_sections`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from barp_ray.config import JobConfig
from barp_ray.serving.config_sections import (
    AuthConfig,
    BatchingConfig,
    Budget,
    DecisionLogConfig,
    ExplorationConfig,
    FallbackConfig,
    LimitsConfig,
    Preference,
    RateLimitConfig,
    RouterDeploymentConfig,
    UpstreamConfig,
)
from barp_ray.serving.engine import EncodingConfig


class ServeAppConfig(JobConfig):
    """The BaRP router application."""

    name: str = Field(default="barp", description="application name (also the `model` that means: route)")
    policy: str = Field(default="runs/demo/policy", description="checkpoint folder or URI (policy.json + .pt)")
    encoder: str | None = Field(default=None, description="override the checkpoint's encoder (local path)")
    encoding: EncodingConfig = Field(
        default_factory=EncodingConfig,
        description="encoder backend / token budget (default: as trained; a "
        "mismatch needs allow_encoder_mismatch), device, decision cache bytes (barp_ray/serving/engine.py)",
    )
    router_model_names: list[str] = Field(
        default_factory=lambda: ["barp", "auto", "router"],
        description="request `model` values that mean: let the policy choose",
    )
    default_preference: Preference = Field(default_factory=lambda: Preference(quality=0.5, cost=0.5))
    default_budget: Budget | None = Field(default=None, description="if set, wins over default_preference")
    calibration: str | None = Field(
        default=None,
        description="`barp calibrate --out` JSON, or a prepared shard folder (calibrated at start); needed for budgets",
    )
    calibration_grid_points: int = Field(default=101, ge=2)
    replay_data: str | None = Field(default=None, description="default `replay.data` for replay upstreams")
    upstreams: list[UpstreamConfig] = Field(
        default_factory=list, description="empty: a replay upstream for every model of the policy"
    )
    router: RouterDeploymentConfig = Field(default_factory=RouterDeploymentConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    exploration: ExplorationConfig = Field(default_factory=ExplorationConfig)
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    rate_limits: RateLimitConfig = Field(default_factory=RateLimitConfig)
    decision_log: DecisionLogConfig = Field(default_factory=DecisionLogConfig)

    @field_validator("upstreams")
    @classmethod
    def _unique_models(cls, value: list[UpstreamConfig]) -> list[UpstreamConfig]:
        seen: set[str] = set()
        for up in value:
            if up.model in seen:
                raise ValueError(f"upstream model {up.model!r} is listed twice")
            seen.add(up.model)
        return value

    @model_validator(mode="after")
    def _batch_fits(self) -> ServeAppConfig:
        if self.batching.enabled and self.batching.max_batch_size > self.router.max_ongoing_requests:
            raise ValueError(
                f"batching.max_batch_size ({self.batching.max_batch_size}) > router.max_ongoing_requests "
                f"({self.router.max_ongoing_requests}): a batch could never fill"
            )
        return self

    @model_validator(mode="after")
    def _shutdown_covers_streams(self) -> ServeAppConfig:
        longest = max(
            (u.stream_deadline_s for u in self.upstreams),
            default=UpstreamConfig.model_fields["stream_deadline_s"].default,
        )
        margin = self.decision_log.close_timeout_s if self.decision_log.enabled else 0.0
        needed = longest + margin
        given = self.router.graceful_shutdown_timeout_s
        if given is not None and given < needed:
            raise ValueError(
                f"router.graceful_shutdown_timeout_s ({given:g}) < the longest upstream stream_deadline_s "
                f"({longest:g}) + decision_log.close_timeout_s ({margin:g}): a stopping replica would be killed "
                f"with streams (and their decisions) in flight; raise it to >= {needed:g} or leave it unset"
            )
        return self

    def shutdown_timeout_s(self) -> float:
        """The graceful_shutdown_timeout_s the router deployment gets (see RouterDeploymentConfig)."""
        if self.router.graceful_shutdown_timeout_s is not None:
            return self.router.graceful_shutdown_timeout_s
        longest = max(
            (u.stream_deadline_s for u in self.upstreams),
            default=UpstreamConfig.model_fields["stream_deadline_s"].default,
        )
        return longest + (self.decision_log.close_timeout_s if self.decision_log.enabled else 0.0)

    def resolved(self, base: Path | None = None) -> ServeAppConfig:
        """Local relative paths made absolute (replicas may run in another working directory)."""
        base = Path.cwd() if base is None else base

        def fix(p: str | None) -> str | None:
            if p is None or "://" in p:
                return p
            path = Path(p).expanduser()
            return str(path if path.is_absolute() else (base / path).resolve())

        upstreams = [
            u.model_copy(update={"replay": u.replay.model_copy(update={"data": fix(u.replay.data)})})
            for u in self.upstreams
        ]
        return self.model_copy(
            update={
                "policy": fix(self.policy),
                "encoder": fix(self.encoder)
                if self.encoder and Path(self.encoder).expanduser().exists()
                else self.encoder,
                "calibration": fix(self.calibration),
                "replay_data": fix(self.replay_data),
                "upstreams": upstreams,
                "auth": self.auth.model_copy(update={"api_keys_file": fix(self.auth.api_keys_file)}),
                "decision_log": self.decision_log.model_copy(update={"path": fix(self.decision_log.path)}),
            }
        )


def deployment_name(model: str) -> str:
    """A Serve deployment name for a model's upstream (model ids hold '/', '.', ...)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", model).strip("-")
    return f"upstream-{slug}"


def config_from_args(args: dict | ServeAppConfig | None) -> ServeAppConfig:
    if isinstance(args, ServeAppConfig):
        return args
    args = dict(args or {})
    # `serve run module:build_app key=value` passes strings: allow JSON for nested values
    for key, value in list(args.items()):
        if isinstance(value, str) and value[:1] in "{[":
            try:
                args[key] = json.loads(value)
            except json.JSONDecodeError:
                pass
    return ServeAppConfig.model_validate(args)
