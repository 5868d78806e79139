"""The routing forward pass (MiniLM encoder + BaRP policy) and the choice rule, free of Ray.

The router replica wraps `RoutingEngine.forward` in `@serve.batch`; the latency benchmark calls the same
`forward` in-process as the baseline.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from barp_ray.policy.checkpoint import SPEC_FILE, WEIGHTS_FILE


def read_checkpoint_file(location: str, name: str) -> bytes:
    """One file of a checkpoint folder, local or a pyarrow URI (s3://, gs://, file://)."""
    location = str(location)
    if "://" in location and not location.startswith("file://"):
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(location)
        with fs.open_input_stream(f"{root.rstrip('/')}/{name}") as src:
            return src.read()
    return (Path(location.removeprefix("file://")) / name).read_bytes()


def read_policy_spec(location: str) -> dict:
    """The checkpoint's spec dict (models, tau, encoder, ...) without loading torch."""
    try:
        raw = read_checkpoint_file(location, SPEC_FILE)
    except (FileNotFoundError, OSError) as exc:
        raise FileNotFoundError(
            f"{location}: not a BaRP policy checkpoint ({SPEC_FILE} unreadable: {exc}); point `policy` at the "
            "`policy/` folder written by `barp train` (runs/demo/policy after `barp demo`)"
        ) from exc
    return json.loads(raw)["spec"]


def policy_version(location: str) -> str:
    """Content hash of the checkpoint (spec + weights): sha256, first 16 hex digits."""
    digest = hashlib.sha256()
    for name in (SPEC_FILE, WEIGHTS_FILE):
        digest.update(read_checkpoint_file(location, name))
    return digest.hexdigest()[:16]


@dataclass
class Choice:
    index: int  # chosen model index
    propensity: float  # probability that this serving rule picks `index` (the behaviour policy)
    ranking: list[int]  # fallback order: the chosen model first, then by descending probability
    explored: bool  # True when the choice differs from the argmax because of exploration


def choose(
    probs: np.ndarray, mode: str = "greedy", epsilon: float = 0.0, rng: np.random.Generator | None = None,
    forced: int | None = None,
) -> Choice:
    """Pick a model from pi(.|x, w) (probs over the available models; zeros are never picked).

    greedy: argmax (propensity 1); sample: a ~ pi (propensity pi(a)); epsilon: argmax with probability
    1 - eps, else uniform over the available models. `forced` (a request naming a model) has propensity 1.
    """
    probs = np.asarray(probs, dtype=np.float64)
    available = np.flatnonzero(probs > 0)
    order = [int(i) for i in np.argsort(-probs, kind="stable") if probs[i] > 0]
    best = order[0]
    rng = rng or np.random.default_rng()
    if forced is not None:
        index, propensity = int(forced), 1.0
    elif mode == "sample":
        index = int(rng.choice(len(probs), p=probs / probs.sum()))
        propensity = float(probs[index] / probs.sum())
    elif mode == "epsilon" and epsilon > 0:
        index = int(rng.choice(available)) if rng.random() < epsilon else best
        propensity = epsilon / len(available) + (1.0 - epsilon) * (index == best)
    else:
        index, propensity = best, 1.0
    ranking = [index] + [i for i in order if i != index]
    return Choice(index=index, propensity=float(propensity), ranking=ranking, explored=index != best and forced is None)


class RoutingEngine:
    """Loads a checkpoint and its encoder once; `forward(texts, w_costs)` -> pi(.|x, w) as (B, K) numpy."""

    def __init__(
        self, policy: str, encoder: str | None = None, device: str = "cpu", encoder_model=None,
    ) -> None:
        """`encoder_model`: an already-loaded encoder to share (a policy rollout keeps the replica's MiniLM);
        it must be the encoder named by `encoder` (else the checkpoint's), which is not loaded again."""
        import torch  # noqa: F401  (heavy imports stay out of module import)

        from barp_ray.embeddings.encoder import load_encoder
        from barp_ray.policy.checkpoint import load_policy

        self.location = str(policy)
        self.policy = load_policy(self.location, device=device)
        self.spec = self.policy.spec
        self.models: list[str] = list(self.spec.models)
        self.version = policy_version(self.location)
        self.encoder_name = encoder or self.spec.encoder
        self.encoder = encoder_model if encoder_model is not None else load_encoder(self.encoder_name, device=device)
        enc = self.encoder
        dim = (getattr(enc, "get_embedding_dimension", None) or enc.get_sentence_embedding_dimension)()
        if dim != self.spec.embed_dim:
            raise ValueError(
                f"encoder {self.encoder_name!r} gives {dim}-dim embeddings, the policy expects "
                f"{self.spec.embed_dim} (it was trained on {self.spec.encoder!r})"
            )
        self.device = device

    def embed(self, texts: list[str]) -> np.ndarray:
        from barp_ray.embeddings.encoder import encode

        return encode(self.encoder, texts, batch_size=max(1, len(texts)))

    def forward(self, texts: list[str], w_costs: list[float]) -> np.ndarray:
        import torch

        from barp_ray.policy.model import preference_tensor

        if len(texts) != len(w_costs):
            raise ValueError(f"{len(texts)} texts but {len(w_costs)} preferences")
        emb = torch.as_tensor(self.embed(texts), dtype=torch.float32, device=self.device)
        w = preference_tensor(torch.as_tensor(w_costs, dtype=torch.float32, device=self.device))
        with torch.inference_mode():
            probs = torch.softmax(self.policy(emb, w), dim=-1)
        return probs.cpu().numpy().astype(np.float64)
