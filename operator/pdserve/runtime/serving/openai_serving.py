"""What the completions and chat endpoints share: the request handler itself
(`endpoint_handler`, given an `Endpoint` that says what differs), turning a request into
engine inputs, one generation's lifecycle (metrics, abort on early exit), SSE framing and
response pieces.

Handlers get their token source as a `SubmitFn`; role `both` uses the local engine
(`local_submit`), and other roles can pass their own (e.g. a decode worker that looks up the
prompt KV named by a request header) without touching the OpenAI layer.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from pdserve.runtime.checkpoints.generation import GenerationDefaults
from pdserve.runtime.engine.sampling_params import SamplingParams
from pdserve.runtime.serving.constraints import Constraint, compile_constraint
from pdserve.runtime.serving.metrics import RequestTracker
from pdserve.runtime.serving.openai_protocol import (
    KV_COMPRESSION_HEADER,
    PRIORITY_HEADER,
    RequestError,
    SamplingFields,
    allows_kv_compression,
    parse_priority,
    parse_request,
)
from pdserve.runtime.serving.server import STATE, Handler, WorkerState


class OutputStream(Protocol):
    """A request's StepOutputs; `close()` before the last one aborts the request."""

    def __aiter__(self) -> OutputStream: ...
    async def __anext__(self) -> Any: ...
    def close(self) -> None: ...


# (http request, request id, prompt token ids, params, priority) -> the admitted request's stream;
# raises ValueError (-> HTTP 400) for a request the engine cannot take.
SubmitFn = Callable[[web.Request, str, list[int], SamplingParams, int], Awaitable[OutputStream]]


async def local_submit(request: web.Request, request_id: str, prompt_ids: list[int],
                       params: SamplingParams, priority: int) -> OutputStream:
    """Role `both`: the whole request runs on this worker's engine."""
    return await request.app[STATE].engine.submit(request_id, prompt_ids, params, priority)


@dataclass(frozen=True)
class Endpoint:
    """What tells one OpenAI generation endpoint from another. The request type has
    `output_limit()`, `num_logprobs()`, `priority`, `stream` and `model`."""

    request_type: type[Any]
    id_prefix: str  # of the response id: "cmpl", "chatcmpl"
    object_name: str  # the response's "object"
    prompt_param: str  # the body field an unusable prompt is blamed on
    default_max_tokens: int | None  # None: as many as the context leaves
    prompt_ids: Callable[[WorkerState, Any], list[int]]
    # (state, body, generation, response head) -> the whole response
    complete: Callable[[WorkerState, Any, Generation, dict[str, Any]], Awaitable[web.Response]]
    # (tokenizer, body, generation, response head) -> the SSE events
    chunks: Callable[[Any, Any, Generation, dict[str, Any]], AsyncIterator[dict[str, Any]]]
    # (state, body) -> what the output must match, or None
    constraint: Callable[[WorkerState, Any], Constraint | None] = lambda state, body: None


def endpoint_handler(endpoint: Endpoint, submit: SubmitFn) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        arrival = time.perf_counter()
        state = request.app[STATE]
        body = parse_request(endpoint.request_type, await request.read())
        state.check_model(body.model)
        prompt_ids = endpoint.prompt_ids(state, body)
        defaults = state.generation_defaults
        max_tokens = resolve_max_tokens(body.output_limit(),
                                        defaults.max_new_tokens or endpoint.default_max_tokens,
                                        len(prompt_ids), state.max_model_len,
                                        endpoint.prompt_param)  # fmt: skip
        params = sampling_params(body, max_tokens, body.num_logprobs(), defaults)
        params.allow_kv_compression = allows_kv_compression(
            request.headers.get(KV_COMPRESSION_HEADER), body.kv_compression)
        constraint = endpoint.constraint(state, body)
        if constraint is not None:
            await compile_constraint(state, constraint)
            params.grammar = constraint.grammar
        priority = parse_priority(request.headers.get(PRIORITY_HEADER), body.priority)
        request_id = f"{endpoint.id_prefix}-{uuid.uuid4().hex}"
        generation = await start_generation(request, submit, request_id, prompt_ids, params,
                                            priority, arrival)  # fmt: skip
        with generation:
            head = {"id": request_id, "object": endpoint.object_name, "created": now(),
                    "model": state.served_model_name}  # fmt: skip
            if body.stream:
                events = endpoint.chunks(state.tokenizer, body, generation, head)
                return await stream_events(request, events)
            return await endpoint.complete(state, body, generation, head)

    return handle


def resolve_max_tokens(requested: int | None, default: int | None, prompt_len: int,
                       max_model_len: int, prompt_param: str) -> int:
    """The output budget: explicit requests must fit the context; defaults are clipped to it."""
    room = max_model_len - prompt_len
    if prompt_len == 0:
        raise RequestError("the prompt is empty", param=prompt_param)
    if room < 1:
        raise RequestError(
            f"the prompt has {prompt_len} tokens but this model's context length is "
            f"{max_model_len} tokens (at least one must be left to generate)",
            param=prompt_param, code="context_length_exceeded")
    if requested is None:
        return room if default is None else min(default, room)
    if requested > room:
        raise RequestError(
            f"this model's context length is {max_model_len} tokens, but {prompt_len + requested}"
            f" were requested ({prompt_len} in the prompt, {requested} in max_tokens)",
            param="max_tokens", code="context_length_exceeded")
    return requested


