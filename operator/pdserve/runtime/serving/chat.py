"""POST /v1/chat/completions: messages rendered by the model's chat template (with `tools`),
the output constrained to tool calls or a JSON schema where asked (constraints.py), the reply
parsed back into `content` and hermes `tool_calls`, SSE deltas when streaming."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from pdserve.runtime.serving.constraints import chat_constraint
from pdserve.runtime.serving.openai_protocol import ChatCompletionRequest, RequestError
from pdserve.runtime.serving.openai_serving import (
    Endpoint,
    Generation,
    SubmitFn,
    chat_logprobs,
    endpoint_handler,
)
from pdserve.runtime.serving.server import Handler, WorkerState
from pdserve.runtime.serving.tool_calls import ToolCallEvents, ToolCallParser, parse_tool_calls


def chat_handler(submit: SubmitFn) -> Handler:
    return endpoint_handler(CHAT, submit)


def _prompt_ids(state: WorkerState, body: ChatCompletionRequest) -> list[int]:
    messages = [message.for_template() for message in body.messages]
    try:
        text = state.tokenizer.apply_chat_template(
            messages, tools=body.template_tools(),
            add_generation_prompt=body.add_generation_prompt)
    except ValueError as exc:  # the template's raise_exception, or no template at all
        raise RequestError(str(exc), param="messages") from None
    return state.tokenizer.encode(text, add_special_tokens=False)


async def _complete(state: WorkerState, body: ChatCompletionRequest, generation: Generation,
                    head: dict[str, Any]) -> web.Response:
    texts: list[str] = []
    finish_reason = None
    async for output in generation:
        texts.append(output.text)
        finish_reason = output.finish_reason
    text = "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if body.template_tools() is not None:
        content, calls = parse_tool_calls(text)
        if calls:
            message = {"role": "assistant", "content": content,
                       "tool_calls": [call.to_openai() for call in calls]}
            finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
    logprobs = chat_logprobs(state.tokenizer, generation.logprobs) if body.logprobs else None
    choice = {"index": 0, "message": message, "logprobs": logprobs,
              "finish_reason": finish_reason}
    return web.json_response({**head, "choices": [choice], "usage": generation.usage()})


def _chunk(head: dict[str, Any], delta: dict[str, Any], finish_reason: str | None = None,
           logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return {**head, "object": "chat.completion.chunk", "choices": [choice]}


async def _chunks(tokenizer: Any, body: ChatCompletionRequest, generation: Generation,
                  head: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    parser = ToolCallParser() if body.template_tools() is not None else None
    yield _chunk(head, {"role": "assistant", "content": ""})
    async for output in generation:
        if parser is None:
            events = ToolCallEvents(content=output.text)
        else:
            events = parser.feed(output.text)
            if output.finished:
                tail = parser.finish()
                events.content += tail.content
                events.tool_calls += tail.tool_calls
        logprobs = None
        if body.logprobs and output.logprobs:
            logprobs = chat_logprobs(tokenizer, output.logprobs)
        if events.content or logprobs:
            yield _chunk(head, {"content": events.content}, logprobs=logprobs)
        if events.deltas:
            yield _chunk(head, {"tool_calls": events.deltas})
        if output.finished:
            called = parser is not None and parser.tool_calls and output.finish_reason == "stop"
            yield _chunk(head, {}, "tool_calls" if called else output.finish_reason)
    if body.include_usage_in_stream():
        yield {**head, "object": "chat.completion.chunk", "choices": [],
               "usage": generation.usage()}


CHAT = Endpoint(ChatCompletionRequest, "chatcmpl", "chat.completion", "messages", None, _prompt_ids,
                _complete, _chunks, chat_constraint)  # fmt: skip
