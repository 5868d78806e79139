"""Upstream backends (one Serve deployment per candidate model): the replay backend and the deployments.

Every upstream deployment speaks the protocol of `barp_ray.serving.upstream_protocol` (``complete``,
``stream``, ``info``; errors answered as values, ``UpstreamError.to_dict()``).

Kinds: ``ReplayBackend`` (RouterBench's recorded answers and costs: the offline default) and
``OpenAIBackend`` (`barp_ray.serving.openai_backend`: any OpenAI-compatible endpoint through
``openai.AsyncOpenAI``: vLLM, Ray Serve LLM, a hosted API; the SDK retries connection errors, 408, 409, 429
and 5xx with jittered exponential backoff and honours ``Retry-After``). Their Serve deployments:
``ReplayUpstream`` and ``OpenAIUpstream``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from ray import serve

from barp_ray.serving.config_sections import ReplaySettings
from barp_ray.serving.openai_backend import OpenAIBackend
from barp_ray.serving.upstream_protocol import UpstreamError, approx_tokens, message_text, usage_dict

logger = logging.getLogger(__name__)


# ---- replay ---------------------------------------------------------------------------------------------
class ReplayBackend:
    """Answers a RouterBench prompt with `model`'s recorded response and cost, in OpenAI's format.

    A prompt is looked up by the hash of the message text (all contents joined by blank lines, as the
    router embeds it), then by the last user message alone. Unknown prompts get a placeholder answer at
    the model's mean cost (`on_miss: placeholder`) or fail (`on_miss: error`). `n` > 1 is refused (400).
    """

    def __init__(self, model: str, settings: ReplaySettings | dict | None = None, seed: int | None = None) -> None:
        from barp_ray.config import default_data_dir
        from barp_ray.data.readers import load_raw
        from barp_ray.data.table import prompt_hash

        self.model = model
        self.settings = ReplaySettings.model_validate(settings or {})
        self._hash = prompt_hash
        data = self.settings.data or str(default_data_dir())
        raw = load_raw(data, with_responses=True, models=[model], allow_pickle=self.settings.allow_pickle)
        if raw.responses is None:
            raise ValueError(f"{data}: no recorded responses for {model!r} (no '{model}|model_response' column)")
        self._answers: dict[str, tuple[str, float | None, str]] = {}
        for pid, prompt, response, cost in zip(
            raw.prompt_ids, raw.prompts, raw.responses[:, 0], raw.costs[:, 0], strict=True
        ):
            if response is None or (isinstance(response, float) and np.isnan(response)):
                continue
            key = prompt_hash(prompt)
            if key not in self._answers:
                self._answers[key] = (str(response), None if np.isnan(cost) else float(cost), str(pid))
        costs = raw.costs[:, 0]
        self.mean_cost = float(np.nanmean(costs)) if np.isfinite(costs).any() else None
        self._rng = random.Random(seed)
        self.data = data
        del raw

    def __len__(self) -> int:
        return len(self._answers)

    def info(self) -> dict:
        return {"model": self.model, "kind": "replay", "mean_cost_usd": self.mean_cost, "prompts": len(self)}

    def lookup(self, messages: list[dict]) -> tuple[str, float | None, str | None, bool]:
        """(answer, cost, RouterBench prompt id, hit)."""
        full = "\n\n".join(t for t in (message_text(m) for m in messages) if t)
        last_user = next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
        for text in (full, last_user):
            hit = self._answers.get(self._hash(text)) if text else None
            if hit is not None:
                return hit[0], hit[1], hit[2], True
        if self.settings.on_miss == "error":
            raise UpstreamError(f"replay upstream {self.model}: no recorded response for this prompt")
        answer = (
            f"[replay {self.model}] No recorded answer for this prompt: the replay upstream only knows the "
            "RouterBench prompts it was given. Bind an OpenAI-compatible upstream for live answers."
        )
        return answer, self.mean_cost, None, False

    async def _simulate(self) -> None:
        if self.settings.latency_s:
            await asyncio.sleep(self.settings.latency_s)
        if self.settings.error_rate and self._rng.random() < self.settings.error_rate:
            raise UpstreamError(
                f"replay upstream {self.model}: simulated failure (error_rate={self.settings.error_rate})"
            )

    async def complete(self, payload: dict) -> dict:
        n = (payload.get("params") or {}).get("n")
        if n is not None and n != 1:
            raise UpstreamError(
                f"n: the replay upstream {self.model} answers n=1 only (got {n})",
                status=400,
                type_="invalid_request_error",
                param="n",
                code="unsupported_value",
            )
        await self._simulate()
        messages = payload.get("messages") or []
        answer, cost, pid, hit = self.lookup(messages)
        prompt = "\n\n".join(message_text(m) for m in messages)
        pt, ct = approx_tokens(prompt), approx_tokens(answer)
        completion = {
            "id": f"chatcmpl-{payload.get('request_id') or 'replay'}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage_dict(pt, ct),
        }
        return {
            "completion": completion,
            "text": answer,
            "finish_reason": "stop",
            "cost_usd": cost,
            "upstream_model": self.model,
            "prompt_tokens": pt,
            "completion_tokens": ct,
            "replay_hit": hit,
            "replay_prompt_id": pid,
        }

    async def stream(self, payload: dict) -> AsyncIterator[dict]:
        result = await self.complete(payload)
        text, step = result["text"], self.settings.stream_chunk_chars
        base = {k: result["completion"][k] for k in ("id", "object", "created", "model")}
        base["object"] = "chat.completion.chunk"

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        yield {"chunk": chunk({"role": "assistant", "content": ""})}
        for start in range(0, len(text), step):
            piece = text[start : start + step]
            yield {"chunk": chunk({"content": piece}), "delta": piece}
            if self.settings.stream_delay_s:
                await asyncio.sleep(self.settings.stream_delay_s)
        yield {"chunk": chunk({}, "stop")}
        yield {
            "done": True,
            "usage": result["completion"]["usage"],
            **{k: v for k, v in result.items() if k not in ("text", "completion")},
        }


# ---- Serve deployments ----------------------------------------------------------------------------------
class _UpstreamDeployment:
    backend: Any

    async def complete(self, payload: dict) -> dict:
        try:
            return await self.backend.complete(payload)
        except UpstreamError as exc:
            return {"error": exc.to_dict()}

    async def stream(self, payload: dict) -> AsyncIterator[dict]:
        try:
            async for item in self.backend.stream(payload):
                yield item
        except UpstreamError as exc:
            yield {"error": exc.to_dict()}

    def info(self) -> dict:
        return self.backend.info()

    def check_health(self) -> None:  # Serve health check: constructing the backend is the real check
        return None


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.05})
class ReplayUpstream(_UpstreamDeployment):
    """A candidate model answered from RouterBench's recorded responses."""

    def __init__(self, model: str, settings: dict) -> None:
        self.backend = ReplayBackend(model, settings)
        logger.info("replay upstream %s: %d recorded answers from %s", model, len(self.backend), self.backend.data)


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.05})
class OpenAIUpstream(_UpstreamDeployment):
    """A candidate model behind an OpenAI-compatible HTTP endpoint."""

    def __init__(self, model: str, settings: dict) -> None:
        self.backend = OpenAIBackend(model, settings)

    async def __del__(self) -> None:
        await self.backend.aclose()
