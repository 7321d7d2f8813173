"""One generation request through the router: optional prefill tier, then a decode worker.

Flow (see README "How the KV handoff works"): pick a decode worker D with KV room for the prompt
(admission.py: the workers' free blocks less the router's claims); unless D is to prefill the
prompt itself (disagg_policy.py: conditional disaggregation, or a short prompt), pick a prefill
worker P by prefix affinity (prefill_tier.py) and POST the client's body to it with headers naming
the transfer (`x-pdserve-transfer-id`) and the decode workers to push the KV to
(`x-pdserve-kv-targets`: D first, then the others of its model); P prefills once, pushes the KV
to the first of them with room and answers, naming it (`x-pdserve-kv-receiver`), once it has the
KV. Then POST the body to that decode worker with the transfer id: it admits the request with the
received KV and streams the rest back, passed through to the client. A prefill that fails
(connection error or 5xx) is retried on another prefill worker, except when no decode worker
had room for the KV (a decode-side shortage: prefilling again would not help); then, and when
all fail, D gets a transfer id it does not hold and applies its --kv-fallback policy. A client
disconnect closes the upstream connection, which aborts the request on the worker serving it.
`--decode-admission off` restores the behaviour before admission (one KV target, no claims,
every 5xx retried on another prefill worker): a baseline for bench/bench_overload.py only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from pdserve.router.admission import Claim, candidates
from pdserve.router.config import RouterConfig
from pdserve.router.discovery import WorkerSet
from pdserve.router.metrics import PREFILL_DECODE, RouterMetrics, StreamTimer
from pdserve.router.prefill_tier import UPSTREAM_ERRORS, PrefillTier
from pdserve.router.priority import CLASS_BODY_FIELD, UnknownClass
from pdserve.router.priority_queues import PriorityGate, RequestShed, worker_slots
from pdserve.router.routing import RoutingPolicy, estimate_tokens, text_block_hashes
from pdserve.runtime.compression.config import OPT_OUT_HEADER as KV_COMPRESSION_HEADER
from pdserve.runtime.disagg.headers import TRANSFER_HEADER

log = logging.getLogger(__name__)
PRIORITY_HEADER = "x-pdserve-priority"


class BadRequest(Exception):
    """A client error, answered with HTTP 400."""


class WorkerNotServing(Exception):
    """A worker answered 503 with Retry-After (loading, draining, engine stopped): it did
    nothing with the request, so another worker may take it."""


class Proxy:
    def __init__(self, config: RouterConfig, prefill: WorkerSet, decode: WorkerSet,
                 metrics: RouterMetrics) -> None:
        self.config = config
        self.prefill = prefill
        self.decode = decode
        self.metrics = metrics
        self.decode_policy = RoutingPolicy(config.routing_policy, "decode")
        self.prefill_tier = PrefillTier(config, prefill, decode, self.decode_policy, metrics)
        self.session: aiohttp.ClientSession | None = None
        self.gate = PriorityGate(config.priority) if config.priority is not None else None

    def update_capacity(self) -> None:
        """Slots of the priority queues: per ready decode worker, maxInFlightPerWorker, else
        worker_slots() of the max_num_seqs its /load reports (0 when none reports: admit
        everything)."""
        if self.gate is None:
            return
        per_worker = self.gate.config.max_in_flight_per_worker
        self.gate.set_capacity(sum(per_worker or worker_slots(load.max_num_seqs)
                                   for load in self.decode.healthy_loads().values()))

    async def _admitted(self, request: web.Request, path: str, body: dict[str, Any],
                        priority: int, received: float) -> web.StreamResponse:
        """Through the priority queues when classes are configured, else straight on."""
        if self.gate is None:
            return await self._serve(request, path, body, priority, received)
        try:
            cls = self.gate.config.class_of(request.headers, body)
        except UnknownClass as exc:
            raise BadRequest(str(exc)) from None
        body.pop(CLASS_BODY_FIELD, None)
        try:
            await self.gate.acquire(cls)
        except RequestShed as exc:
            self.metrics.priority_shed.labels(cls.name, exc.shed.reason).inc()
            response = error_response(429, exc.shed.message, "rate_limit_exceeded")
            response.headers["Retry-After"] = str(exc.shed.retry_after)
            return response
        self.metrics.priority_admitted.labels(cls.name).inc()
        started = time.monotonic()
        try:
            return await self._serve(request, path, body, cls.priority, received, cls.name)
        finally:
            self.gate.release(time.monotonic() - started)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        outcome = "error"
        received = time.perf_counter()  # TTFT as the client sees it: the router's queue too
        try:
            body, priority = await parse_request(request)
            response = await self._admitted(request, path, body, priority, received)
            outcome = "ok" if response.status < 400 else f"http_{response.status}"
            return response
        except BadRequest as exc:
            outcome = "bad_request"
            return error_response(400, str(exc), "invalid_request_error")
        except RecursionError:  # decoding the body, or encoding it again for a worker
            outcome = "bad_request"
            return error_response(400, "request body's JSON is nested too deeply",
                                  "invalid_request_error")
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except ConnectionResetError:  # the client left mid-stream before aiohttp cancelled this
            outcome = "cancelled"  # handler: raising would log a 500 that reaches no one
            return web.Response(status=499)
        finally:
            self.metrics.requests.labels(path, outcome).inc()

    async def _serve(self, request: web.Request, path: str, body: dict[str, Any],
                     priority: int, received: float,
                     priority_class: str | None = None) -> web.StreamResponse:
        text = prompt_text(body, path)
        hashes = text_block_hashes(text)
        tokens = estimate_tokens(text)
        headers = {PRIORITY_HEADER: str(priority)}
        if KV_COMPRESSION_HEADER in request.headers:  # the per-request opt-out, to both tiers
            headers[KV_COMPRESSION_HEADER] = request.headers[KV_COMPRESSION_HEADER]
        tried: set[str] = set()
        while True:
            decode = self._choose_decode(hashes, tokens, frozenset(tried))
            if decode is None:
                return error_response(503, "no decode worker is ready", "unavailable")
            tried.add(decode)
            claim = (Claim(self.decode.workers[decode].load, tokens)
                     if self.config.decode_admission else None)
            try:
                decision = self.prefill_tier.path_for(hashes, tokens, decode)
                if decision == PREFILL_DECODE:
                    assert self.session is not None
                    handoff = await self.prefill_tier.hand_off(self.session, path, body, headers,
                                                               hashes, decode, tokens)
                    if handoff.early is not None:
                        return handoff.early
                    decision = handoff.decision
                    if handoff.decode != decode:  # the KV went to another decode worker
                        decode = handoff.decode
                        tried.add(decode)
                        if claim is not None:
                            claim.move(self.decode.workers[decode].load)
                try:
                    response = await self._decode(request, path, body, headers, decode,
                                                  StreamTimer(self.metrics, received,
                                                              priority_class), claim)
                except (*UPSTREAM_ERRORS, WorkerNotServing) as exc:
                    if request.transport is None or request.transport.is_closing():
                        raise
                    log.warning("decode worker %s failed: %s", decode, exc)
                    self.decode.mark_unhealthy(decode)
                    headers.pop(TRANSFER_HEADER, None)
                    continue
            finally:
                if claim is not None:
                    claim.release()
            self.decode_policy.record(hashes, decode)
            self.metrics.count_disaggregation(decision)  # once, for the attempt that answered
            return response

    def _choose_decode(self, hashes: list[int], tokens: int,
                       tried: frozenset[str]) -> str | None:
        """The decode policy's choice among the untried workers with KV room for the prompt,
        or with the most room when none has enough (the request then queues there)."""
        loads = {a: load for a, load in self.decode.healthy_loads().items() if a not in tried}
        if self.config.decode_admission:
            loads = candidates(loads, tokens)
        return self.decode_policy.choose(loads, hashes)

    async def _decode(self, request: web.Request, path: str, body: dict[str, Any],
                      headers: dict[str, str], decode: str, timer: StreamTimer,
                      claim: Claim | None) -> web.StreamResponse:
        assert self.session is not None
        load = self.decode.workers[decode].load
        load.inflight += 1
        try:
            async with self.session.post(f"http://{decode}{path}", json=body,
                                         headers=headers) as resp:
                if claim is not None:  # the worker answers: its own /load counts the blocks
                    claim.release()
                if not resp.content_type.startswith("text/event-stream"):
                    payload = await resp.read()
                    if resp.status == 503 and "Retry-After" in resp.headers:
                        raise WorkerNotServing(payload[:200].decode(errors="replace"))
                    timer.done()
                    return web.Response(status=resp.status, body=payload,
                                        content_type=resp.content_type)
                out = web.StreamResponse(status=resp.status, headers={
                    "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
                await out.prepare(request)
                async for chunk in upstream_chunks(resp, decode):
                    timer.feed(chunk)
                    await out.write(chunk)
                await out.write_eof()
                timer.done()
                return out
        finally:
            load.inflight -= 1


async def upstream_chunks(resp: aiohttp.ClientResponse, worker: str) -> AsyncIterator[bytes]:
    """A worker's event stream; once the client's stream has started, a broken upstream ends it
    with an error event (a retry can no longer be sent)."""
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    except UPSTREAM_ERRORS as exc:
        log.warning("stream from decode worker %s broke: %s", worker, exc)
        error = {"error": {"message": f"the decode worker failed mid-stream: {exc}",
                           "type": "internal_error", "code": 502}}
        yield f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode()


async def parse_request(request: web.Request) -> tuple[dict[str, Any], int]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    raw = request.headers.get(PRIORITY_HEADER, body.get("priority"))
    try:
        priority = 0 if raw is None else int(raw)  # null: the default, as the worker takes it
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"priority must be an integer, got {raw!r}") from None
    return body, priority


def prompt_text(body: dict[str, Any], path: str) -> str:
    """The text the prefix affinity hashes: the prompt, or the chat messages in order."""
    if path.endswith("/chat/completions"):
        messages = body.get("messages")
        if not isinstance(messages, list):
            return ""
        parts = []
        for message in messages:
            if isinstance(message, dict):
                content = message.get("content")
                if not isinstance(content, str):
                    content = json.dumps(content, sort_keys=True)
                parts.append(f"<{message.get('role')}>{content}")
        return "".join(parts)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        return json.dumps(prompt)
    return prompt if isinstance(prompt, str) else ""


def error_response(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}},
                             status=status)
