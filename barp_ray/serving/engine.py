"""The routing forward pass (encoder + BaRP policy) and the choice rule, free of Ray.

The router replica wraps `RoutingEngine.forward` in `@serve.batch`; the latency benchmark calls the same
`forward` in-process as the baseline. The engine serves with the encoder the policy was trained with
(backend and token budget from the checkpoint's encoder id) unless the config overrides it; an override that
changes the embeddings is refused unless `encoding.allow_encoder_mismatch` is set, and then the decision
agreement with the training encoder is measured on built-in probe prompts and logged at start. Embeddings
go through a bounded LRU (`decision_cache.py`), so a repeated prompt skips the encoder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from barp_ray.embeddings.encoder import Backend, EncoderSpec, Truncation
from barp_ray.policy.checkpoint import policy_version, read_checkpoint_file, read_policy_spec

__all__ = [
    "Choice",
    "EncoderMismatchError",
    "EncodingConfig",
    "RoutingEngine",
    "choose",
    "policy_version",
    "read_checkpoint_file",
    "read_policy_spec",
]

log = logging.getLogger(__name__)

# probe prompts for the agreement check of a mismatched encoder: chat, code, maths, multiple choice, long
PROBE_PROMPTS = [
    "hello",
    "What is 2 + 2?",
    "Translate 'good morning' into French.",
    "Write a python function to reverse a string.",
    "Write a SQL query that returns the ten newest orders.",
    "Explain the difference between a process and a thread.",
    "Summarise the plot of Hamlet in two sentences.",
    "Is 1013 a prime number? Explain.",
    "Solve for x: 3x + 7 = 22.",
    "Which gas do plants absorb from the air? A) oxygen B) carbon dioxide C) nitrogen D) helium Answer:",
    "The trophy doesn't fit into the suitcase because _ is too large. A) trophy B) suitcase Answer:",
    "Write a haiku about the sea.",
    "Give me three ideas for a birthday party for a seven-year-old.",
    "def fib(n):\n    '''Return the n-th Fibonacci number.'''\n",
    "Prove that the square root of 2 is irrational.",
    "What are the side effects of ibuprofen?",
    "Please answer with the letter of the correct answer.\n\n" + "Question: which is larger, 3/4 or 2/3? "
    "A) 3/4 B) 2/3\nAnswer: A\n\n" * 12 + "Question: which is larger, 5/8 or 3/5? A) 5/8 B) 3/5\nAnswer:",
    "Write a detailed essay on the causes of the first world war, " * 20,
]


class EncodingConfig(BaseModel):
    """How a router replica runs the encoder (empty: exactly as the policy was trained)."""

    model_config = ConfigDict(extra="forbid")

    backend: Backend | None = Field(
        default=None,
        description="None: the backend the policy was trained with "
        "(checkpoint's encoder id); torch / onnx / onnx-int8 to override",
    )
    max_seq_length: int | None = Field(
        default=None, ge=8, le=512, description="None: the token budget the policy was trained with"
    )
    truncation: Truncation | None = Field(
        default=None, description="None: as trained; right / left to override which end of a long prompt is cut"
    )
    allow_encoder_mismatch: bool = Field(
        default=False,
        description="serve with an encoder (backend / token budget / model) other than the "
        "training one; the decision agreement on built-in probe prompts x 11 w_c values is logged at start",
    )
    device: str = Field(default="auto", description="auto: CUDA when Ray gave the replica a GPU, else CPU")
    threads: int | None = Field(
        default=None,
        ge=1,
        description="ONNX Runtime intra-op threads (None: router.torch_threads, else OMP_NUM_THREADS)",
    )
    decision_cache_bytes: int = Field(
        default=32 * 1024**2,
        ge=0,
        description="LRU of prompt embeddings per replica, bounded in bytes (about 1.8 KB a prompt); 0 turns it off",
    )


class EncoderMismatchError(ValueError):
    """Serving would embed prompts differently from training, and the config did not allow it."""


@dataclass
class Choice:
    index: int  # chosen model index
    propensity: float  # probability that this serving rule picks `index` (the behaviour policy)
    ranking: list[int]  # fallback order: the chosen model first, then by descending probability
    explored: bool  # True when the choice differs from the argmax because of exploration


def choose(
    probs: np.ndarray,
    mode: str = "greedy",
    epsilon: float = 0.0,
    rng: np.random.Generator | None = None,
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


def serving_encoder(trained_id: str, encoder: str | None, options: EncodingConfig) -> tuple[EncoderSpec, EncoderSpec]:
    """(the encoder the policy was trained with, the one serving will use); raises on an unallowed mismatch."""
    trained = EncoderSpec.parse(trained_id)
    served = EncoderSpec(encoder or trained.name, trained.backend, trained.max_seq_length, trained.truncation)
    served = served.with_overrides(options.backend, options.max_seq_length, options.truncation)
    if not served.same_encoder(trained) and not options.allow_encoder_mismatch:
        raise EncoderMismatchError(
            f"train/serve skew: the policy was trained on embeddings from {trained.id!r} (backend "
            f"{trained.backend}, max_seq_length {trained.max_seq_length}, truncation {trained.truncation}) but "
            f"serving would use {served.id!r} (backend {served.backend}, max_seq_length {served.max_seq_length}, "
            f"truncation {served.truncation}). Serve with the training encoder (remove `encoding.backend` / "
            "`encoding.max_seq_length` / `encoding.truncation` / `encoder`), retrain on embeddings of the "
            "new one, or set `encoding.allow_encoder_mismatch: true` to accept the skew (the decision "
            "agreement is then measured and logged at start)"
        )
    return trained, served


class RoutingEngine:
    """Loads a checkpoint and its encoder once; `forward(texts, w_costs)` -> pi(.|x, w) as (B, K) numpy."""

    def __init__(
        self,
        policy: str,
        encoder: str | None = None,
        device: str = "cpu",
        encoder_model=None,
        options: EncodingConfig | None = None,
        metrics: bool = False,
    ) -> None:
        """`encoder_model`: an already-loaded encoder to share (a policy rollout keeps the replica's encoder
        and its decision cache); used when it is the serving encoder (a raw encoder without a spec is
        trusted), else a fresh one is loaded. `metrics`: export the decision cache's Ray Serve metrics."""
        import torch  # noqa: F401  (heavy imports stay out of module import)

        from barp_ray.embeddings.encoder import auto_device, embedding_dim, encoder_spec_of, load_encoder
        from barp_ray.policy.checkpoint import load_policy
        from barp_ray.serving.decision_cache import CachedEncoder, CacheMetrics, EmbeddingLRU

        options = options or EncodingConfig(device=device)
        self.location = str(policy)
        spec_doc = read_policy_spec(self.location)
        self.trained_encoder, self.served_encoder = serving_encoder(spec_doc["encoder"], encoder, options)
        self.device = auto_device(self.served_encoder.backend, options.device)
        self.policy = load_policy(self.location, device=self.device if self.device.startswith("cuda") else "cpu")
        self.spec = self.policy.spec
        if self.spec.pooling != "mean":
            raise ValueError(
                f"policy {self.location} pools the encoder's token states (pooling: {self.spec.pooling}), which "
                "serving does not compute: serve a policy trained with pooling: mean (the default)"
            )
        self.models: list[str] = list(self.spec.models)
        self.version = policy_version(self.location)
        self.encoder_name = self.served_encoder.id
        shared_spec = encoder_spec_of(encoder_model) if encoder_model is not None else None
        if encoder_model is not None and (shared_spec is None or shared_spec.same_encoder(self.served_encoder)):
            self.encoder = encoder_model
        else:
            model = load_encoder(self.served_encoder, device=self.device, threads=options.threads)
            self.encoder = model
            if options.decision_cache_bytes > 0:
                cache_metrics = CacheMetrics(self.encoder_name) if metrics else None
                self.encoder = CachedEncoder(
                    model, EmbeddingLRU(options.decision_cache_bytes, self.encoder_name, cache_metrics)
                )
        dim = embedding_dim(self.encoder)
        if dim != self.spec.embed_dim:
            raise ValueError(
                f"encoder {self.encoder_name!r} gives {dim}-dim embeddings, the policy expects "
                f"{self.spec.embed_dim} (it was trained on {self.spec.encoder!r})"
            )
        self.encoder_agreement: float | None = None
        if not self.served_encoder.same_encoder(self.trained_encoder):
            self.encoder_agreement = self.measure_agreement(options.threads)
            log.warning(
                "serving policy %s with encoder %s although it was trained on %s (allow_encoder_mismatch): "
                "decision agreement %.1f%% on %d probe prompts x 11 w_c values",
                self.version,
                self.served_encoder.id,
                self.trained_encoder.id,
                100 * self.encoder_agreement,
                len(PROBE_PROMPTS),
            )

    @property
    def decision_cache(self):
        """The replica's `EmbeddingLRU`, or None when the cache is off."""
        return getattr(self.encoder, "cache", None)

    def measure_agreement(self, threads: int | None = None, prompts: list[str] | None = None) -> float:
        """Share of (probe prompt, w_c on an 11-point grid) greedy decisions that are the same with the
        serving encoder's embeddings as with the training encoder's."""
        from barp_ray.embeddings.encoder import encode, load_encoder

        prompts = prompts or PROBE_PROMPTS
        reference = load_encoder(self.trained_encoder, device="cpu", threads=threads)
        ref_emb = encode(reference, prompts)
        del reference
        grid = np.linspace(0.0, 1.0, 11)
        texts = [p for p in prompts for _ in grid]
        w = [float(x) for _ in prompts for x in grid]
        served = self.forward(texts, w).argmax(axis=1)
        trained = self.forward(None, w, embeddings=np.repeat(ref_emb, len(grid), axis=0)).argmax(axis=1)
        return float((served == trained).mean())

    def embed(self, texts: list[str]) -> np.ndarray:
        from barp_ray.embeddings.encoder import encode

        return encode(self.encoder, texts, batch_size=max(1, len(texts)))

    def forward(
        self, texts: list[str] | None, w_costs: list[float], embeddings: np.ndarray | None = None
    ) -> np.ndarray:
        """pi(.|x, w) for `texts` (embedded here, through the decision cache) or for given `embeddings` (B, D)
        at the w_c values: (B, K) float64."""
        import torch

        from barp_ray.policy.model import preference_tensor

        if embeddings is None:
            if len(texts) != len(w_costs):
                raise ValueError(f"{len(texts)} texts but {len(w_costs)} preferences")
            embeddings = self.embed(texts)
        dev = next(self.policy.parameters()).device
        emb = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32, device=dev)
        w = preference_tensor(torch.as_tensor(w_costs, dtype=torch.float32, device=dev))
        with torch.inference_mode():
            probs = torch.softmax(self.policy(emb, w), dim=-1)
        return probs.cpu().numpy().astype(np.float64)