def sampling_params(fields: SamplingFields, max_tokens: int, logprobs: int | None,
                    defaults: GenerationDefaults) -> SamplingParams:
    requested = {"temperature": fields.temperature, "top_p": fields.top_p, "top_k": fields.top_k}
    chosen = {**defaults.sampling(),
              **{name: value for name, value in requested.items() if value is not None}}
    params = SamplingParams(
        max_tokens=max_tokens, seed=fields.seed, stop=fields.stop_strings(),
        stop_token_ids=list(fields.stop_token_ids), ignore_eos=fields.ignore_eos,
        logprobs=logprobs, **chosen)
    try:
        params.validate()
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return params


def check_token_ids(token_ids: list[int], vocab_size: int) -> None:
    for token_id in token_ids:
        if not 0 <= token_id < vocab_size:
            raise RequestError(
                f"token id {token_id} is outside the vocabulary (0..{vocab_size - 1})",
                param="prompt")


class Generation:
    """One admitted request: iterates its outputs, records its metrics, aborts it if left early.

    Use as a context manager so that every exit path (disconnect, error) closes it.
    """

    def __init__(self, stream: OutputStream, tracker: RequestTracker) -> None:
        self._stream = stream
        self._tracker = tracker
        self._reason = "abort"
        self.num_prompt_tokens = 0
        self.num_cached_tokens = 0
        self.num_generated = 0
        self.logprobs: list[Any] = []  # the engine's TokenLogprobs of every generated token

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stream.close()
        self._tracker.finish(self._reason)

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Any:
        try:
            output = await self._stream.__anext__()
        except StopAsyncIteration:
            raise
        except Exception:
            self._reason = "error"
            raise
        self._tracker.on_output(output)
        self.num_prompt_tokens = output.num_prompt_tokens
        self.num_cached_tokens = output.num_cached_tokens
        self.num_generated += len(output.token_ids)
        self.logprobs += output.logprobs or []
        if output.finished:
            self._reason = output.finish_reason or "stop"
            if self._reason == "error":
                raise RuntimeError("the engine failed while generating this request")
        return output

    def usage(self) -> dict[str, Any]:
        return {"prompt_tokens": self.num_prompt_tokens,
                "completion_tokens": self.num_generated,
                "total_tokens": self.num_prompt_tokens + self.num_generated,
                "prompt_tokens_details": {"cached_tokens": self.num_cached_tokens}}


async def start_generation(request: web.Request, submit: SubmitFn, request_id: str,
                           prompt_ids: list[int], params: SamplingParams, priority: int,
                           arrival: float) -> Generation:
    """Admit the request; its latencies are measured from `arrival` (time.perf_counter())."""
    try:
        stream = await submit(request, request_id, prompt_ids, params, priority)
    except ValueError as exc:  # the engine's verdict on a request it cannot take
        raise RequestError(str(exc)) from None
    return Generation(stream, request.app[STATE].metrics.track(arrival))


def now() -> int:
    return int(time.time())


async def stream_events(request: web.Request,
                        events: AsyncIterator[dict[str, Any]]) -> web.StreamResponse:
    """Send each event as SSE, then `data: [DONE]`. A failure after the 200 headers went out
    becomes an error event; a client that left ends the stream quietly (the caller's
    `with generation` then aborts the request)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        async with contextlib.aclosing(events):
            try:
                async for event in events:
                    await _send(response, event)
            except ConnectionResetError:
                raise
            except Exception as exc:
                await _send(response, _stream_error(exc))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass
    return response


async def _send(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode())


def _stream_error(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, RequestError):
        return exc.body()
    return {"error": {"message": f"generation failed: {exc}", "type": "server_error",
                      "param": None, "code": None}}


def _token_text(tokenizer: Any, token_id: int) -> str:
    return str(tokenizer.decode([token_id], skip_special_tokens=False))


def chat_logprobs(tokenizer: Any, entries: list[Any]) -> dict[str, Any]:
    """`choices[].logprobs` of a chat completion, from the engine's TokenLogprobs."""

    def item(token_id: int, logprob: float) -> dict[str, Any]:
        text = _token_text(tokenizer, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {"content": [{**item(entry.token_id, entry.logprob),
                         "top_logprobs": [item(tid, lp) for tid, lp in entry.top]}
                        for entry in entries]}


def completion_logprobs(tokenizer: Any, entries: list[Any], text_offset: int) -> dict[str, Any]:
    """`choices[].logprobs` of a (legacy) completion; offsets count from `text_offset`."""
    tokens = [_token_text(tokenizer, entry.token_id) for entry in entries]
    offsets = []
    for token in tokens:
        offsets.append(text_offset)
        text_offset += len(token)
    return {"tokens": tokens, "token_logprobs": [entry.logprob for entry in entries],
            "top_logprobs": [{_token_text(tokenizer, tid): lp for tid, lp in entry.top}
                             for entry in entries],
            "text_offset": offsets}
