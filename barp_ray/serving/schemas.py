"""HTTP API schemas (OpenAI-compatible chat plus the BaRP extras) and the API error type."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from barp_ray.serving.config import Budget, Preference

# OpenAI request fields passed through to OpenAI-compatible upstreams (everything else stays here).
PASSTHROUGH_PARAMS = (
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "presence_penalty",
    "frequency_penalty", "logit_bias", "user", "response_format", "tools", "tool_choice", "logprobs",
    "top_logprobs",
)
DECISION_ID_PATTERN = r"^[0-9a-f]{32}$"


class ApiError(Exception):
    """An error answered as OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None,
        type_: str = "invalid_request_error", headers: dict[str, str] | None = None,
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
    """OpenAI chat completion request; unknown OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage]
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int | None = Field(default=None, ge=1, le=1, description="only n=1 is supported")

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if not value:
            raise ValueError("must hold at least one message")
        return value

    def upstream_params(self) -> dict[str, Any]:
        data = self.model_dump(exclude_none=True)
        return {k: data[k] for k in PASSTHROUGH_PARAMS if k in data}


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
