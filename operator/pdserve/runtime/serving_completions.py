"""POST /v1/completions: a text (or token-id) prompt in, generated text out, SSE when streaming."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from pdserve.runtime.openai_protocol import (
    PRIORITY_HEADER,
    CompletionRequest,
    parse_priority,
    parse_request,
)
from pdserve.runtime.openai_serving import (
    Generation,
    SubmitFn,
    check_token_ids,
    completion_logprobs,
    now,
    resolve_max_tokens,
    sampling_params,
    start_generation,
    stream_events,
)
from pdserve.runtime.server import STATE, Handler, WorkerState

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


def completions_handler(submit: SubmitFn) -> Handler:
    async def create_completion(request: web.Request) -> web.StreamResponse:
        arrival = time.perf_counter()
        state = request.app[STATE]
        body = parse_request(CompletionRequest, await request.read())
        state.check_model(body.model)
        prompt_ids = _prompt_ids(state, body)
        max_tokens = resolve_max_tokens(body.max_tokens, DEFAULT_MAX_TOKENS, len(prompt_ids),
                                        state.max_model_len, "prompt")
        params = sampling_params(body, max_tokens, body.logprobs)
        priority = parse_priority(request.headers.get(PRIORITY_HEADER), body.priority)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        generation = await start_generation(request, submit, request_id, prompt_ids, params,
                                            priority, arrival)
        with generation:
            head = {"id": request_id, "object": "text_completion", "created": now(),
                    "model": state.served_model_name}
            if body.stream:
                return await _stream(request, body, generation, head)
            return await _complete(state, body, generation, head)

    return create_completion


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


async def _stream(request: web.Request, body: CompletionRequest, generation: Generation,
                  head: dict[str, Any]) -> web.StreamResponse:
    return await stream_events(request, _chunks(request.app[STATE].tokenizer, body, generation,
                                                head))


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
