"""The router's HTTP layer: the FastAPI app, OpenAI-style error answers, API-key auth, body parsing and limits."""

# no `from __future__ import annotations`: FastAPI must see real annotations (Request) on the handlers
import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from barp_ray.serving.config_sections import AuthConfig, LimitsConfig
from barp_ray.serving.guards import check_params, parse_json, read_body
from barp_ray.serving.schemas import ApiError, prompt_text, validation_error

logger = logging.getLogger("ray.serve")

__all__ = [
    "admitted",
    "api_key_hashes",
    "app",
    "authorize",
    "check_messages",
    "configured_keys",
    "counts_rejections",
    "parse_body",
    "validation_error",
]

app = FastAPI(
    title="BaRP router",
    description="Preference-conditioned LLM routing (BaRP) with an OpenAI-compatible API.",
    version="1",
)


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    err = ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
    return JSONResponse(err.body(), status_code=exc.status_code)


@app.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error in %s %s", request.method, request.url.path)
    err = ApiError(500, f"internal error: {type(exc).__name__}", type_="server_error")
    return JSONResponse(err.body(), status_code=500)


def api_key_hashes(auth: AuthConfig, env: dict[str, str] | None = None) -> set[str]:
    """sha256 hex of every configured key (the env var holds comma-separated keys, the file one per line)."""
    env = os.environ if env is None else env
    keys: list[str] = []
    if auth.api_keys_env and env.get(auth.api_keys_env):
        keys += [k.strip() for k in env[auth.api_keys_env].split(",")]
    if auth.api_keys_file:
        path = Path(auth.api_keys_file)
        if not path.exists():
            raise FileNotFoundError(f"auth.api_keys_file {path} does not exist")
        keys += [line.strip() for line in path.read_text().splitlines() if not line.strip().startswith("#")]
    return {hashlib.sha256(k.encode()).hexdigest() for k in keys if k}


def configured_keys(auth: AuthConfig) -> set[str] | None:
    """The key hashes `authorize` accepts; None when auth is off. Raises if auth is on without a key."""
    if not auth.enabled:
        return None
    hashes = api_key_hashes(auth)
    if not hashes:
        raise ValueError(
            f"auth is enabled but no API key is configured: set ${auth.api_keys_env} (comma-separated "
            "keys) or auth.api_keys_file, or set auth.enabled: false for a local trial"
        )
    return hashes


def authorize(request: Request, key_hashes: set[str] | None) -> str | None:
    """401 unless the request carries `Authorization: Bearer <a configured key>`; returns the caller's key id
    (sha256(key)[:16], what the decision log stores as `key_hash`), None when auth is off."""
    if key_hashes is None:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    digest = hashlib.sha256(key.strip().encode()).hexdigest()
    if scheme.lower() != "bearer" or digest not in key_hashes:
        raise ApiError(
            401,
            "missing or invalid API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            type_="authentication_error",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return digest[:16]


async def parse_body(request: Request, model: type[BaseModel], limit: int, max_depth: int = 32) -> Any:
    """The JSON body validated as `model`, before any routing or upstream work (barp_ray/serving/guards.py):
    413 past `limit` bytes (read as a stream, with or without Content-Length), 400 naming the field for
    malformed JSON, invalid Unicode, non-finite or out-of-range numbers, bad OpenAI parameters and schema errors."""
    data = parse_json(await read_body(request, limit), max_depth)
    check_params(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def check_messages(messages, limits: LimitsConfig) -> str:
    """The text to route on (400 when there is none or it is over the limits)."""
    if not messages:
        raise ApiError(400, "messages: must hold at least one message", param="messages")
    if len(messages) > limits.max_messages:
        raise ApiError(
            400, f"messages: {len(messages)} messages, over the limit of {limits.max_messages}", param="messages"
        )
    text = prompt_text(messages)
    if not text.strip():
        raise ApiError(400, "messages: no text content to route on", param="messages")
    if len(text) > limits.max_prompt_chars:
        raise ApiError(
            400,
            f"messages: the prompt is {len(text)} characters, over the limit of {limits.max_prompt_chars}",
            param="messages",
            code="prompt_too_long",
        )
    return text


def counts_rejections(endpoint):
    """Count the 4xx answers of an endpoint method in `barp_router_rejected_total` (the signature is kept)."""

    @functools.wraps(endpoint)
    async def wrapper(self, *args, **kwargs):
        try:
            return await endpoint(self, *args, **kwargs)
        except ApiError as exc:
            if 400 <= exc.status < 500:
                self.metrics.rejected.inc(tags={"status": str(exc.status)})
            raise

    return wrapper


def admitted(endpoint):
    """Run an endpoint method inside the replica's `Admission` (`self.admission`): at most max_ongoing_requests
    work at once and max_queued_requests wait; past that an immediate 503 (counted in barp_router_shed_total).
    A streamed answer holds its slot until the response starts."""

    @functools.wraps(endpoint)
    async def wrapper(self, *args, **kwargs):
        try:
            async with self.admission:
                return await endpoint(self, *args, **kwargs)
        except ApiError as exc:
            if exc.code == "overloaded":
                self.metrics.shed.inc(tags={"reason": "overload"})
            raise

    return wrapper
