"""Zero-downtime policy rollout: a new checkpoint reaches the running `BarpRouter` replicas in place.

The channel is the router deployment's Serve `user_config` (`{"policy": <checkpoint>}`, set by `build_app`).
`rollout()` (and `barp rollout`) speaks only Serve's public REST API on the Ray dashboard, the one
`serve deploy` / `serve status` use: it reads the declarative config with `GET /api/serve/applications/`
and re-applies it with `PUT /api/serve/applications/`, with only the router's `user_config` changed:

- `import_path`, `args` and `runtime_env` are unchanged, so the controller keeps the app's code version
  and applies the new config as an override instead of rebuilding the app;
- the router's deployment version then differs only in `user_config`, which Serve applies by calling
  `reconfigure()` on each running replica (RUNNING -> UPDATING -> RUNNING) instead of restarting it;
  the upstream deployments are untouched.
- The replica loads and warms up the new policy off its event loop, then swaps it in (`BarpRouter.reconfigure`);
  requests already on the replica finish on the policy they started with. While a replica is UPDATING, Serve
  takes it out of the routing set, so new requests go to the other replicas, or wait in the proxy / handle
  queue for the reload (a fraction of a second) when there is one replica. No request fails.

Not zero-downtime, and refused here: an app deployed from Python with `serve.run(build_app(...))`
(imperative): re-running `serve.run` with a changed `user_config` gives every deployment a new code
version, so Serve replaces every replica. Deploy the app from a config (`serve run` / `serve deploy` /
KubeRay `serveConfigV2`) to roll out in place.

A replica never raises from `reconfigure` (Serve would stop it and start replicas with the failing config):
it keeps the old policy and reports the refusal in `rollout_status()`; `rollout()` then re-applies the
previous config, so Serve's target and what the replicas serve agree again. Checks run here first as well
(the checkpoint exists, its models cover the app's upstreams), so a bad rollout usually never reaches Serve.

The dashboard address: the `address` argument, else `$RAY_DASHBOARD_ADDRESS` (as `serve deploy`), else the
dashboard of the Ray cluster this process is connected to, else http://127.0.0.1:8265. With Ray token auth the
token (`$RAY_AUTH_TOKEN`, `$RAY_AUTH_TOKEN_PATH` or ~/.ray/auth_token) is sent as a bearer token.
"""

from __future__ import annotations

import os
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


def dashboard_address(address: str | None = None) -> str:
    """The Ray dashboard URL that serves Serve's REST API (see the module doc for the order of sources)."""
    address = address or os.environ.get("RAY_DASHBOARD_ADDRESS")
    if not address:
        import ray

        if ray.is_initialized():  # public: returns the running cluster's context, starts nothing
            address = ray.init(ignore_reinit_error=True).dashboard_url
    address = address or "http://127.0.0.1:8265"
    return address if "://" in address else f"http://{address}"


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        token = path.read_text().strip() if path.is_file() else None
    return {"Authorization": f"Bearer {token}"} if token else {}


class ServeRestClient:
    """Serve's REST API on the Ray dashboard: GET / PUT /api/serve/applications/ (what `serve deploy` uses)."""

    PATH = "/api/serve/applications/"

    def __init__(self, address: str | None = None, timeout_s: float = 30.0) -> None:
        self.address = dashboard_address(address).rstrip("/")
        self.timeout_s = timeout_s

    def _request(self, method: str, **kwargs):
        import httpx

        try:
            response = httpx.request(
                method, self.address + self.PATH, headers=_auth_headers(), timeout=self.timeout_s, **kwargs
            )
        except httpx.HTTPError as exc:
            raise RolloutError(
                f"the Ray dashboard at {self.address} is not reachable ({type(exc).__name__}: "
                f"{exc}); give --address or set RAY_DASHBOARD_ADDRESS"
            ) from None
        if response.status_code != 200:
            raise RolloutError(
                f"{method} {self.address}{self.PATH}: HTTP {response.status_code}: {response.text[:1000]}"
            )
        return response

    def get_serve_details(self) -> dict:
        return self._request("GET").json()

    def deploy_apps(self, config) -> None:
        body = config.model_dump(mode="json", exclude_unset=True) if hasattr(config, "model_dump") else config
        self._request("PUT", json=body)


def _client(address: str | None = None) -> ServeRestClient:
    return ServeRestClient(address)


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


def replica_statuses(
    app: str, replica_ids: set[str] | None = None, timeout_s: float = 30.0, calls: int | None = None
) -> dict[str, dict]:
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
    doc = {
        "applications": [a.model_dump(exclude_unset=True) for a in applications],
        "target_capacity": details.get("target_capacity"),
    }
    for key in ("proxy_location", "http_options", "grpc_options"):  # the running instance's, so the PUT
        if details.get(key) is not None:  # keeps them (Serve ignores changes to a running instance's anyway)
            doc[key] = details[key]
    return ServeDeploySchema.model_validate(doc)


def deploy_app(app_config: dict, address: str | None = None) -> None:
    """Add or replace one declarative application (a `ServeApplicationSchema` dict) through the REST API,
    keeping every other declarative app of the cluster (a PUT replaces the whole declarative config)."""
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    client = _client(address)
    details = client.get_serve_details()
    current = _deploy_schema(details, app_config["name"])
    new = ServeApplicationSchema.model_validate(app_config)
    apps = [a.model_dump(exclude_unset=True) for a in current.applications if a.name != new.name]
    doc = {**current.model_dump(exclude_unset=True), "applications": [*apps, new.model_dump(exclude_unset=True)]}
    client.deploy_apps(ServeDeploySchema.model_validate(doc))


def delete_app(name: str, address: str | None = None) -> None:
    """Remove one declarative application, keeping the others."""
    from ray.serve.schema import ServeDeploySchema

    client = _client(address)
    current = _deploy_schema(client.get_serve_details(), name)
    doc = {
        **current.model_dump(exclude_unset=True),
        "applications": [a.model_dump(exclude_unset=True) for a in current.applications if a.name != name],
    }
    client.deploy_apps(ServeDeploySchema.model_validate(doc))


def rollout(
    policy: str,
    app: str = "barp",
    calibration: str | None = None,
    timeout_s: float = 300.0,
    check: bool = True,
    revert_on_failure: bool = True,
    poll_s: float = 0.25,
    log=print,
    address: str | None = None,
) -> RolloutResult:
    """Roll `policy` out to every router replica of the running (declarative) app `app`; see the module doc.

    Returns when every router replica reports the new version; raises RolloutError (after re-applying the
    previous config) if a replica refused it or `timeout_s` passed. `check=False` skips the checks made here
    before touching Serve (the replicas check again).
    """
    client = _client(address)
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
            raise fail(
                f"replica {replica} refused policy {location}: {s['rollout']['error']} (still serving "
                f"{s['policy_version']})"
            )
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

    result = RolloutResult(
        app=app,
        policy=location,
        rollout_id=rollout_id,
        old_versions=old_versions,
        new_version=new_version,
        replicas=mine,
        restarted=sorted(set(before) - set(up)),
        seconds=time.monotonic() - started,
    )
    return result
