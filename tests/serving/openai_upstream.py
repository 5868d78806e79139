"""An OpenAI-compatible test upstream: a small FastAPI app on a free loopback port, in a thread of the test process.

    up = start_upstream()            # up.base_url == "http://127.0.0.1:<port>/v1"
    up.calls                          # every /chat/completions call: {"model", "t", "body", "status"}
    up.set_rate_limit("marker", 1.5)  # the first call whose prompt holds "marker" gets 429 + Retry-After: 1.5
    up.stop()

Behaviour by the request's `model` (the upstream's `model_name`):

- ``healthy-*``: answers. With `tools`: a `get_weather` tool call (non-streaming: `message.tool_calls`;
  streaming: the call's name and arguments spread over several deltas). With `logprobs: true`: per-token
  logprobs. A prompt holding "please refuse": a `refusal`. `n` choices. `system_fingerprint` "fp_barp_test",
  usage with `prompt_tokens_details` / `completion_tokens_details`; `stream_options.include_usage` adds the
  usage chunk. `temperature` > 2 is a 400 (OpenAI's error body, param "temperature").
  Any other model name answers the same way.
- ``strict-*``: like healthy, but `temperature` > 1 is a 400 (as some providers cap it).
- ``dead-*``: 503 on every call, after `dead_delay_s` seconds.
- ``slow-*``: sleeps `slow_s` seconds, then answers like healthy.
- any model, a prompt holding "echo-auth": a 400 whose message repeats the Authorization header and the URL.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

from fastapi import Request  # module level: the route's annotation must resolve (postponed annotations)

FINGERPRINT = "fp_barp_test"
TOOL_ARGS = '{"city": "Paris", "unit": "celsius"}'


def _error(
    status: int,
    message: str,
    param: str | None = None,
    type_: str = "invalid_request_error",
    headers: dict | None = None,
):
    from fastapi.responses import JSONResponse

    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": param, "code": None}},
        status_code=status,
        headers=headers,
    )


def _prompt(body: dict) -> str:
    parts = []
    for m in body.get("messages") or []:
        c = m.get("content")
        parts.append(c if isinstance(c, str) else json.dumps(c))
    return "\n".join(p for p in parts if p)


@dataclass
class OpenAICompatibleUpstream:
    base_url: str = ""
    calls: list[dict] = field(default_factory=list)
    rate_limits: dict[str, float] = field(default_factory=dict)  # prompt marker -> Retry-After (once)
    slow_s: float = 5.0
    dead_delay_s: float = 0.0
    server: object = None
    thread: threading.Thread | None = None

    def set_rate_limit(self, marker: str, retry_after_s: float) -> None:
        self.rate_limits[marker] = retry_after_s

    def calls_for(self, model: str | None = None, marker: str | None = None) -> list[dict]:
        return [
            c
            for c in list(self.calls)
            if (model is None or c["model"] == model) and (marker is None or marker in _prompt(c["body"]))
        ]

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)

    # ---- the app ----------------------------------------------------------------------------------
    def app(self):
        from fastapi import FastAPI
        from fastapi.responses import StreamingResponse

        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            model = str(body.get("model"))
            call = {"model": model, "t": time.monotonic(), "body": body, "status": 200}
            self.calls.append(call)
            prompt = _prompt(body)
            for marker, wait in list(self.rate_limits.items()):
                if marker in prompt:
                    del self.rate_limits[marker]  # once
                    call["status"] = 429
                    return _error(
                        429, "rate limited, slow down", type_="rate_limit_error", headers={"Retry-After": f"{wait:g}"}
                    )
            if "echo-auth" in prompt:  # an upstream that leaks what it got: the router must redact it
                call["status"] = 400
                return _error(400, f"bad request from {request.headers.get('authorization')} at {request.url}")
            if model.startswith("dead-"):
                await asyncio.sleep(self.dead_delay_s)
                call["status"] = 503
                return _error(503, "the model is overloaded", type_="server_error")
            temperature, limit = body.get("temperature"), 1.0 if model.startswith("strict-") else 2.0
            if temperature is not None and temperature > limit:
                call["status"] = 400
                return _error(
                    400, f"{temperature} is greater than the maximum of {limit:g} - 'temperature'", param="temperature"
                )
            if model.startswith("slow-"):
                await asyncio.sleep(self.slow_s)
            if body.get("stream"):
                return StreamingResponse(self._stream(body, model, prompt), media_type="text/event-stream")
            return self._completion(body, model, prompt)

        return app

    @staticmethod
    def _usage(prompt: str, completion: int) -> dict:
        pt = max(1, len(prompt) // 4)
        return {
            "prompt_tokens": pt,
            "completion_tokens": completion,
            "total_tokens": pt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 2,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    @staticmethod
    def _logprobs(tokens: list[str]) -> dict:
        return {
            "content": [
                {"token": t, "logprob": -0.25 * (i + 1), "bytes": list(t.encode()), "top_logprobs": []}
                for i, t in enumerate(tokens)
            ],
            "refusal": None,
        }

    def _completion(self, body: dict, model: str, prompt: str) -> dict:
        tokens = ["Hello", " from", " ", model]
        choices = []
        for i in range(int(body.get("n") or 1)):
            message: dict = {"role": "assistant", "content": "".join(tokens), "refusal": None}
            finish = "stop"
            if body.get("tools"):
                message = {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": f"call_{i}",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": TOOL_ARGS},
                        }
                    ],
                }
                finish = "tool_calls"
            elif "please refuse" in prompt:
                message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "finish_reason": finish,
                    "logprobs": self._logprobs(tokens) if body.get("logprobs") else None,
                }
            )
        return {
            "id": "chatcmpl-upstream-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
            "usage": self._usage(prompt, len(tokens)),
            "service_tier": "default",
        }

    async def _stream(self, body: dict, model: str, prompt: str):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": "chatcmpl-upstream-2",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": FINGERPRINT,
        }

        def event(delta: dict, finish: str | None = None, logprobs=None) -> str:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
            if include_usage:
                chunk["usage"] = None
            return f"data: {json.dumps(chunk)}\n\n"

        yield event({"role": "assistant", "content": ""})
        if body.get("tools"):
            yield event(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_s0",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            )
            for start in range(0, len(TOOL_ARGS), 7):
                yield event({"tool_calls": [{"index": 0, "function": {"arguments": TOOL_ARGS[start : start + 7]}}]})
                await asyncio.sleep(0)
            finish, completion = "tool_calls", 12
        else:
            tokens = ["Hello", " from", " ", model]
            for token in tokens:
                lp = self._logprobs([token]) if body.get("logprobs") else None
                yield event({"content": token}, logprobs=lp)
            finish, completion = "stop", len(tokens)
        yield event({}, finish)
        if include_usage:
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': self._usage(prompt, completion)})}\n\n"
        yield "data: [DONE]\n\n"


def start_upstream(timeout: float = 30.0) -> OpenAICompatibleUpstream:
    """The test upstream, serving on a free 127.0.0.1 port (uvicorn in a daemon thread) once this returns."""
    import httpx
    import uvicorn
    from serve_helpers import free_port, wait_until

    up = OpenAICompatibleUpstream()
    port = free_port()
    config = uvicorn.Config(up.app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    up.server = uvicorn.Server(config)
    up.thread = threading.Thread(target=up.server.run, name="test-openai-upstream", daemon=True)
    up.thread.start()
    up.base_url = f"http://127.0.0.1:{port}/v1"
    wait_until(
        lambda: (
            httpx.post(
                f"{up.base_url}/chat/completions", timeout=2, json={"model": "probe", "messages": []}
            ).status_code
            == 200
        ),
        timeout,
        interval=0.2,
        what="the test upstream",
    )
    up.calls.clear()
    return up
