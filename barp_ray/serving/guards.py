"""Request guards run before any routing or upstream work: each bad input is a 4xx naming the field.

- `read_body`: the body read as a stream and cut at the size limit, with or without Content-Length (413).
- `parse_json`: JSON with NaN / Infinity literals, numbers beyond float or int64 range, lone surrogates
  (text that cannot be UTF-8 encoded, so the tokenizer would fail on it) and nesting past the limit
  refused with the path of the offending value as `param` (e.g. `messages[0].content`).
- `check_params`: the OpenAI sampling parameters a client may pass through to an upstream (type and range),
  so a `temperature: NaN` or `max_tokens: "lots"` never reaches a paid call.
- `RateLimiter` (per API key, token bucket) and `Admission` (max ongoing + max queued per replica): 429 / 503
  with an OpenAI-style body and Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import OrderedDict
from typing import Any

from barp_ray.serving.schemas import ApiError

INT64 = 2**63


class _NonFinite:
    """Stands for a NaN / Infinity literal until the walk reports where it was."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, read chunk by chunk and refused (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, f"Content-Length: not a number ({declared[:40]!r})", param="Content-Length")
        if int(declared) > limit:
            raise ApiError(
                413, f"body: {declared} bytes, over the limit of {limit}", param="body", code="body_too_large"
            )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body: more than {limit} bytes (the limit)", param="body", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _path(parts: list) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out or "body"


