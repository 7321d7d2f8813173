"""Role `decode`: generates for requests whose prompt KV a prefill worker pushed here.

On load it starts the KV receiver on --kv-port. A generation request carrying
`x-pdserve-transfer-id` (set by the router) claims that transfer: the request is admitted with
the received KV and its first token, which goes to the client at once (before the first decode
step, which may wait behind a batch), and only decoding runs here. When the transfer failed,
expired or never arrived, --kv-fallback decides: `recompute` prefills locally, `fail` answers
503. Requests without the header (short prompts the router sends straight here) run locally.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from pdserve.runtime.disagg.decode_transfers import DecodeTransfers, IncomingTransfer
from pdserve.runtime.disagg.kv_transfer import KVReceiverServer
from pdserve.runtime.disagg.kv_transfer.auth import kv_secret
from pdserve.runtime.disagg.kv_transfer.protocol import COMPRESSED_KV
from pdserve.runtime.engine.detokenizer import IncrementalDetokenizer
from pdserve.runtime.engine.llm_engine import StepOutput
from pdserve.runtime.engine.sampler import TokenLogprobs
from pdserve.runtime.engine.sampling_params import SamplingParams
from pdserve.runtime.serving.load_route import KV_PORT_KEY, install_load_route
from pdserve.runtime.serving.openai_routes import add_openai_routes
from pdserve.runtime.serving.openai_serving import OutputStream, local_submit
from pdserve.runtime.serving.server import STATE, WorkerState

log = logging.getLogger(__name__)
TRANSFER_HEADER = "x-pdserve-transfer-id"
# Set once the model is loaded: the transfer table and the KV receiver serving it.
TRANSFERS: web.AppKey[list[DecodeTransfers]] = web.AppKey("pdserve_decode_transfers", list)
RECEIVER: web.AppKey[list[KVReceiverServer]] = web.AppKey("pdserve_kv_receiver", list)


class FirstThenStream:
    """The output of the token a request arrived with, then the engine's outputs."""

    def __init__(self, first: StepOutput, stream: OutputStream) -> None:
        self._first: StepOutput | None = first
        self._stream = stream

    def __aiter__(self) -> FirstThenStream:
        return self

    async def __anext__(self) -> StepOutput:
        if self._first is not None:
            output, self._first = self._first, None
            return output
        result: StepOutput = await self._stream.__anext__()
        return result

    def close(self) -> None:
        self._stream.close()


class FinishedStream:
    """A request that ended with the token it arrived with: one final output."""

    def __init__(self, output: StepOutput) -> None:
        self._output: StepOutput | None = output

    def __aiter__(self) -> FinishedStream:
        return self

    async def __anext__(self) -> StepOutput:
        if self._output is None:
            raise StopAsyncIteration
        output, self._output = self._output, None
        return output

    def close(self) -> None:
        self._output = None


async def decode_submit(request: web.Request, request_id: str, prompt_ids: list[int],
                        params: SamplingParams, priority: int) -> OutputStream:
    state = request.app[STATE]
    transfer_id = request.headers.get(TRANSFER_HEADER)
    if transfer_id is None:
        return await local_submit(request, request_id, prompt_ids, params, priority)
    transfers = request.app[TRANSFERS][0]
    transfer = await transfers.claim(transfer_id, prompt_ids, params)
    if transfer is not None:
        stream = await admit_claimed(state, transfer)
        if stream is not None:
            return stream
    if state.settings["kv_fallback"] == "fail":
        state.metrics.count_transfer_failure("kv_not_arrived")
        raise web.HTTPServiceUnavailable(reason=f"the prompt KV of transfer {transfer_id} did "
                                         "not arrive (kv-fallback: fail)")
    state.metrics.kv_transfer_fallbacks.inc()
    log.info("transfer %s missing: prefilling request %s locally", transfer_id, request_id)
    return await local_submit(request, request_id, prompt_ids, params, priority)


async def admit_claimed(state: WorkerState, transfer: IncomingTransfer) -> OutputStream | None:
    """Admit a received request as running; None when the engine no longer holds its blocks."""
    engine = state.engine
    request_id = transfer.request_id
    stream = engine.open_stream(request_id)
    try:
        first = await engine.call(lambda e: _admit_in_engine(e, transfer))
    except KeyError:  # the reservation expired on the engine side
        engine.forget(request_id)
        return None
    except BaseException:
        engine.abort(request_id)
        raise
    lp = transfer.offer.first_logprobs
    first_logprobs = TokenLogprobs(lp["token_id"], lp["logprob"], [(t, p) for t, p in lp["top"]]) \
        if lp and transfer.params.logprobs is not None else None
    first.logprobs = [first_logprobs] if first_logprobs else None
    if first.finished:
        engine.forget(request_id)
        return FinishedStream(first)
    return FirstThenStream(first, stream)


def _admit_in_engine(engine: Any, transfer: IncomingTransfer) -> StepOutput:
    """On the engine thread: the output of the first token, sent at once. A request it already
    ends is answered; otherwise it joins the running batch."""
    params, offer = transfer.params, transfer.offer
    first = offer.first_token
    stops = (not params.ignore_eos and first in engine.scheduler.eos_token_ids) \
        or first in params.stop_token_ids
    if not stops and params.max_tokens > 1:
        engine.complete_kv(transfer.request_id)
        return engine.emit_pending(transfer.request_id)
    detokenizer = IncrementalDetokenizer(engine.tokenizer, offer.prompt_token_ids, params.stop)
    text = detokenizer.add_tokens([first], True)
    engine.abort(transfer.request_id)
    reason = "stop" if stops or detokenizer.stopped else "length"
    return StepOutput(transfer.request_id, [first], text, None, True, reason,
                      len(offer.prompt_token_ids), 0)


async def start_receiver(app: web.Application, state: WorkerState) -> None:
    settings = state.settings
    transfers = DecodeTransfers(state.engine, state.metrics, settings["kv_timeout"],
                                asyncio.get_running_loop())
    server = KVReceiverServer(state.engine.engine.kv_pool, transfers, settings["host"],
                              settings["kv_port"], identity=state.model_identity,
                              timeout=settings["kv_timeout"],
                              features=[COMPRESSED_KV] if state.engine.engine.reads_compressed_kv
                              else [], secret=kv_secret(settings))
    transfers.cancel_receiving = server.cancel
    server.start()
    app[TRANSFERS].append(transfers)
    app[RECEIVER].append(server)
    app[KV_PORT_KEY][0] = server.port


async def close_receiver(app: web.Application) -> None:
    for server in app[RECEIVER]:
        server.close()


def install(app: web.Application, state: WorkerState) -> None:
    app[TRANSFERS] = []
    app[RECEIVER] = []
    app.on_cleanup.append(close_receiver)
    install_load_route(app)
    add_openai_routes(app, decode_submit)
    state.on_loaded.append(lambda s: start_receiver(app, s))
