"""Upstream backends (one Serve deployment per candidate model) and their common protocol.

Every upstream deployment exposes, through its DeploymentHandle:

- ``complete(payload) -> dict``: ``{"text", "finish_reason", "cost_usd", "prompt_tokens",
  "completion_tokens", "upstream_model", ...}``
- ``stream(payload)`` (call with ``handle.options(stream=True)``): yields ``{"delta": str}`` chunks, then one
  ``{"done": True, "finish_reason", "cost_usd", "prompt_tokens", "completion_tokens"}``
- ``info() -> dict``: ``{"model", "kind", "mean_cost_usd"}``

``payload`` is ``{"messages": [OpenAI message dicts], "params": {temperature, max_tokens, ...},
"request_id": str}``. Failures raise ``UpstreamError``; the router then falls back to the next model.

Kinds: ``ReplayBackend`` (RouterBench's recorded answers and costs: the offline default) and
``OpenAIBackend`` (any OpenAI-compatible endpoint: vLLM, Ray Serve LLM, a hosted API).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from ray import serve

from barp_ray.serving.config import OpenAISettings, ReplaySettings

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class UpstreamError(RuntimeError):
    """An upstream could not answer (error status, timeout, simulated failure, ...)."""


def message_text(message: dict) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")


def approx_tokens(text: str) -> int:
    """Rough token count (about 4 characters per token) for replayed answers, which have no usage."""
    return max(1, len(text) // 4) if text else 0


# ---- replay ---------------------------------------------------------------------------------------------
class ReplayBackend:
    """Answers a RouterBench prompt with `model`'s recorded response and cost.

    A prompt is looked up by the hash of the message text (all contents joined by blank lines, as the
    router embeds it), then by the last user message alone. Unknown prompts get a placeholder answer at
    the model's mean cost (`on_miss: placeholder`) or fail (`on_miss: error`).
    """

    def __init__(self, model: str, settings: ReplaySettings | dict | None = None, seed: int | None = None) -> None:
        from barp_ray.config import default_data_dir
        from barp_ray.data.readers import load_raw
        from barp_ray.data.table import prompt_hash

        self.model = model
        self.settings = ReplaySettings.model_validate(settings or {})
        self._hash = prompt_hash
        data = self.settings.data or str(default_data_dir())
        raw = load_raw(data, with_responses=True, models=[model])
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
        await self._simulate()
        messages = payload.get("messages") or []
        answer, cost, pid, hit = self.lookup(messages)
        prompt = "\n\n".join(message_text(m) for m in messages)
        return {
            "text": answer, "finish_reason": "stop", "cost_usd": cost, "upstream_model": self.model,
            "prompt_tokens": approx_tokens(prompt), "completion_tokens": approx_tokens(answer),
            "replay_hit": hit, "replay_prompt_id": pid,
        }

    async def stream(self, payload: dict) -> AsyncIterator[dict]:
        result = await self.complete(payload)
        text, step = result["text"], self.settings.stream_chunk_chars
        for start in range(0, len(text), step):
            yield {"delta": text[start : start + step]}
            if self.settings.stream_delay_s:
                await asyncio.sleep(self.settings.stream_delay_s)
        yield {"done": True, **{k: v for k, v in result.items() if k != "text"}}


# ---- OpenAI-compatible ----------------------------------------------------------------------------------
class OpenAIBackend:
    """Calls `{base_url}/chat/completions` with retries (connection errors, 429, 5xx) and a timeout."""

    def __init__(self, model: str, settings: OpenAISettings | dict) -> None:
        self.model = model
        self.settings = OpenAISettings.model_validate(settings)
        self.model_name = self.settings.model_name or model
        self.api_key = os.environ.get(self.settings.api_key_env) if self.settings.api_key_env else None
        if self.settings.api_key_env and not self.api_key:
            logger.warning("upstream %s: env var %s is not set; calling without an API key",
                           model, self.settings.api_key_env)
        self._client = None

    @property
    def client(self):
        import httpx

        if self._client is None:
            headers = {"Content-Type": "application/json", **self.settings.extra_headers}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            self._client = httpx.AsyncClient(
                base_url=self.settings.base_url.rstrip("/"), headers=headers,
                timeout=httpx.Timeout(self.settings.timeout_s),
            )
        return self._client

    def info(self) -> dict:
        return {"model": self.model, "kind": "openai", "mean_cost_usd": None, "base_url": self.settings.base_url}

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        s = self.settings
        if s.usd_per_1k_input is None or s.usd_per_1k_output is None or prompt_tokens is None:
            return None
        return (prompt_tokens * s.usd_per_1k_input + (completion_tokens or 0) * s.usd_per_1k_output) / 1000.0

    def _body(self, payload: dict, stream: bool) -> dict:
        body = {**self.settings.extra_body, **(payload.get("params") or {})}
        body.update(model=self.model_name, messages=payload.get("messages") or [], stream=stream)
        if stream and self.settings.stream_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    async def _retrying(self, attempt_fn):
        import httpx

        delay = self.settings.retry_backoff_s
        for attempt in range(self.settings.max_retries + 1):
            try:
                return await attempt_fn()
            except httpx.HTTPStatusError as exc:
                status = exc.response.status_code
                if status not in RETRY_STATUS or attempt == self.settings.max_retries:
                    raise UpstreamError(f"{self.model}: HTTP {status} from {self.settings.base_url}: "
                                        f"{exc.response.text[:300]}") from None
            except httpx.TransportError as exc:  # connect / read timeouts, refused, reset
                if attempt == self.settings.max_retries:
                    raise UpstreamError(f"{self.model}: {type(exc).__name__} calling {self.settings.base_url}: "
                                        f"{exc}") from None
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def complete(self, payload: dict) -> dict:
        async def once():
            response = await self.client.post("/chat/completions", json=self._body(payload, stream=False))
            response.raise_for_status()
            return response.json()

        data = await self._retrying(once)
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError) as exc:
            raise UpstreamError(f"{self.model}: malformed response ({exc}): {json.dumps(data)[:300]}") from None
        usage = data.get("usage") or {}
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return {
            "text": text, "finish_reason": choice.get("finish_reason") or "stop", "cost_usd": self.cost(pt, ct),
            "prompt_tokens": pt, "completion_tokens": ct, "upstream_model": data.get("model", self.model_name),
        }

    async def stream(self, payload: dict) -> AsyncIterator[dict]:
        import httpx

        body = self._body(payload, stream=True)
        finish, usage = "stop", {}

        async def open_stream():
            request = self.client.build_request("POST", "/chat/completions", json=body)
            response = await self.client.send(request, stream=True)
            if response.status_code >= 400:
                await response.aread()
                await response.aclose()
                response.raise_for_status()
            return response

        response = await self._retrying(open_stream)  # retries only until the first byte
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    continue
                if chunk.get("error"):
                    raise UpstreamError(f"{self.model}: stream error {json.dumps(chunk['error'])[:300]}")
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        yield {"delta": delta}
                    finish = choice.get("finish_reason") or finish
        except httpx.TransportError as exc:
            raise UpstreamError(f"{self.model}: stream broken: {type(exc).__name__}: {exc}") from None
        finally:
            await response.aclose()
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        yield {"done": True, "finish_reason": finish, "cost_usd": self.cost(pt, ct), "prompt_tokens": pt,
               "completion_tokens": ct, "upstream_model": self.model_name}

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# ---- Serve deployments ----------------------------------------------------------------------------------
class _UpstreamDeployment:
    backend: Any

    async def complete(self, payload: dict) -> dict:
        return await self.backend.complete(payload)

    async def stream(self, payload: dict) -> AsyncIterator[dict]:
        async for chunk in self.backend.stream(payload):
            yield chunk

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
