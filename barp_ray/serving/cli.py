"""`barp calibrate`, `barp serve-config` and `barp rollout` (registered into the `barp` CLI when this module is
imported)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from barp_ray.cli_support import command, print_outputs

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "serve" / "offline.yaml"


# ---- calibrate ------------------------------------------------------------------------------------------
def _calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", default="runs/demo/policy", help="policy checkpoint folder or URI")
    p.add_argument("--data", default="runs/demo/data", help="prepared + embedded shard folder")
    p.add_argument(
        "--split",
        default="val",
        choices=["val", "test", "train", "all"],
        help="which prompts to calibrate on (default: the validation split)",
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-cost", type=float, help="USD: expected mean cost per query to meet")
    target.add_argument(
        "--target-largest-share", type=float, help="share of queries (0..1) that may go to the largest model"
    )
    p.add_argument("--grid-points", type=int, default=21, help="w_c grid over [0, 1] (default 21: steps of 0.05)")
    p.add_argument("--out", help="write the calibration JSON here (the router's `calibration:` setting)")


@command(
    "calibrate", "find the preference w_c that meets a cost budget (or largest-model share)", add_args=_calibrate_args
)
def _calibrate(args: argparse.Namespace) -> int:
    from barp_ray.serving.calibration import calibrate_from_shards
    from barp_ray.serving.config_sections import Budget

    if args.grid_points < 2:
        raise ValueError("--grid-points must be >= 2")
    cal = calibrate_from_shards(args.policy, args.data, args.split, args.grid_points)
    costs = ", ".join(f"{m}: ${c:.6f}" for m, c in sorted(cal.model_mean_cost.items(), key=lambda kv: kv[1]))
    print(f"policy {args.policy} ({cal.policy_version}); {cal.num_prompts} {args.split} prompts from {args.data}")
    print(f"mean cost per query of each model: {costs}\n")
    chosen, met = None, True
    if args.target_cost is not None or args.target_largest_share is not None:
        budget = Budget(max_cost_per_query=args.target_cost, max_largest_share=args.target_largest_share)
        chosen, met = cal.choose(budget)
        cal.extra["target"] = budget.model_dump(exclude_none=True)
        cal.extra["chosen_w_cost"] = chosen.w_cost
        cal.extra["met"] = met
    print(cal.markdown(chosen))
    if chosen is not None:
        what = (
            f"mean cost <= ${args.target_cost:.6f}/query"
            if args.target_cost is not None
            else f"share of {cal.largest_model} <= {args.target_largest_share:.3f}"
        )
        if met:
            print(
                f"\nchosen: w_c = {chosen.w_cost:.3f} (preference quality={1 - chosen.w_cost:.3f}, "
                f"cost={chosen.w_cost:.3f}): the best mean score ({chosen.mean_score:.4f}) with {what}; "
                f"expected ${chosen.mean_cost:.6f}/query, {chosen.largest_share:.1%} to {cal.largest_model}"
            )
        else:
            print(
                f"\nno w_c meets {what}; the closest is w_c = {chosen.w_cost:.3f} "
                f"(${chosen.mean_cost:.6f}/query, {chosen.largest_share:.1%} to {cal.largest_model})"
            )
    if args.out:
        print_outputs({"calibration": cal.save(args.out)})
    return 0 if met else 1


# ---- serve-config ---------------------------------------------------------------------------------------
def _serve_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", help="policy checkpoint folder or URI (args.policy)")
    p.add_argument("--calibration", help="calibration JSON or shard folder (args.calibration)")
    p.add_argument("--data", help="RouterBench logs for the replay upstreams (args.replay_data)")
    p.add_argument("--log", help="decision log folder or URI (args.decision_log.path)")
    p.add_argument("--host", help="HTTP host (default from the template: 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port")
    p.add_argument("--template", default=str(DEFAULT_TEMPLATE), help="Serve config to start from")
    p.add_argument("--out", required=True, help="where to write the Serve config YAML")


@command(
    "serve-config", "write a Serve config YAML for `serve run` from the committed template", add_args=_serve_config_args
)
def _serve_config(args: argparse.Namespace) -> int:
    from ray.serve.schema import ServeDeploySchema

    from barp_ray.serving.config import ServeAppConfig

    doc = yaml.safe_load(Path(args.template).read_text())
    apps = [a for a in doc["applications"] if a.get("import_path", "").startswith("barp_ray.serving.app")]
    if len(apps) != 1:
        raise ValueError(f"{args.template}: expected one application with import_path barp_ray.serving.app:build_app")
    app_args = apps[0].setdefault("args", {})
    for key, value in (("policy", args.policy), ("calibration", args.calibration), ("replay_data", args.data)):
        if value is not None:
            app_args[key] = value
    if args.log is not None:
        app_args.setdefault("decision_log", {})["path"] = args.log
    if args.host is not None:
        doc["http_options"]["host"] = args.host
    if args.port is not None:
        doc["http_options"]["port"] = args.port
    ServeAppConfig.model_validate(app_args)
    ServeDeploySchema.model_validate(doc)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    print_outputs({"serve config": out})
    print(f"\nstart it with: serve run {out}")
    return 0


# ---- rollout --------------------------------------------------------------------------------------------
def _rollout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy",
        required=True,
        help="the new checkpoint: a folder (made absolute; it must be readable where the router "
        "replicas run) or an s3:// / gs:// URI",
    )
    p.add_argument("--app", default="barp", help="Serve application name (default: barp, as in serve/offline.yaml)")
    p.add_argument(
        "--calibration",
        help="calibration JSON or shard folder for the new policy (default: the app's; "
        "a shard folder is recalibrated for the new policy)",
    )
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else auto)")
    p.add_argument(
        "--dashboard-address",
        help="Ray dashboard URL for Serve's REST API (default: $RAY_DASHBOARD_ADDRESS, else the connected "
        "cluster's dashboard)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every replica (default 300)")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the checks made here (checkpoint readable, models cover the upstreams); the replicas "
        "check again and refuse a bad policy",
    )


@command(
    "rollout",
    "roll a new policy checkpoint out to a running router app, in place (Serve user_config)",
    add_args=_rollout_args,
)
def _rollout(args: argparse.Namespace) -> int:
    from barp_ray.ray_connect import connect
    from barp_ray.serving.rollout import rollout

    connect(args.address, existing_only=True, quiet=True)
    result = rollout(
        args.policy,
        app=args.app,
        calibration=args.calibration,
        timeout_s=args.timeout,
        check=not args.no_check,
        address=args.dashboard_address,
    )
    print(
        f"{result.app}: policy {result.old_version} -> {result.new_version} ({result.policy}) on "
        f"{len(result.replicas)} router replica(s) in {result.seconds:.1f}s, rollout {result.rollout_id}"
    )
    for replica, status in sorted(result.replicas.items()):
        print(f"  replica {replica} (pid {status['pid']}): {status['policy_version']} since {status['loaded_at']}")
    if result.restarted:
        print(f"note: replicas {result.restarted} went away during the rollout (restarted or scaled down)")
    else:
        print(
            "no replica was restarted: decisions log policy_version "
            f"{result.new_version} from now on (read_decision_log(...).policy_version)"
        )
    return 0
