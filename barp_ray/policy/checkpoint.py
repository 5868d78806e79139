"""Self-describing policy checkpoints: weights plus the spec (models, tau, encoder, head).

The only place that reads checkpoint files: `load_policy` (weights), `read_policy_spec` (the spec, without
torch weights), `policy_version` (content hash), `read_checkpoint_file` (one file, local or a pyarrow URI).
`spec.encoder` is the encoder id of the embeddings the policy was trained on (backend and token budget
included, see `barp_ray.embeddings.encoder.EncoderSpec`); `policy.json` also spells it out as `encoder_spec`.
"""

from __future__ import annotations

import hashlib
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
    doc = {
        "spec": policy.spec.model_dump(mode="json"),
        "extra": extra or {},
        "encoder_spec": _encoder_provenance(policy.spec.encoder),
    }
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
    with tempfile.TemporaryDirectory() as tmp:
        for name in (WEIGHTS_FILE, SPEC_FILE):
            (Path(tmp) / name).write_bytes(read_checkpoint_file(uri, name))
        return load_policy(tmp, device)


def _encoder_provenance(encoder_id: str) -> dict:
    from barp_ray.embeddings.encoder import EncoderSpec

    try:
        return EncoderSpec.parse(encoder_id).as_dict()
    except ValueError:
        return {"id": encoder_id}


def read_checkpoint_file(location: str | Path, name: str) -> bytes:
    """One file of a checkpoint folder, local or a pyarrow URI (s3://, gs://, file://)."""
    location = str(location)
    if "://" in location and not location.startswith("file://"):
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(location)
        with fs.open_input_stream(f"{root.rstrip('/')}/{name}") as src:
            return src.read()
    return (Path(location.removeprefix("file://")) / name).read_bytes()


def read_policy_spec(location: str | Path) -> dict:
    """The checkpoint's spec dict (models, tau, encoder, ...) without loading torch."""
    try:
        raw = read_checkpoint_file(location, SPEC_FILE)
    except (FileNotFoundError, OSError) as exc:
        raise FileNotFoundError(
            f"{location}: not a BaRP policy checkpoint ({SPEC_FILE} unreadable: {exc}); point `policy` at the "
            "`policy/` folder written by `barp train` (runs/demo/policy after `barp demo`)"
        ) from exc
    return json.loads(raw)["spec"]


def policy_version(location: str | Path) -> str:
    """Content hash of the checkpoint (spec + weights): sha256, first 16 hex digits."""
    digest = hashlib.sha256()
    for name in (SPEC_FILE, WEIGHTS_FILE):
        digest.update(read_checkpoint_file(location, name))
    return digest.hexdigest()[:16]
