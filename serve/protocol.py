"""Wire models of the OpenAI-compatible API (chat completions, completions, models, errors).

Only the shapes live here; what a request means to the engine is decided in `openai_server.py`
(the split vLLM's `entrypoints/openai/protocol.py` makes). Requests are validated in strict mode so
"5" is not silently taken for 5: a wrong type is the client's bug and gets a 400. Unknown keys are
ignored, as FastDeploy and OpenAI do, so clients that send newer fields keep working.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FinishReason = Literal["stop", "length"]

# OpenAI takes up to 4 stop strings; clients written for vLLM / FastDeploy send a few more
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 1024


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------
# errors


class ErrorInfo(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Response):
    error: ErrorInfo


# ---------------------------------------------------------------------------------------------
# requests


class StreamOptions(_Request):
    include_usage: bool = False


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ImagePart(_Request):
    """Parsed so that a text-only model can say what it cannot read (the server refuses it)."""

    type: Literal["image_url"]
    image_url: Any = None


class ChatMessage(_Request):
    # "developer" is OpenAI's newer name for "system"; tool messages need a tool parser we lack
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    def image_parts(self) -> list[int]:
        """Indexes of the image parts in the content."""
        parts = [] if isinstance(self.content, str) else self.content
        return [i for i, part in enumerate(parts) if isinstance(part, ImagePart)]


class ChatTemplateKwargs(_Request):
    """What a client may pass to the chat template. Only documented switches: a template (or any
    other variable) from a client would run its Jinja on the server; the operator sets the template."""

    enable_thinking: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _only_known(cls, data: Any) -> Any:
        unknown = sorted(set(data) - set(cls.model_fields)) if isinstance(data, dict) else []
        if unknown:
            raise ValueError(
                f"{', '.join(map(repr, unknown))} not accepted; a client may set only "
                f"{', '.join(cls.model_fields)} (the chat template is fixed by the server)"
            )
        return data


class SamplingFields(_Request):
    """The decoding parameters both endpoints share (OpenAI's plus vLLM / FastDeploy extras)."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    # None: the checkpoint's generation_config.json decides (as in vLLM and FastDeploy)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)  # -1 and 0 both mean "no top-k cut" (vLLM uses -1)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    seed: int | None = Field(default=None, ge=0, lt=2**64)  # numpy's generator takes unsigned seeds
    stop: str | list[str] | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, max_length=MAX_STOP_TOKEN_IDS
    )
    ignore_eos: bool = False
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _stop_bounded(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, not {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop string may have at most {MAX_STOP_CHARS} characters")
        return stop

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    chat_template_kwargs: ChatTemplateKwargs = Field(default_factory=ChatTemplateKwargs)
    logprobs: bool = False
    top_logprobs: int | None = None
    # accepted by OpenAI, not implemented here: refused, never silently ignored
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    @field_validator("tools", "tool_choice")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        if value and value != "none":
            raise ValueError(
                "tool calls are not supported by this server (FastDeploy and vLLM have tool-call parsers)"
            )
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        kind = (value or {"type": "text"}).get("type")
        if kind not in ("text", "json_object", "json_schema"):
            raise ValueError(f"type must be text, json_object or json_schema, not {kind!r}")
        if kind != "text":
            raise ValueError(f"{kind} output is not supported by this server (FastDeploy and vLLM have it)")
        return value

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | int | None) -> bool | int | None:
        if value:
            raise ValueError("logprobs are not supported by this server")
        return value

    def token_limit(self) -> int | None:
        # max_completion_tokens is OpenAI's newer name; it wins when both are given (as in vLLM)
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    # one prompt: a string or token ids (a batch of one is unwrapped; larger batches are refused)
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None

    # field validators, so that the error names the field
    @field_validator("echo", "logprobs", "suffix")
    @classmethod
    def _unsupported(cls, value: Any) -> Any:
        if value is None or value is False or value == "":
            return value
        raise ValueError("not supported by this server")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) and len(prompt) != 1:
            raise ValueError("one prompt per request (a list of prompts is not supported)")
        return prompt

    def single_prompt(self) -> str | list[int]:
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            return prompt[0]  # type: ignore[return-value]  # the validator allows only one
        return prompt  # type: ignore[return-value]


def openai_param(loc: Sequence[int | str]) -> str | None:
    """A validation error's location as OpenAI names a parameter: `messages[0].content`.

    Pydantic puts the member type of a union into the location (`content.str`); those are dropped.
    """
    fields = {name for model in _REQUEST_MODELS for name in model.model_fields}
    param = ""
    for part in loc:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part in fields:
            param += f".{part}" if param else part
    return param or None


_REQUEST_MODELS = (
    ChatCompletionRequest,
    CompletionRequest,
    ChatMessage,
    TextPart,
    ImagePart,
    ChatTemplateKwargs,
    StreamOptions,
)


# ---------------------------------------------------------------------------------------------
# responses


def _now() -> int:
    return int(time.time())


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class ResponseMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = None


class ChatChoice(_Response):
    index: int = 0
    message: ResponseMessage
    finish_reason: FinishReason | None
    logprobs: None = None


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None


class ChatChunkChoice(_Response):
    index: int = 0
    delta: DeltaMessage
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(_Response):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


class CompletionResponse(_Response):
    """Also the streamed chunk: OpenAI uses the same "text_completion" object for both."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "ernie-ops"
    max_model_len: int | None = None
    quantization: str | None = None  # wint8 / wint4: FastDeploy's weight-only scheme, emulated


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]
