"""Upstream backends (one Serve deployment per candidate model) and their common protocol.

Every upstream deployment exposes, through its DeploymentHandle:

- ``complete(payload) -> dict``: ``{"completion": <OpenAI chat.completion dict, as the upstream sent it>,
  "cost_usd", "prompt_tokens", "completion_tokens", ...}``, or ``{"error": <UpstreamError.to_dict()>}``
- ``stream(payload)`` (call with ``handle.options(stream=True)``): yields ``{"chunk": <OpenAI
  chat.completion.chunk dict>}`` items, then one ``{"done": True, "usage", "cost_usd", "prompt_tokens",
  "completion_tokens", ...}``; an ``{"error": ...}`` item ends it early (first item: before any output).
- ``info() -> dict``: ``{"model", "kind", "mean_cost_usd"}``

``payload`` is ``{"messages": [OpenAI message dicts], "params": {every other request field to forward},
"request_id": str}``. Errors are answered as values (``UpstreamError.to_dict()``: status, message,
retryable), so the router can tell a client error (4xx: returned to the caller, no fallback) from a failure
of the model (429, 5xx, timeout, connection: fall back). Error messages never hold the upstream's address
or credentials: only the upstream's own error `message` (with those redacted).

Kinds: ``ReplayBackend`` (RouterBench's recorded answers and costs: the offline default) and
``OpenAIBackend`` (any OpenAI-compatible endpoint through ``openai.AsyncOpenAI``: vLLM, Ray Serve LLM, a
hosted API; the SDK retries connection errors, 408, 409, 429 and 5xx with jittered exponential backoff and
honours ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from ray import serve

from barp_ray.serving.config_sections import OpenAISettings, ReplaySettings

logger = logging.getLogger(__name__)

# 4xx answers that mean "this model cannot answer now" rather than "the request is wrong": fall back
RETRYABLE_4XX = {408, 429}


class UpstreamError(RuntimeError):
    """An upstream could not answer. `status` None: no HTTP answer (timeout, connection, simulated)."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        type_: str | None = None,
        param: str | None = None,
        code: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type_, param, code
        self.retryable = (
            (status is None or status >= 500 or status in RETRYABLE_4XX) if retryable is None else retryable
        )

    def __reduce__(self):  # picklable with all fields (Ray ships it between processes)
        return (UpstreamError, (self.message, self.status, self.type, self.param, self.code, self.retryable))

    def to_dict(self) -> dict:
        return {
            "message": self.message,
            "status": self.status,
            "type": self.type,
            "param": self.param,
            "code": self.code,
            "retryable": self.retryable,
        }


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


def usage_dict(prompt_tokens: int | None, completion_tokens: int | None) -> dict | None:
    if prompt_tokens is None:
        return None
    ct = completion_tokens or 0
    return {"prompt_tokens": prompt_tokens, "completion_tokens": ct, "total_tokens": prompt_tokens + ct}


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


# ---- OpenAI-compatible ----------------------------------------------------------------------------------
def _redact(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "<redacted>")
    return text


