"""HTTP API schemas (OpenAI-compatible chat plus the BaRP extras) and the API error type."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from barp_ray.serving.config_sections import Budget, Preference

# request fields the router consumes; every other field of a chat request is forwarded to the upstream
# (known OpenAI ones and provider-specific ones alike; an upstream's `openai.deny_params` drops some)
ROUTER_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "preference", "budget", "prompt_id"})
DECISION_ID_PATTERN = r"^[0-9a-f]{32}$"


class ApiError(Exception):
    """An error answered as OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def validation_error(exc: ValidationError, prefix: str = "") -> ApiError:
    """The first pydantic error as a 400 naming the field (`param`), e.g. `preference.cost`."""
    first = exc.errors()[0]
    loc = tuple(p for p in first.get("loc", ()) if p not in ("__root__",))
    # a union of str | list[...] reports the branch names; keep the field path only
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "list"))))
    if prefix:
        param = prefix + ("." + _loc(loc) if loc else "")
    else:
        param = _loc(loc)  # "body" when the error is about the whole object
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return ApiError(400, f"{param}: {msg}{more}", param=param, code="invalid_value")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, tool_call_id, ... pass through

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if p.type == "text" and p.text)


class _RoutingFields(BaseModel):
    """Fields shared by /v1/chat/completions and /v1/route."""

    model: str | None = Field(default=None, description="'barp' (route), or a candidate model id (forced)")
    preference: Preference | None = None
    budget: Budget | None = None
    prompt_id: str | None = Field(default=None, max_length=256, description="your id, kept in the log")


class ChatCompletionRequest(_RoutingFields):
    """OpenAI chat completion request; fields the router does not know are accepted and forwarded."""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage]
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int | None = Field(
        default=None, ge=1, le=128, description="choices to generate (forwarded; the replay upstream answers n=1 only)"
    )

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if not value:
            raise ValueError("must hold at least one message")
        return value

    def upstream_params(self) -> dict[str, Any]:
        """Every field the client sent except the router's own (unknown fields included, as sent)."""
        data = self.model_dump(exclude_unset=True)
        return {k: v for k, v in data.items() if k not in ROUTER_FIELDS}


class RouteRequest(_RoutingFields):
    """The routing decision only: `messages` (as for chat) or a bare `prompt`."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] | None = None
    prompt: str | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision_id: str = Field(pattern=DECISION_ID_PATTERN, description="the `barp.decision_id` of a response")
    score: float = Field(ge=0, le=1, allow_inf_nan=False, description="outcome quality in [0, 1]")
    comment: str | None = None


def prompt_text(messages: list[ChatMessage]) -> str:
    """The text the router embeds: the message contents joined by blank lines (one message: its content)."""
    parts = [m.text() for m in messages]
    return "\n\n".join(p for p in parts if p)
