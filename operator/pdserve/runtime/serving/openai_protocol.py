"""OpenAI-compatible request models and the OpenAI-style error body.

Requests are parsed with pydantic; anything a user can get wrong becomes a `RequestError`, which
the server turns into HTTP 400 with `{"error": {"message", "type", "param", "code"}}`.
Unknown fields are ignored rather than rejected (extra="ignore", unlike the project's API models):
OpenAI SDKs and frameworks routinely send vendor extras (`user`, `store`, `metadata`, ...) that a
server without those features can safely drop.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pdserve.runtime.compression.config import OPT_OUT_HEADER as KV_COMPRESSION_HEADER

PRIORITY_HEADER = "x-pdserve-priority"
KV_COMPRESSION_CHOICES = ("auto", "none")  # the worker's compression, or none for this request


class RequestError(Exception):
    """A user error; `status` is the HTTP status it maps to."""

    def __init__(self, message: str, *, param: str | None = None,
                 type_: str = "invalid_request_error", code: str | None = None,
                 status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.type = type_
        self.code = code
        self.status = status

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type_=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


RequestT = TypeVar("RequestT", bound=_Request)


class StreamOptions(_Request):
    include_usage: bool = False


class SamplingFields(_Request):
    """Fields shared by completions and chat completions (OpenAI plus vLLM-style extras)."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    # Unset: the model's generation_config.json default, else OpenAI's (1.0, 1.0, off).
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    # What the sampler's int64 tensors and torch.Generator.manual_seed hold: a larger top_k
    # failed the engine step of every request batched with it, a larger seed gave a vague 400.
    top_k: int | None = Field(default=None, ge=0, le=2**63 - 1)
    n: int = 1
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    priority: int | None = None
    kv_compression: Literal["auto", "none"] | None = None

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage_in_stream(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool) -> bool:
        if echo:
            raise ValueError("echo is not supported")
        return echo

    def output_limit(self) -> int | None:
        return self.max_tokens

    def num_logprobs(self) -> int | None:
        return self.logprobs

    def single_prompt(self) -> str | list[int]:
        """The one prompt of this request: batched prompts are not supported."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if not prompt:
            raise RequestError("prompt must not be empty", param="prompt")
        if all(isinstance(item, int) for item in prompt):
            return [int(item) for item in prompt]  # type: ignore[arg-type]
        if len(prompt) != 1:
            raise RequestError("only one prompt per request is supported", param="prompt")
        return prompt[0]  # type: ignore[return-value]


class FunctionDefinition(_Request):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDefinition(_Request):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionCall(_Request):
    name: str
    arguments: str | dict[str, Any] = "{}"

    def arguments_object(self) -> Any:
        """Chat templates expect arguments as an object; OpenAI sends them as a JSON string."""
        if isinstance(self.arguments, dict):
            return self.arguments
        try:
            return json.loads(self.arguments)
        except json.JSONDecodeError:
            return self.arguments


class ToolCall(_Request):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(_Request):
    type: str
    text: str | None = None


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str | None:
        if self.content is None or isinstance(self.content, str):
            return self.content
        texts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise RequestError(f"unsupported content part type {part.type!r}: only text",
                                   param="messages")
            texts.append(part.text)
        return "".join(texts)

    def for_template(self) -> dict[str, Any]:
        """The plain-dict message that HF chat templates expect."""
        role = "system" if self.role == "developer" else self.role
        message: dict[str, Any] = {"role": role, "content": self.text() or ""}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": call.id, "type": "function",
                 "function": {"name": call.function.name,
                              "arguments": call.function.arguments_object()}}
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"] = "function"
    function: NamedFunction


class ResponseJSONSchema(_Request):
    name: str = Field(min_length=1)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: ResponseJSONSchema | None = None

    @model_validator(mode="after")
    def _schema_when_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self

    def output_schema(self) -> dict[str, Any] | None:
        """The JSON schema of the answer (json_object: any object); None for plain text."""
        if self.type == "text":
            return None
        if self.type == "json_schema" and self.json_schema is not None \
                and self.json_schema.schema_ is not None:
            return self.json_schema.schema_
        return {"type": "object"}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    add_generation_prompt: bool = True

    @field_validator("tools")
    @classmethod
    def _unique_tool_names(cls, tools: list[ToolDefinition] | None
                           ) -> list[ToolDefinition] | None:
        names = [tool.function.name for tool in tools or []]
        if len(set(names)) != len(names):
            raise ValueError("function names must be unique")
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_names_a_tool(cls, choice: object, info: ValidationInfo) -> object:
        names = [tool.function.name for tool in info.data.get("tools") or []]
        if choice == "required" and not names:
            raise ValueError("'required' needs at least one tool in tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"names function {choice.function.name!r}, which is not in tools "
                             f"({', '.join(map(repr, names)) or 'none given'})")
        return choice

    def chosen_tool(self) -> str | None:
        """What tool_choice asks for: "auto", "required", a function's name, or None (no
        tools, or 'none')."""
        if not self.tools or self.tool_choice == "none":
            return None
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice or "auto"

    def output_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens else self.max_tokens

    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def template_tools(self) -> list[dict[str, Any]] | None:
        if not self.tools or self.tool_choice == "none":
            return None
        return [tool.model_dump(exclude_none=True) for tool in self.tools]


def parse_request(model: type[RequestT], raw: bytes) -> RequestT:
    """Parse a JSON body into `model`, mapping every failure to a `RequestError`."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError("request body's JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        raise RequestError(f"{param}: {message}" if param else message, param=param) from None


def allows_kv_compression(header: str | None, body_choice: str | None) -> bool:
    """Whether the worker's KV compression applies to this request; the header wins."""
    if header is None:
        return body_choice != "none"
    choice = header.strip().lower()
    if choice not in KV_COMPRESSION_CHOICES:
        raise RequestError(f"header {KV_COMPRESSION_HEADER} must be one of "
                           f"{', '.join(KV_COMPRESSION_CHOICES)}, got {header!r}",
                           param=KV_COMPRESSION_HEADER)
    return choice != "none"


def parse_priority(header: str | None, body_priority: int | None) -> int:
    """Header wins over body: a gateway in front of the worker may set it for the client."""
    if header is None:
        return body_priority or 0
    try:
        return int(header.strip())
    except ValueError:
        raise RequestError(f"header {PRIORITY_HEADER} must be an integer, got {header!r}",
                           param=PRIORITY_HEADER) from None
