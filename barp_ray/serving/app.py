"""The application builder: `import_path: barp_ray.serving.app:build_app` with `args:` in a Serve YAML.

    build_app({"policy": "runs/demo/policy"})  # -> a Serve Application: BarpRouter + one upstream per model

The router deployment gets `user_config: {policy: <the config's policy>}`: a new checkpoint is rolled out
by changing only that (`barp rollout`, barp_ray/serving/rollout.py), without restarting replicas.

`app` (module attribute, built on first access) is what `serve build barp_ray.serving.app:app` imports; it
uses $BARP_SERVE_CONFIG (a YAML of the app config) when set, else the defaults.
"""

from __future__ import annotations

import os

from ray.serve import Application

from barp_ray.serving.config import ServeAppConfig, config_from_args, deployment_name
from barp_ray.serving.config_sections import UpstreamConfig
from barp_ray.serving.engine import read_policy_spec

ROUTER_DEPLOYMENT = "BarpRouter"
CONFIG_ENV = "BARP_SERVE_CONFIG"


def resolve_config(args: dict | ServeAppConfig | None) -> ServeAppConfig:
    """Validate, make paths absolute, and fill in one replay upstream per policy model if none are given."""
    from barp_ray.config import default_data_dir

    cfg = config_from_args(args).resolved()
    models = read_policy_spec(cfg.policy)["models"]
    upstreams = cfg.upstreams or [UpstreamConfig(model=m) for m in models]
    unknown = [u.model for u in upstreams if u.model not in models]
    if unknown:
        raise ValueError(f"upstreams {unknown} are not models of the policy at {cfg.policy}: {models}")
    replay_data = cfg.replay_data or str(default_data_dir())
    filled = []
    for u in upstreams:
        if u.kind == "replay" and u.replay.data is None:
            u = u.model_copy(update={"replay": u.replay.model_copy(update={"data": replay_data})})
        filled.append(u)
    return cfg.model_copy(update={"upstreams": filled, "replay_data": replay_data})


def build_app(args: dict | ServeAppConfig | None = None) -> Application:
    """The BaRP router application: `BarpRouter` bound to one upstream deployment per candidate model."""
    from barp_ray.serving.router import BarpRouter
    from barp_ray.serving.upstreams import OpenAIUpstream, ReplayUpstream

    cfg = resolve_config(args)
    handles = {}
    for u in cfg.upstreams:
        cls, settings = (ReplayUpstream, u.replay) if u.kind == "replay" else (OpenAIUpstream, u.openai)
        handles[u.model] = cls.options(
            name=deployment_name(u.model),
            num_replicas=u.num_replicas,
            max_ongoing_requests=u.max_ongoing_requests,
            ray_actor_options={"num_cpus": u.num_cpus},
        ).bind(u.model, settings.model_dump(mode="json"))
    r = cfg.router
    router = BarpRouter.options(
        name=ROUTER_DEPLOYMENT,
        autoscaling_config=r.autoscaling_config(),
        max_ongoing_requests=r.serve_max_ongoing_requests(),  # the replica answers overload 503s itself
        max_queued_requests=r.max_queued_requests,
        ray_actor_options={"num_cpus": r.num_cpus, "num_gpus": r.num_gpus},
        graceful_shutdown_timeout_s=cfg.shutdown_timeout_s(),  # covers the stream deadline + the final flush
        health_check_period_s=r.health_check_period_s,
        health_check_timeout_s=r.health_check_timeout_s,
        # the policy rollout channel: a Serve config that changes only this (`barp rollout`, or a
        # `deployments: [{name: BarpRouter, user_config: {policy: ...}}]` entry) reconfigures the running
        # replicas in place; see barp_ray/serving/rollout.py
        user_config={"policy": cfg.policy},
    )
    return router.bind(cfg.model_dump(mode="json"), handles)


def __getattr__(name: str):
    if name == "app":  # for `serve build barp_ray.serving.app:app`
        path = os.environ.get(CONFIG_ENV)
        return build_app(ServeAppConfig.from_yaml(path) if path else {})
    raise AttributeError(name)
