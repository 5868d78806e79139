"""The OpenAI-compatible upstream backend: any `/chat/completions` endpoint through ``openai.AsyncOpenAI``.

vLLM, Ray Serve LLM, a hosted API; the SDK retries connection errors, 408, 409, 429 and 5xx with jittered
exponential backoff and honours ``Retry-After``. It speaks the protocol of `barp_ray.serving.upstream_protocol`;
its Serve deployment is `barp_ray.serving.upstreams.OpenAIUpstream`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator

from barp_ray.serving.config_sections import OpenAISettings
from barp_ray.serving.upstream_protocol import UpstreamError

logger = logging.getLogger(__name__)


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
