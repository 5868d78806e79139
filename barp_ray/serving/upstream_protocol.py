"""The protocol every upstream deployment speaks (one Serve deployment per candidate model), and its errors.

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

The backends are `ReplayBackend` (`barp_ray.serving.upstreams`, with the Serve deployments of both kinds)
and `OpenAIBackend` (`barp_ray.serving.openai_backend`).
"""

from __future__ import annotations

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