class OpenAIBackend:
    """Calls an OpenAI-compatible `/chat/completions` with `openai.AsyncOpenAI` and passes the answer through.

    Every request field is forwarded (`params`: the client's fields, minus `settings.deny_params`, over
    `settings.extra_body`); the answer comes back as the upstream sent it (tool calls, refusal, logprobs,
    usage details, system_fingerprint, n choices, provider fields).
    """

    def __init__(self, model: str, settings: OpenAISettings | dict) -> None:
        self.model = model
        self.settings = OpenAISettings.model_validate(settings)
        self.model_name = self.settings.model_name or model
        self.api_key = os.environ.get(self.settings.api_key_env) if self.settings.api_key_env else None
        if self.settings.api_key_env and not self.api_key:
            logger.warning(
                "upstream %s: env var %s is not set; calling without an API key", model, self.settings.api_key_env
            )
        self._client = None
        self._secrets = [self.settings.base_url.rstrip("/"), self.api_key or ""]

    @property
    def client(self):
        from openai import AsyncOpenAI

        if self._client is None:
            self._client = AsyncOpenAI(
                base_url=self.settings.base_url,
                api_key=self.api_key or "no-key",
                timeout=self.settings.timeout_s,
                max_retries=self.settings.max_retries,
                default_headers=self.settings.extra_headers or None,
            )
        return self._client

    def info(self) -> dict:
        return {"model": self.model, "kind": "openai", "mean_cost_usd": None}

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        s = self.settings
        if s.usd_per_1k_input is None or s.usd_per_1k_output is None or prompt_tokens is None:
            return None
        return (prompt_tokens * s.usd_per_1k_input + (completion_tokens or 0) * s.usd_per_1k_output) / 1000.0

    def _extra_body(self, payload: dict, stream: bool) -> dict:
        params = {k: v for k, v in (payload.get("params") or {}).items() if k not in self.settings.deny_params}
        body = {**self.settings.extra_body, **params}
        for key in ("model", "messages", "stream"):
            body.pop(key, None)
        if stream and self.settings.stream_usage:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body

    def _error(self, exc: Exception) -> UpstreamError:
        """The SDK's error as an UpstreamError carrying only the upstream's own message (redacted)."""
        import openai

        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            err = body.get("error", body) if isinstance(body.get("error", body), dict) else {}
            message = err.get("message") if isinstance(err.get("message"), str) else None
            message = _redact(message or f"HTTP {exc.status_code}", self._secrets)[:1000]
            return UpstreamError(
                message,
                status=exc.status_code,
                type_=err.get("type") if isinstance(err.get("type"), str) else None,
                param=err.get("param") if isinstance(err.get("param"), str) else None,
                code=str(err["code"]) if err.get("code") is not None else None,
            )
        if isinstance(exc, openai.APITimeoutError):
            return UpstreamError(
                f"{self.model}: no answer within {self.settings.timeout_s:g}s "
                f"({self.settings.max_retries + 1} attempts)",
                code="timeout",
            )
        if isinstance(exc, openai.APIConnectionError):
            return UpstreamError(
                f"{self.model}: connection failed ({self.settings.max_retries + 1} attempts)", code="connection_error"
            )
        if isinstance(exc, openai.APIError):  # e.g. an error event inside a stream
            return UpstreamError(
                f"{self.model}: {_redact(str(exc.message), self._secrets)[:1000]}", code="stream_error"
            )
        return UpstreamError(f"{self.model}: {type(exc).__name__}", code="internal_error")

    async def complete(self, payload: dict) -> dict:
        try:
            response = await self.client.chat.completions.create(
                model=self.model_name,
                messages=payload.get("messages") or [],
                extra_body=self._extra_body(payload, stream=False),
            )
        except Exception as exc:  # SDK errors, and anything else without its text (it may hold the URL)
            raise self._error(exc) from None
        completion = response.model_dump(mode="json", exclude_unset=True)
        usage = completion.get("usage") or {}
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return {
            "completion": completion,
            "cost_usd": self.cost(pt, ct),
            "prompt_tokens": pt,
            "completion_tokens": ct,
            "upstream_model": completion.get("model", self.model_name),
        }

    async def stream(self, payload: dict) -> AsyncIterator[dict]:
        try:  # the SDK retries only until the response starts
            stream = await self.client.chat.completions.create(
                model=self.model_name,
                messages=payload.get("messages") or [],
                stream=True,
                extra_body=self._extra_body(payload, stream=True),
            )
        except Exception as exc:  # SDK errors, and anything else without its text (it may hold the URL)
            yield {"error": self._error(exc).to_dict()}
            return
        usage: dict | None = None
        try:
            async for chunk in stream:
                data = chunk.model_dump(mode="json", exclude_unset=True)
                usage = data.get("usage") or usage
                yield {"chunk": data}
        except Exception as exc:  # SDK errors, and anything else without its text (it may hold the URL)
            yield {"error": self._error(exc).to_dict()}
            return
        finally:
            await stream.close()
        pt, ct = (usage or {}).get("prompt_tokens"), (usage or {}).get("completion_tokens")
        yield {
            "done": True,
            "usage": usage,
            "cost_usd": self.cost(pt, ct),
            "prompt_tokens": pt,
            "completion_tokens": ct,
            "upstream_model": self.model_name,
        }

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


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
