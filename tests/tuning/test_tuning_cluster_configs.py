"""cluster.yaml via Ray's own autoscaler config code; KubeRay manifests; Serve config via Serve's schema."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _barp_args(command: str) -> list[str]:
    """The `barp` arguments of a `python -m barp_ray.cli ...` command line."""
    words = shlex.split(command)
    i = words.index("barp_ray.cli")
    return words[i + 1 :]


def _parse_barp(argv: list[str]):
    from barp_ray import cli

    cli.register_optional_commands()
    return cli.build_parser().parse_args(argv)


def test_cluster_yaml_passes_ray_up_validation():
    """What `ray up` does before touching the cloud: fill defaults, then validate against ray-schema.json."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load(REPO / "cluster.yaml")
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert "GPU" not in head["resources"]  # CPU head
    gpu = [n for name, n in nodes.items() if name != config["head_node_type"] and n["resources"].get("GPU")]
    assert gpu and gpu[0]["max_workers"] > gpu[0].get("min_workers", 0)  # an autoscaling GPU group
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "barp-ray" in setup  # installs this package
    assert "BARP_STORAGE_PATH=" in setup  # the storage path every job uses
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2  # token auth on, deliberately
    assert any("auth_token" in k for k in config["file_mounts"])


def test_cluster_yaml_validation_really_checks():
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = _load(REPO / "cluster.yaml")
    broken["available_node_types"]["worker.gpu"]["resources"] = {"GPU": "one"}
    with pytest.raises(Exception, match="one"):
        validate_config(prepare_config(broken))


def _check_ray_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == "2.60.0"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    containers = head["template"]["spec"]["containers"]
    assert containers and containers[0]["image"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and group["maxReplicas"] >= group.get("minReplicas", 0)
        assert group["template"]["spec"]["containers"][0]["image"]
    every = [containers[0]] + [g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]]
    for container in every:  # token auth on every Ray container, the token from a Secret
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]


def test_kuberay_rayjob_manifest():
    job = _load(REPO / "deploy" / "rayjob-train.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    _check_ray_cluster_spec(spec["rayClusterSpec"])
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    args = _parse_barp(_barp_args(spec["entrypoint"]))  # the entrypoint is a valid `barp train` command
    from barp_ray.cli_support import flag_overrides

    given = flag_overrides(args)
    assert args.command == "train" and given["use_gpu"] and given["storage_path"].startswith("s3://")
    gpu_groups = [
        g
        for g in spec["rayClusterSpec"]["workerGroupSpecs"]
        if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
    ]
    assert gpu_groups
    submitter_env = {e["name"] for e in spec["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= submitter_env


def test_kuberay_rayservice_manifest_and_serve_schema():
    from ray.serve.schema import ServeDeploySchema

    svc = _load(REPO / "deploy" / "rayservice-router.yaml")
    assert svc["apiVersion"] == "ray.io/v1" and svc["kind"] == "RayService"
    _check_ray_cluster_spec(svc["spec"]["rayClusterConfig"])
    serve = ServeDeploySchema.model_validate(yaml.safe_load(svc["spec"]["serveConfigV2"]))
    (app,) = serve.applications
    assert app.import_path == "barp_ray.serving.app:build_app"
    assert app.args["policy"]


def test_dockerfile_and_submit_script_exist():
    assert "pip install" in (REPO / "deploy" / "Dockerfile").read_text()
    script = REPO / "scripts" / "submit_train.sh"
    assert script.stat().st_mode & 0o111 and "ray job submit" not in script.read_text().split("\n")[0]
    assert "barp_ray.cli train" in script.read_text()