def _walk(value: Any, parts: list, depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise ApiError(
            400, f"{_path(parts)}: JSON nested deeper than {max_depth} levels", param=_path(parts), code="invalid_json"
        )
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(
                400,
                f"{_path(parts)}: invalid Unicode (a lone surrogate such as \\ud800); send valid UTF-8 text",
                param=_path(parts),
                code="invalid_unicode",
            ) from None
    elif isinstance(value, _NonFinite):
        raise ApiError(
            400,
            f"{_path(parts)}: {value.literal} is not a valid JSON number; send a finite number",
            param=_path(parts),
            code="invalid_value",
        )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ApiError(
                400,
                f"{_path(parts)}: number out of range; send a finite number",
                param=_path(parts),
                code="invalid_value",
            )
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not -INT64 <= value < INT64:
            raise ApiError(
                400, f"{_path(parts)}: integer out of range (64-bit)", param=_path(parts), code="invalid_value"
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk(k, [*parts, "<key>"], depth + 1, max_depth)
            _walk(v, [*parts, k], depth + 1, max_depth)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _walk(v, [*parts, i], depth + 1, max_depth)


def parse_json(raw: bytes, max_depth: int = 32) -> dict:
    """A JSON object from `raw`, or a 400 naming where it is malformed (see the module doc)."""
    if not raw.strip():
        raise ApiError(400, "body: empty; send a JSON object", param="body", code="invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, f"body: not UTF-8 ({exc.reason} at byte {exc.start})", param="body", code="invalid_unicode"
        ) from None
    try:
        data = json.loads(text, parse_constant=_NonFinite)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            f"body: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
            param="body",
            code="invalid_json",
        ) from None
    except (RecursionError, ValueError) as exc:  # very deep nesting; int strings past Python's digit limit
        raise ApiError(
            400,
            f"body: JSON rejected ({type(exc).__name__}: nested too deeply or a number too long)",
            param="body",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise ApiError(
            400, f"body: expected a JSON object, got {type(data).__name__}", param="body", code="invalid_json"
        )
    _walk(data, [], 0, max_depth)
    return data


# ---- OpenAI sampling parameters --------------------------------------------------------------------------
_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
_INTS: dict[str, tuple[int, int]] = {
    "max_tokens": (1, 10_000_000),
    "max_completion_tokens": (1, 10_000_000),
    "top_logprobs": (0, 20),
    "seed": (-INT64, INT64 - 1),
    "n": (1, 128),
}
_TYPES: dict[str, tuple[type, ...]] = {
    "logprobs": (bool,),
    "user": (str,),
    "stream": (bool,),
    "parallel_tool_calls": (bool,),
    "stream_options": (dict,),
    "response_format": (dict,),
    "tools": (list,),
    "logit_bias": (dict,),
    "tool_choice": (str, dict),
    "stop": (str, list),
    "metadata": (dict,),
    "store": (bool,),
}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_params(body: dict) -> None:
    """400 naming the parameter when an OpenAI sampling parameter has the wrong type or range."""
    for name, (lo, hi) in _RANGES.items():
        if body.get(name) is not None:
            v = body[name]
            if not _is_number(v) or not math.isfinite(v) or not lo <= v <= hi:
                raise ApiError(
                    400,
                    f"{name}: expected a number in [{lo:g}, {hi:g}], got {json.dumps(v)[:60]}",
                    param=name,
                    code="invalid_value",
                )
    for name, (lo, hi) in _INTS.items():
        if body.get(name) is not None:
            v = body[name]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ApiError(
                    400,
                    f"{name}: expected an integer in [{lo}, {hi}], got {json.dumps(v)[:60]}",
                    param=name,
                    code="invalid_value",
                )
    for name, types in _TYPES.items():
        if body.get(name) is not None and not isinstance(body[name], types):
            expected = " or ".join(
                {str: "a string", bool: "a boolean", dict: "an object", list: "an array"}[t] for t in types
            )
            raise ApiError(
                400, f"{name}: expected {expected}, got {type(body[name]).__name__}", param=name, code="invalid_type"
            )
    stop = body.get("stop")
    if isinstance(stop, list) and (len(stop) > 4 or not all(isinstance(s, str) for s in stop)):
        raise ApiError(400, "stop: expected a string or up to 4 strings", param="stop", code="invalid_value")
    bias = body.get("logit_bias")
    if isinstance(bias, dict):
        for k, v in bias.items():
            if not _is_number(v) or not -100 <= v <= 100:
                raise ApiError(
                    400,
                    f"logit_bias.{k}: expected a number in [-100, 100]",
                    param=f"logit_bias.{k}",
                    code="invalid_value",
                )


# ---- rate limits and admission ---------------------------------------------------------------------------
class RateLimiter:
    """Token bucket per key id (this replica's share): `check(key)` raises 429 with Retry-After when empty."""

    def __init__(
        self, requests_per_s: float, burst: int, per_key: dict[str, float] | None = None, max_keys: int = 100_000
    ) -> None:
        self.rate, self.burst, self.per_key, self.max_keys = requests_per_s, burst, dict(per_key or {}), max_keys
        self.buckets: OrderedDict[str | None, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def check(self, key: str | None, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        rate = self.per_key.get(key or "", self.rate)
        tokens, at = self.buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * rate)
        if tokens < 1.0:
            self.buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / rate)
            raise ApiError(
                429,
                f"rate limit: {rate:g} requests/s per API key on this replica; retry in {wait}s",
                code="rate_limit_exceeded",
                type_="rate_limit_error",
                headers={"Retry-After": str(wait)},
            )
        self.buckets[key] = (tokens - 1.0, now)
        while len(self.buckets) > self.max_keys:
            self.buckets.popitem(last=False)


class Admission:
    """At most `ongoing` requests work at once on a replica and `queued` more wait; past that, a 503 at once.

    Use as `async with admission:` around an endpoint's work.
    """

    def __init__(self, ongoing: int, queued: int, retry_after_s: int = 1) -> None:
        self.ongoing, self.queued, self.retry_after_s = ongoing, queued, retry_after_s
        self._slots = asyncio.Semaphore(ongoing)
        self.waiting = 0

    async def __aenter__(self) -> Admission:
        if self._slots.locked() and self.waiting >= self.queued:
            raise ApiError(
                503,
                f"overloaded: {self.ongoing} requests in progress and {self.waiting} waiting on this "
                "replica; retry shortly",
                code="overloaded",
                type_="server_error",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        return self

    async def __aexit__(self, *exc) -> None:
        self._slots.release()
