"""Self-describing policy checkpoints: weights plus the spec (models, tau, encoder, head)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from barp_ray.policy.model import BarpPolicy, PolicySpec

WEIGHTS_FILE = "policy.pt"
SPEC_FILE = "policy.json"


def save_policy(policy: BarpPolicy, directory: str | Path, extra: dict | None = None) -> Path:
    """Write `policy.pt` (state dict) and `policy.json` (spec + `extra`, e.g. training metadata)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in policy.state_dict().items()}
    torch.save(state, directory / WEIGHTS_FILE)
    doc = {"spec": policy.spec.model_dump(mode="json"), "extra": extra or {}}
    (directory / SPEC_FILE).write_text(json.dumps(doc, indent=2))
    return directory


def read_policy_metadata(directory: str | Path) -> dict:
    """The `extra` dict saved with a checkpoint (empty if none)."""
    return json.loads((Path(directory) / SPEC_FILE).read_text()).get("extra", {})


def load_policy(location: str | Path, device: str | torch.device = "cpu") -> BarpPolicy:
    """Load a policy from a local directory or a URI pyarrow understands (s3://, gs://, file://)."""
    location = str(location)
    if "://" in location and not location.startswith("file://"):
        return _load_remote(location, device)
    directory = Path(location.removeprefix("file://"))
    spec_path = directory / SPEC_FILE
    if not spec_path.exists():
        raise FileNotFoundError(
            f"{directory} is not a BaRP policy checkpoint: {SPEC_FILE} is missing "
            "(point at the `policy/` folder written by `barp train`)"
        )
    spec = PolicySpec.model_validate(json.loads(spec_path.read_text())["spec"])
    policy = BarpPolicy(spec)
    policy.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location=device, weights_only=True))
    return policy.to(device).eval()


def _load_remote(uri: str, device: str | torch.device) -> BarpPolicy:
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        for name in (WEIGHTS_FILE, SPEC_FILE):
            with fs.open_input_stream(f"{root.rstrip('/')}/{name}") as src:
                (Path(tmp) / name).write_bytes(src.read())
        return load_policy(tmp, device)
