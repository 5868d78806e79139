"""Zero-downtime policy rollout: a new checkpoint reaches the running `BarpRouter` replicas in place.

The channel is the router deployment's Serve `user_config` (`{"policy": <checkpoint>}`, set by `build_app`).
`rollout()` (and `barp rollout`) re-applies the app's *declarative* Serve config (the one `serve run
config.yaml` / `serve deploy` applied, read back from the controller) with only that `user_config` changed:

- `import_path`, `args` and `runtime_env` are unchanged, so the controller keeps the app's code version
  (`ApplicationState.apply_app_config`: `get_app_code_version(config) == target code_version`) and applies
  the new config as an override instead of rebuilding the app;
- the router's `DeploymentVersion` then differs only in `user_config`, a `NeedsActorReconfigure` option:
  `requires_actor_restart()` is False, so `_stop_or_update_outdated_version_replicas` calls
  `reconfigure()` on each running replica (moving it RUNNING -> UPDATING -> RUNNING) instead of stopping it;
  the upstream deployments are untouched.
- The replica loads and warms up the new policy off its event loop, then swaps it in (`BarpRouter.reconfigure`);
  requests already on the replica finish on the policy they started with. While a replica is UPDATING, Serve
  takes it out of the routing set (it is not RUNNING), so new requests go to the other replicas, or wait in
  the proxy / handle queue for the reload (a fraction of a second: only the policy weights are loaded, the
  encoder is shared) when there is one replica. No request fails.

Not zero-downtime, and refused here: an app deployed from Python with `serve.run(build_app(...))`
(imperative). Re-running `serve.run` with a changed `user_config` gives every deployment a new random code
version (`ServeControllerClient.deploy_applications`: `version=deployment._version or get_random_string()`,
and `Deployment.options(version=...)` is removed), so Serve replaces every replica of every deployment
(a rolling restart with a full MiniLM load each). Deploy the app from a config to roll out in place.

A replica never raises from `reconfigure` (Serve would stop it and start replicas with the failing config):
it keeps the old policy and reports the refusal in `rollout_status()`; `rollout()` then re-applies the
previous config, so Serve's target and what the replicas serve agree again. Checks run here first as well
(the checkpoint exists, its models cover the app's upstreams), so a bad rollout usually never reaches Serve.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from barp_ray.serving.app import ROUTER_DEPLOYMENT

UP_STATES = ("RUNNING", "UPDATING")
KEEP = object()  # _deploy_schema: leave the router's user_config as deployed


class RolloutError(ValueError):
    """A rollout that was refused or did not complete (the old policy keeps serving)."""


@dataclass
class RolloutResult:
    app: str
    policy: str
    rollout_id: str
    old_versions: dict[str, str]  # replica -> version before
    new_version: str
    replicas: dict[str, dict] = field(default_factory=dict)  # replica -> its rollout_status() after
    restarted: list[str] = field(default_factory=list)  # replicas present before and gone after
    seconds: float = 0.0

    @property
    def old_version(self) -> str | None:
        versions = sorted(set(self.old_versions.values()))
        return ",".join(versions) if versions else None


def resolve_location(policy: str) -> str:
    """An absolute path for a local checkpoint (replicas do not share the caller's working directory)."""
    policy = str(policy)
    if "://" in policy:
        return policy
    return str(Path(policy).expanduser().resolve())


def check_policy(location: str, upstreams: list[str] | None) -> tuple[dict, str]:
    """(spec, version) of a checkpoint, or RolloutError: unreadable, or an upstream is not one of its models."""
    from barp_ray.serving.engine import policy_version, read_policy_spec

    try:
        spec = read_policy_spec(location)
        version = policy_version(location)
    except (FileNotFoundError, OSError, KeyError, ValueError) as exc:
        raise RolloutError(f"policy {location}: {exc}") from None
    if upstreams:
        unknown = sorted(set(upstreams) - set(spec["models"]))
        if unknown:
            raise RolloutError(
                f"policy {location} cannot serve this app: its upstreams {unknown} are not models of the policy "
                f"{spec['models']} (a rollout keeps the app's upstreams; change them with a full redeploy)"
            )
    return spec, version


def _client():
    import ray
    from ray.serve.context import _get_global_client

    if not ray.is_initialized():
        raise RolloutError("not connected to a Ray cluster (ray.init(address=...) first)")
    return _get_global_client()


def _app_details(details: dict, app: str) -> dict:
    apps = details.get("applications") or {}
    if app not in apps:
        raise RolloutError(f"no Serve application {app!r} on this cluster (running: {sorted(apps) or 'none'})")
    info = apps[app]
    if ROUTER_DEPLOYMENT not in (info.get("deployments") or {}):
        raise RolloutError(f"application {app!r} has no {ROUTER_DEPLOYMENT} deployment: not a BaRP router app")
    return info


def _router_replicas(app_info: dict) -> dict[str, dict]:
    """replica id -> Serve's replica details (state, pid, actor name) for the router replicas that are up."""
    replicas = app_info["deployments"][ROUTER_DEPLOYMENT].get("replicas") or []
    return {r["replica_id"]: r for r in replicas if r.get("state") in UP_STATES}


def replica_statuses(app: str, replica_ids: set[str] | None = None, timeout_s: float = 30.0,
                     calls: int | None = None) -> dict[str, dict]:
    """`rollout_status()` of the router replicas, through a DeploymentHandle (no HTTP, no API key).

    A handle routes each call to one replica; concurrent calls spread over the replicas, and calls are
    repeated until every id in `replica_ids` answered (or `timeout_s`).
    """
    from ray import serve

    handle = serve.get_deployment_handle(ROUTER_DEPLOYMENT, app_name=app)
    want = set(replica_ids or ())
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    n = calls or max(2, 2 * len(want))
    while True:
        responses = [handle.rollout_status.remote() for _ in range(n)]
        for response in responses:
            try:
                status = response.result(timeout_s=max(1.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - a replica that went away; retried below
                continue
            seen[status["replica"]] = status
        if want <= set(seen) or time.monotonic() > deadline:
            return seen


def _deploy_schema(details: dict, app: str, router_user_config=KEEP):
    """The cluster's declarative Serve config (every declarative app: Serve deletes those a config omits),
    with the router's user_config of `app` replaced (None: removed, i.e. back to build_app's)."""
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    applications = []
    for name, info in (details.get("applications") or {}).items():
        if info.get("source") != "declarative" or not info.get("deployed_app_config"):
            continue  # apps from serve.run are not part of the declarative config (and not touched by it)
        config = dict(info["deployed_app_config"])
        if name == app and router_user_config is not KEEP:
            deployments = [dict(d) for d in config.get("deployments") or []]
            router = next((d for d in deployments if d.get("name") == ROUTER_DEPLOYMENT), None)
            if router is None:
                router = {"name": ROUTER_DEPLOYMENT}
                deployments.append(router)
            if router_user_config is None:
                router.pop("user_config", None)
            else:
                router["user_config"] = router_user_config
            config["deployments"] = deployments
        applications.append(ServeApplicationSchema.model_validate(config))
    return ServeDeploySchema.model_validate(
        {"applications": [a.model_dump(exclude_unset=True) for a in applications],
         "target_capacity": details.get("target_capacity")}
    )


def rollout(
    policy: str, app: str = "barp", calibration: str | None = None, timeout_s: float = 300.0, check: bool = True,
    revert_on_failure: bool = True, poll_s: float = 0.25, log=print,
) -> RolloutResult:
    """Roll `policy` out to every router replica of the running (declarative) app `app`; see the module doc.

    Returns when every router replica reports the new version; raises RolloutError (after re-applying the
    previous config) if a replica refused it or `timeout_s` passed. `check=False` skips the checks made here
    before touching Serve (the replicas check again).
    """
    client = _client()
    started = time.monotonic()
    details = client.get_serve_details()
    app_info = _app_details(details, app)
    if app_info.get("source") != "declarative" or not app_info.get("deployed_app_config"):
        raise RolloutError(
            f"application {app!r} was deployed from Python (serve.run), not from a Serve config: re-running "
            "serve.run gives every deployment a new code version, so Serve would restart all replicas. Deploy it "
            "with `serve run <config.yaml>` / `serve deploy <config.yaml>` (e.g. serve/offline.yaml) to roll out "
            "in place"
        )
    before = _router_replicas(app_info)
    if not before:
        raise RolloutError(f"application {app!r} has no running {ROUTER_DEPLOYMENT} replica")
    statuses = replica_statuses(app, set(before), timeout_s=min(30.0, timeout_s))
    if not statuses:
        raise RolloutError(f"no {ROUTER_DEPLOYMENT} replica of {app!r} answered rollout_status()")
    upstreams = next(iter(statuses.values()))["upstreams"]
    old_versions = {r: s["policy_version"] for r, s in statuses.items()}

    location = resolve_location(policy)
    version = None
    if check:
        _, version = check_policy(location, upstreams)
        if calibration is not None and "://" not in calibration and not Path(calibration).exists():
            raise RolloutError(f"calibration {calibration} does not exist")
    rollout_id = uuid.uuid4().hex[:12]
    user_config = {"policy": location, "rollout_id": rollout_id}
    if version is not None:
        user_config["version"] = version
    if calibration is not None:
        user_config["calibration"] = resolve_location(calibration)

    previous = _deploy_schema(details, app)
    client.deploy_apps(_deploy_schema(details, app, user_config))
    log(f"applied user_config {user_config} to {app}/{ROUTER_DEPLOYMENT}; waiting for {len(before)} replica(s)")

    def fail(message: str) -> RolloutError:
        if revert_on_failure:
            client.deploy_apps(previous)
            message += "; re-applied the previous config (the replicas kept serving their policy)"
        return RolloutError(message)

    deadline = started + timeout_s
    while True:
        app_info = _app_details(client.get_serve_details(), app)
        if app_info.get("status") == "DEPLOY_FAILED":
            raise fail(f"Serve reports DEPLOY_FAILED for {app!r}: {app_info.get('message', '')[:500]}")
        up = _router_replicas(app_info)
        statuses = replica_statuses(app, set(up), timeout_s=max(1.0, min(10.0, deadline - time.monotonic())))
        mine = {r: s for r, s in statuses.items() if r in up and s["rollout"]["id"] == rollout_id}
        refused = {r: s for r, s in mine.items() if not s["rollout"]["ok"]}
        if refused:
            replica, s = next(iter(refused.items()))
            raise fail(f"replica {replica} refused policy {location}: {s['rollout']['error']} (still serving "
                       f"{s['policy_version']})")
        if up and set(mine) == set(up):
            versions = {s["policy_version"] for s in mine.values()}
            if version is not None and versions != {version}:
                raise fail(f"replicas report versions {sorted(versions)}, expected {version}")
            new_version = versions.pop()
            break
        if time.monotonic() > deadline:
            waiting = sorted(set(up) - set(mine))
            raise fail(f"timed out after {timeout_s:g}s: replicas {waiting} did not report rollout {rollout_id}")
        time.sleep(poll_s)

    result = RolloutResult(app=app, policy=location, rollout_id=rollout_id, old_versions=old_versions,
                           new_version=new_version, replicas=mine, restarted=sorted(set(before) - set(up)),
                           seconds=time.monotonic() - started)
    return result

