"""Role `prefill`: computes a prompt's KV and first token, and pushes the KV to a decode worker.

The router sends the client's request here with `x-pdserve-transfer-id` and
`x-pdserve-kv-targets` (KV addresses of decode workers, its choice first: kv_targets.py). The
prompt is prefilled once with this worker's own prefix cache (`engine.prefill_only`), its blocks
stay pinned while the KV is pushed (only blocks the decode worker lacks travel) to the first
target with room, or queued at the first target until it has room, then are released. The answer
is the usual OpenAI response holding just the first token, sent once a decode worker has
acknowledged the KV, with `x-pdserve-kv-receiver` naming it. When no target had room in time the
answer is 503 with
`x-pdserve-kv-refused: no-room` (the router then lets decode recompute, never re-prefills); any
other failed push answers 502 so that the router retries elsewhere. The prompt tokens computed
for KV that no decode worker took count in pdserve_kv_wasted_prefill_tokens_total.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, replace
from typing import Any

from aiohttp import web

from pdserve.runtime.disagg.decode import TRANSFER_HEADER, FinishedStream
from pdserve.runtime.disagg.headers import (
    KV_HANDOFF_SECONDS_HEADER,
    KV_RECEIVER_HEADER,
    KV_REFUSED_HEADER,
    KV_REFUSED_NO_ROOM,
    KV_TARGETS_HEADER,
    PREFILL_SECONDS_HEADER,
)
from pdserve.runtime.disagg.kv_targets import parse_targets as parse_kv_targets
from pdserve.runtime.disagg.kv_targets import push_to_first_with_room
from pdserve.runtime.disagg.kv_transfer import DecodeFullError, KVSender, KVTransferError, Offer
from pdserve.runtime.disagg.kv_transfer.auth import kv_secret
from pdserve.runtime.engine.sampling_params import SamplingParams
from pdserve.runtime.serving.load_route import install_load_route
from pdserve.runtime.serving.openai_protocol import RequestError
from pdserve.runtime.serving.openai_routes import add_openai_routes
from pdserve.runtime.serving.openai_serving import OutputStream
from pdserve.runtime.serving.server import STATE, WorkerState

log = logging.getLogger(__name__)
SENDER: web.AppKey[list[KVSender]] = web.AppKey("pdserve_kv_sender", list)
# Request keys, turned into response headers by name_kv_receiver (also on error responses,
# which the server's error middleware renders anew): the KV address that took the request's KV;
# that no decode worker had room for it.
RECEIVER_KEY = "pdserve_kv_receiver"
NO_ROOM_KEY = "pdserve_kv_no_room"
TIMINGS_KEY = "pdserve_prefill_timings"  # (prefill seconds, handoff seconds)


async def prefill_submit(request: web.Request, request_id: str, prompt_ids: list[int],
                         params: SamplingParams, priority: int) -> OutputStream:
    state = request.app[STATE]
    transfer_id = request.headers.get(TRANSFER_HEADER)
    targets = parse_kv_targets(request.headers)
    if not transfer_id or targets is None:
        raise RequestError(f"a prefill worker serves the pdserve router: headers {TRANSFER_HEADER}"
                           f" and {KV_TARGETS_HEADER} are required")
    engine = state.engine
    arrived = time.perf_counter()
    # admit() aborts a request whose caller is cancelled while prefill_only is still queued,
    # so a cancelled prefill never keeps its KV blocks pinned.
    stream = await engine.admit(
        request_id, lambda e: e.prefill_only(request_id, prompt_ids, params, priority))
    first = None
    try:
        async for output in stream:
            first = output
    finally:
        stream.close()
    if first is None or not first.token_ids or first.finish_reason in ("error", "abort"):
        await engine.call(lambda e: e.release(request_id))
        raise web.HTTPInternalServerError(reason=f"prefill of {request_id} failed "
                                          f"({first.finish_reason if first else 'no output'})")
    first_logprobs = asdict(first.logprobs[-1]) if first.logprobs else None
    handed_off = False
    prefilled = time.perf_counter()
    try:
        num_kv = await engine.call(lambda e: e.prefilled_kv_tokens(request_id))
        offer = Offer(transfer_id, prompt_ids, first.token_ids[-1], asdict(params), priority,
                      first_logprobs, num_kv if num_kv < len(prompt_ids) else None)
        sender = request.app[SENDER][0]
        request[RECEIVER_KEY], _ = await push_to_first_with_room(
            lambda target, wait: push(sender, state, request_id,
                                      replace(offer, wait_for_room=wait), target), targets)
        handed_off = True
        request[TIMINGS_KEY] = (prefilled - arrived, time.perf_counter() - prefilled)
    except DecodeFullError as exc:
        state.metrics.count_transfer_failure(exc.reason)
        log.warning("KV of %s not pushed: %s", request_id, exc)
        request[NO_ROOM_KEY] = True
        raise web.HTTPServiceUnavailable(reason=f"KV transfer failed: {exc}") from None
    finally:
        if not handed_off:  # computed for nothing: no decode worker holds this KV
            state.metrics.kv_wasted_prefill_tokens.inc(first.num_prompt_tokens
                                                      - first.num_cached_tokens)
        await engine.call(lambda e: e.release(request_id))
    return FinishedStream(first)


async def name_kv_receiver(request: web.Request, response: web.StreamResponse) -> None:
    """Tells the router which decode worker holds the KV (its answer may be a redirect), or
    that none had room (the router then does not prefill the prompt again), and how long the
    prefill and the handoff took."""
    receiver = request.get(RECEIVER_KEY)
    if receiver:
        response.headers[KV_RECEIVER_HEADER] = receiver
    if request.get(NO_ROOM_KEY):
        response.headers[KV_REFUSED_HEADER] = KV_REFUSED_NO_ROOM
    timings = request.get(TIMINGS_KEY)
    if timings is not None:
        response.headers[PREFILL_SECONDS_HEADER] = f"{timings[0]:.6f}"
        response.headers[KV_HANDOFF_SECONDS_HEADER] = f"{timings[1]:.6f}"


async def push(sender: KVSender, state: WorkerState, request_id: str, offer: Offer,
               target: str) -> None:
    """Push the pinned prompt KV. A cancelled request cuts its transfer, then still waits for the
    sending thread, so that the blocks are released only once nothing reads them any more."""
    blocks = await state.engine.call(lambda e: e.prefilled_blocks(request_id))
    sending = sender.start_push(target, offer, blocks)
    try:
        result = await asyncio.shield(sending)
    except asyncio.CancelledError:
        sender.cancel(offer.transfer_id)
        with contextlib.suppress(Exception):
            await sending
        raise
    except DecodeFullError:
        raise  # a shortage, not a failure: the caller tries the next target
    except KVTransferError as exc:
        state.metrics.count_transfer_failure(exc.reason)
        log.warning("KV push of %s to %s failed: %s", request_id, target, exc)
        raise web.HTTPBadGateway(reason=f"KV transfer to decode worker {target} failed: {exc}") \
            from None
    state.metrics.kv_transfer_bytes.inc(result.bytes)
    state.metrics.kv_transfer_seconds.observe(result.seconds)
    if offer.num_kv_tokens is not None:
        state.metrics.kv_compressed_handoffs.inc()
    log.debug("pushed %s: %d of %d blocks, %d bytes in %.3fs", request_id,
              result.num_blocks - result.num_cached_blocks, result.num_blocks, result.bytes,
              result.seconds)


async def start_sender(app: web.Application, state: WorkerState) -> None:
    settings: dict[str, Any] = state.settings
    app[SENDER].append(KVSender(state.engine.engine.kv_pool, settings["kv_transport"],
                                identity=state.model_identity,
                                timeout=settings["kv_timeout"], secret=kv_secret(settings)))


async def close_sender(app: web.Application) -> None:
    for sender in app[SENDER]:
        sender.close()


def install(app: web.Application, state: WorkerState) -> None:
    app[SENDER] = []
    app.on_cleanup.append(close_sender)
    app.on_response_prepare.append(name_kv_receiver)
    install_load_route(app)
    add_openai_routes(app, prefill_submit)
    state.on_loaded.append(lambda s: start_sender(app, s))
