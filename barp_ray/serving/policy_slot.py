"""The policy a router replica routes with, and its replacement on a rollout (Serve's `reconfigure`).

`PolicySlot.active` is an `ActivePolicy`: engine, model mask, calibration, swapped as one object. A request
takes `slot.active` once and keeps it to the end, so a swap never mixes two policies in one decision.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from barp_ray.serving.config import ServeAppConfig
from barp_ray.serving.decision_log import utcnow
from barp_ray.serving.engine import RoutingEngine

logger = logging.getLogger("ray.serve")


def utcnow_iso() -> str:
    return utcnow().isoformat(timespec="milliseconds")


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
    def from_user_config(cls, user_config: Any, cfg: ServeAppConfig) -> RolloutTarget:
        uc = user_config or {}
        if not isinstance(uc, dict):
            raise ValueError(
                f"user_config: expected a mapping like {{'policy': <checkpoint>}}, got {type(uc).__name__}"
            )
        unknown = sorted(set(uc) - {"policy", "calibration", "version", "rollout_id"})
        if unknown:
            raise ValueError(f"user_config: unknown keys {unknown} (policy, calibration, version, rollout_id)")
        policy = uc.get("policy") or cfg.policy
        if uc.get("policy") and "://" not in str(policy) and not Path(str(policy)).is_absolute():
            raise ValueError(
                f"user_config.policy: {policy!r} is a relative path; give an absolute path or a URI "
                "(replicas do not share the deployer's working directory)"
            )
        calibration = uc["calibration"] if uc.get("calibration") is not None else cfg.calibration
        return cls(
            policy=str(policy), calibration=calibration, version=uc.get("version"), rollout_id=uc.get("rollout_id")
        )


def replica_id() -> str:
    """This replica's id (Serve's public replica context); outside Serve a random id."""
    from ray import serve

    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside Serve (unit use)
        return uuid.uuid4().hex[:8]


def load_active(
    target: RolloutTarget, cfg: ServeAppConfig, upstreams: Collection[str], current: ActivePolicy | None = None
) -> ActivePolicy:
    """Load and check a policy (blocking: call it off the event loop once serving). Raises if unusable.

    The checks are those of a fresh start: every bound upstream must be a model of the policy, the
    encoder width must match, a calibration must cover the same models, and `target.version` (if given)
    must be the checkpoint's content hash. The encoder object of `current` is reused when the new policy
    names the same encoder, so a rollout loads only the policy weights.
    """
    from barp_ray.serving.engine import read_policy_spec

    spec = read_policy_spec(target.policy)  # cheap: refuse a wrong checkpoint before loading weights
    unknown = sorted(set(upstreams) - set(spec["models"]))
    if unknown:
        raise ValueError(
            f"upstreams {unknown} are not models of the policy {spec['models']} ({target.policy}); "
            "every bound upstream must be a candidate model of the policy"
        )
    shared = current.engine.encoder if current is not None else None  # reused only if it is the same encoder
    engine = RoutingEngine(target.policy, cfg.encoder, encoder_model=shared, options=cfg.encoding, metrics=True)
    if target.version and engine.version != target.version:
        raise ValueError(
            f"{target.policy} has version {engine.version}, not the expected {target.version} "
            "(the checkpoint changed after it was checked)"
        )
    missing = [m for m in engine.models if m not in upstreams]
    if missing:
        logger.warning("models without an upstream are never routed to: %s", missing)

    calibration = None
    if target.calibration:
        from barp_ray.serving.calibration import load_calibration

        calibration = load_calibration(
            target.calibration, target.policy, cfg.calibration_grid_points, policy=engine.policy
        )
        if calibration.models != engine.models:
            raise ValueError(
                f"calibration {target.calibration} is for models {calibration.models}, the policy has {engine.models}"
            )
        if calibration.policy_version not in (None, engine.version):
            logger.warning(
                "calibration %s was computed for policy %s, not %s: budgets map to w_c with a "
                "table of another policy (give a matching calibration with the rollout)",
                target.calibration,
                calibration.policy_version,
                engine.version,
            )
    if cfg.default_budget is not None and calibration is None:
        raise ValueError("default_budget needs `calibration` (a `barp calibrate` JSON or a shard folder)")
    return ActivePolicy(
        engine=engine,
        available=np.array([m in upstreams for m in engine.models]),
        calibration=calibration,
        calibration_location=target.calibration,
        loaded_at=utcnow_iso(),
    )


class PolicySlot:
    """Holds the replica's `ActivePolicy` and swaps in a new one on `reconfigure` (never raising)."""

    def __init__(self, cfg: ServeAppConfig, upstreams: Collection[str]) -> None:
        self.cfg, self.upstreams = cfg, set(upstreams)
        self.loads = 0  # policies this replica loaded (1 after start: the first reconfigure loads it)
        self.active: ActivePolicy | None = None  # set by the first reconfigure (Serve calls it before traffic)
        self.rollout: dict = {"id": None, "ok": True, "policy": None, "version": None, "error": None, "at": None}
        self._lock = asyncio.Lock()

    async def start(self, user_config: Any, prepare: Callable[[ActivePolicy], Awaitable[None]]) -> ActivePolicy:
        """The first policy, loaded in Serve's first `reconfigure` (at replica start, before any request).

        Raises when it cannot be loaded: a replica without a policy must not start (Serve reports the error).
        """
        target = RolloutTarget.from_user_config(user_config, self.cfg)
        new = await asyncio.to_thread(self._load, target)
        await prepare(new)
        self.active = new
        self._served(target, new, new.loaded_at)
        logger.info("policy %s (%s) loaded at replica start", new.version, new.location)
        return new

    def _load(self, target: RolloutTarget, current: ActivePolicy | None = None) -> ActivePolicy:
        active = load_active(target, self.cfg, self.upstreams, current)
        self.loads += 1
        return active

    async def reconfigure(
        self, user_config: Any, prepare: Callable[[ActivePolicy], Awaitable[None]]
    ) -> tuple[str, ActivePolicy | None]:
        """Load `user_config`'s policy beside the current one, `prepare` it (warm-up), and swap it in.

        Returns ("started", None) for the first policy (see `start`), ("swapped", the replaced policy),
        ("unchanged", None) or ("refused", None); a refused rollout keeps the current policy and is reported in
        `self.rollout`.
        """
        async with self._lock:
            if self.active is None:
                await self.start(user_config, prepare)
                return "started", None
            try:
                target = RolloutTarget.from_user_config(user_config, self.cfg)
            except ValueError as exc:
                self._refused(user_config or {}, exc)
                return "refused", None
            current = self.active
            started = time.perf_counter()
            try:
                if target.policy == current.location and target.calibration == current.calibration_location:
                    from barp_ray.serving.engine import policy_version

                    same = await asyncio.to_thread(policy_version, target.policy)
                    if same == current.version and target.version in (None, same):
                        self._served(target, current, utcnow_iso())
                        return "unchanged", None
                new = await asyncio.to_thread(self._load, target, current)
                await prepare(new)
            except Exception as exc:  # noqa: BLE001 - refused, reported, and the old policy keeps serving
                self._refused(user_config or {}, exc)
                return "refused", None
            self.active = new  # the swap: requests from now on take `new`; running ones keep theirs
            self._served(target, new, new.loaded_at)
            logger.info(
                "policy rollout: %s -> %s (%s) in %.2fs",
                current.version,
                new.version,
                new.location,
                time.perf_counter() - started,
            )
            return "swapped", current

    def status(self) -> dict:
        """The active policy and the last rollout (for `rollout_status`)."""
        a = self.active
        return {
            "policy": a.location,
            "policy_version": a.version,
            "models": list(a.models),
            "encoder": a.engine.encoder_name,
            "calibration": a.calibration_location,
            "loaded_at": a.loaded_at,
            "policy_loads": self.loads,
            "rollout": dict(self.rollout),
        }

    def _served(self, target: RolloutTarget, policy: ActivePolicy, at: str) -> None:
        """Record a rollout that left `policy` serving (loaded, swapped in, or already the one asked for)."""
        self.rollout = {
            "id": target.rollout_id,
            "ok": True,
            "policy": policy.location,
            "version": policy.version,
            "error": None,
            "at": at,
        }

    def _refused(self, user_config: Any, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        self.rollout = {
            "id": user_config.get("rollout_id") if isinstance(user_config, dict) else None,
            "ok": False,
            "policy": user_config.get("policy") if isinstance(user_config, dict) else None,
            "version": self.active.version,
            "error": error,
            "at": utcnow_iso(),
        }
        logger.error(
            "policy rollout refused, still serving %s (%s): %s", self.active.version, self.active.location, error
        )
