"""OpenAI response objects as the router answers them: the upstream's, passed through, plus `barp`.

The router changes only `model` (the candidate model id that answered) and adds its `barp` block; choices
(tool calls, refusal, logprobs, finish_reason, n > 1), usage with its details, system_fingerprint and
provider fields pass through. Streams relay every chunk (tool-call deltas included); `barp` rides on the
first chunk and, with the final cost, on the last chunk carrying a `finish_reason`. With
`stream_options.include_usage` every chunk has `"usage": null` and one final chunk (`choices: []`) holds
the usage, as OpenAI does; without it chunks carry no `usage`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from barp_ray.serving.fallback import short_error
from barp_ray.serving.schemas import ApiError

SSE_DONE = "data: [DONE]\n\n"


def usage(prompt_tokens: int | None, completion_tokens: int | None) -> dict | None:
    """OpenAI `usage` from token counts (None when the upstream reported none)."""
    if prompt_tokens is None:
        return None
    ct = completion_tokens or 0
    return {"prompt_tokens": prompt_tokens, "completion_tokens": ct, "total_tokens": prompt_tokens + ct}


def completion(result: dict, model: str, barp: dict, fallback_id: str) -> dict:
    """The client's `chat.completion`: the upstream's object with `model` set and `barp` added."""
    out = dict(result.get("completion") or {})
    out.setdefault("id", fallback_id)
    out.setdefault("object", "chat.completion")
    out.setdefault("created", int(time.time()))
    out.setdefault("choices", [])
    out["model"] = model
    out["barp"] = barp
    return out


def model_list(router_model: str, policy_version: str, models: list[str], kinds: dict[str, str]) -> list[dict]:
    """`GET /v1/models` entries: the router's own model id, then every policy model with an upstream."""
    created = int(time.time())
    data = [
        {
            "id": router_model,
            "object": "model",
            "created": created,
            "owned_by": "barp",
            "barp": {"router": True, "policy_version": policy_version},
        }
    ]
    data += [
        {"id": m, "object": "model", "created": created, "owned_by": f"barp-upstream-{kinds[m]}"}
        for m in models
        if m in kinds
    ]
    return data


def sse(obj: Any) -> str:
    """One server-sent event carrying `obj` as JSON."""
    return f"data: {json.dumps(obj)}\n\n"


def client_chunk(chunk: dict, model: str, include_usage: bool) -> dict | None:
    """An upstream chunk as the client gets it; None for the upstream's usage-only chunk (re-sent at the end)."""
    if not chunk.get("choices") and chunk.get("usage") is not None:
        return None
    out = {**chunk, "model": model}
    if include_usage:
        out["usage"] = None
    else:
        out.pop("usage", None)
    return out


def _finishes(chunk: dict) -> bool:
    return any(c.get("finish_reason") for c in chunk.get("choices") or [] if isinstance(c, dict))


async def relay_stream(
    gen,
    first: dict,
    chunk_timeout: float,
    deadline_s: float,
    model: str,
    include_usage: bool,
    barp: Callable[[float | None], dict],
    on_end: Callable[[str, dict, str | None], None],
) -> AsyncIterator[str]:
    """The SSE events of an upstream stream (see upstream_protocol.py for its items), `first` already read.

    `barp(cost)` gives the `barp` block; `on_end(status, last item, error)` runs once at the end: status
    "ok", or "stream_error" when the upstream broke mid-stream, sent nothing for `chunk_timeout` seconds or
    ran past the total `deadline_s` (the client then gets an error event instead of `[DONE]`).
    """
    status, last, error = "ok", {}, None
    held: list[dict] = []  # chunks with a finish_reason: sent at the end, the last one with the final barp
    template: dict = {"id": "chatcmpl-barp", "object": "chat.completion.chunk", "created": int(time.time())}
    first_sent = False
    end = time.monotonic() + deadline_s
    try:
        item = first
        while True:
            if item.get("error") is not None:
                raise _StreamFailed(str(item["error"].get("message") or "upstream error")[:300])
            if item.get("done"):
                last = item
                break
            chunk = item.get("chunk")
            out = client_chunk(chunk, model, include_usage) if isinstance(chunk, dict) else None
            if out is not None:
                template = {k: out[k] for k in ("id", "object", "created", "system_fingerprint") if k in out}
                if not first_sent:
                    out["barp"], first_sent = barp(None), True
                if _finishes(out):
                    held.append(out)
                else:
                    yield sse(out)
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise _StreamFailed(f"stream deadline of {deadline_s:g}s exceeded")
            try:
                item = await asyncio.wait_for(gen.__anext__(), min(chunk_timeout, remaining))
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise _StreamFailed(
                    "upstream stopped sending"
                    if remaining > chunk_timeout
                    else f"stream deadline of {deadline_s:g}s exceeded"
                ) from None
        final = barp(last.get("cost_usd"))
        if not held:  # an upstream that never sent a finish_reason
            held.append(
                {
                    **template,
                    "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    **({"usage": None} if include_usage else {}),
                }
            )
        held[-1]["barp"] = final
        for out in held:
            yield sse(out)
        if include_usage:
            used = last.get("usage") or usage(last.get("prompt_tokens"), last.get("completion_tokens"))
            yield sse({**template, "model": model, "choices": [], "usage": used})
        yield SSE_DONE
    except Exception as exc:  # the upstream broke mid-stream: tell the client
        status = "stream_error"
        error = str(exc) if isinstance(exc, _StreamFailed) else short_error(exc)
        gen.cancel()
        yield sse(
            ApiError(
                502, f"upstream {model} failed mid-stream: {error}", code="stream_error", type_="upstream_error"
            ).body()
        )
    finally:
        on_end(status, last, error)


class _StreamFailed(Exception):
    """The upstream stream ended badly (error item, silence, deadline)."""
