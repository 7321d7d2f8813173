"""POST /v1/completions: a text (or token-id) prompt in, generated text out, SSE when streaming."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from pdserve.runtime.serving.openai_protocol import CompletionRequest
from pdserve.runtime.serving.openai_serving import (
    Endpoint,
    Generation,
    SubmitFn,
    check_token_ids,
    completion_logprobs,
    endpoint_handler,
)
from pdserve.runtime.serving.server import Handler, WorkerState

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


def completions_handler(submit: SubmitFn) -> Handler:
    return endpoint_handler(COMPLETIONS, submit)


def _prompt_ids(state: WorkerState, body: CompletionRequest) -> list[int]:
    prompt = body.single_prompt()
    if isinstance(prompt, str):
        return state.tokenizer.encode(prompt, add_special_tokens=True)
    check_token_ids(prompt, state.tokenizer.vocab_size)
    return prompt


def _choice(text: str, finish_reason: str | None, logprobs: Any = None) -> dict[str, Any]:
    return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


async def _complete(state: WorkerState, body: CompletionRequest, generation: Generation,
                    head: dict[str, Any]) -> web.Response:
    texts: list[str] = []
    finish_reason = None
    async for output in generation:
        texts.append(output.text)
        finish_reason = output.finish_reason
    logprobs = None
    if body.logprobs is not None:
        logprobs = completion_logprobs(state.tokenizer, generation.logprobs, 0)
    choice = _choice("".join(texts), finish_reason, logprobs)
    return web.json_response({**head, "choices": [choice], "usage": generation.usage()})


async def _chunks(tokenizer: Any, body: CompletionRequest, generation: Generation,
                  head: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    text_offset = 0
    async for output in generation:
        if not output.text and not output.finished:
            continue
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(tokenizer, output.logprobs or [], text_offset)
        text_offset += len(output.text)
        finish_reason = output.finish_reason if output.finished else None
        yield {**head, "choices": [_choice(output.text, finish_reason, logprobs)]}
    if body.include_usage_in_stream():
        yield {**head, "choices": [], "usage": generation.usage()}


COMPLETIONS = Endpoint(CompletionRequest, "cmpl", "text_completion", "prompt", DEFAULT_MAX_TOKENS,
                       _prompt_ids, _complete, _chunks)  # fmt: skip
