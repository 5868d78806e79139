"""An API-key gate in Serve's HTTP proxy for apps that have no auth of their own (e.g. Ray Serve LLM's app).

Serve applies the ASGI middlewares returned by the function named in `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`
to its HTTP proxy (a documented Serve setting, read when the proxy starts). With

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=barp_ray.serving.gate:proxy_middlewares
    BARP_GATE_PREFIXES=/llm                  # route prefixes that need a key (comma-separated)
    BARP_GATE_API_KEYS=<internal key(s)>     # comma-separated; on Kubernetes from a Secret

in the environment of every Ray node, a request under a gated prefix without `Authorization: Bearer <one of
the keys>` gets a 401 with an OpenAI-style error body before it reaches any replica; other routes (the
router, which checks its own keys) pass through untouched. The router's `openai` upstreams send the key with
`api_key_env`, so the LLM app is reachable only through the router (serve/serve-llm.yaml).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

GATE_PREFIXES_ENV = "BARP_GATE_PREFIXES"
GATE_KEYS_ENV = "BARP_GATE_API_KEYS"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyGate:
    """Pure ASGI middleware: requests under `prefixes` need a bearer key whose sha256 is in `key_hashes`."""

    def __init__(self, app, prefixes: list[str], key_hashes: set[str]) -> None:
        self.app = app
        self.prefixes = [p.rstrip("/") for p in prefixes if p.strip()]
        self.key_hashes = key_hashes

    def gated(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.prefixes)

    def allowed(self, headers: list[tuple[bytes, bytes]]) -> bool:
        value = next((v.decode("latin-1") for k, v in headers if k.lower() == b"authorization"), "")
        scheme, _, key = value.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        digest = _hash(key.strip())
        return any(hmac.compare_digest(digest, h) for h in self.key_hashes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.gated(scope.get("path", "")) or self.allowed(scope["headers"]):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": {
                    "message": "missing or invalid API key for this internal route: send 'Authorization: Bearer <key>'",
                    "type": "authentication_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list:
    """The Serve proxy callback: a KeyGate from $BARP_GATE_PREFIXES and $BARP_GATE_API_KEYS.

    Refuses to start without keys when prefixes are set (a gate that lets everyone in is worse than none).
    """
    from starlette.middleware import Middleware

    prefixes = [p.strip() for p in os.environ.get(GATE_PREFIXES_ENV, "/llm").split(",") if p.strip()]
    keys = [k.strip() for k in os.environ.get(GATE_KEYS_ENV, "").split(",") if k.strip()]
    if prefixes and not keys:
        raise ValueError(
            f"${GATE_KEYS_ENV} is empty: the gate of {prefixes} would have no key to accept; set it "
            "(from a Secret) on every Ray node, or unset RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
        )
    return [Middleware(KeyGate, prefixes=prefixes, key_hashes={_hash(k) for k in keys})]
