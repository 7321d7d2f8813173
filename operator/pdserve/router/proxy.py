"""One generation request through the router: optional prefill tier, then a decode worker.

Flow (see README "How the KV handoff works"): pick a decode worker D; unless the prompt is short,
pick a prefill worker P by prefix affinity and POST the client's body to it with headers naming
the transfer (`x-pdserve-transfer-id`) and D's KV address (`x-pdserve-kv-target`); P prefills,
pushes the KV to D and answers once D has it. Then POST the body to D with the transfer id: D
admits the request with the received KV and streams the rest back, passed through to the client.
A prefill that fails (connection error or 5xx) is retried on another prefill worker; when all fail
D gets a transfer id it does not hold and applies its --kv-fallback policy. A client disconnect
closes the upstream connection, which aborts the request on the worker serving it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from pdserve.router.discovery import WorkerSet
from pdserve.router.metrics import (
    NO_KV_TARGET,
    NO_PREFILL_PEER,
    PREFILL_DECODE,
    PREFILL_FAILED,
    SHORT_PROMPT,
    Disaggregation,
    RouterMetrics,
    StreamTimer,
)
from pdserve.router.routing import (
    RoutingPolicy,
    WorkerLoad,
    estimate_tokens,
    same_model,
    text_block_hashes,
)
from pdserve.runtime.compression.config import OPT_OUT_HEADER as KV_COMPRESSION_HEADER

log = logging.getLogger(__name__)
PRIORITY_HEADER = "x-pdserve-priority"
TRANSFER_HEADER = "x-pdserve-transfer-id"
KV_TARGET_HEADER = "x-pdserve-kv-target"
MAX_PREFILL_ATTEMPTS = 3
UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError)


@dataclass
class RouterConfig:
    served_model_name: str
    short_prompt_threshold: int = 32
    routing_policy: str = "prefix-affinity"


class BadRequest(Exception):
    """A client error, answered with HTTP 400."""


class Proxy:
    def __init__(self, config: RouterConfig, prefill: WorkerSet, decode: WorkerSet,
                 metrics: RouterMetrics) -> None:
        self.config = config
        self.prefill = prefill
        self.decode = decode
        self.metrics = metrics
        self.prefill_policy = RoutingPolicy(config.routing_policy, "prefill")
        self.decode_policy = RoutingPolicy(config.routing_policy, "decode")
        self.session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        outcome = "error"
        try:
            body, priority = await parse_request(request)
            response = await self._serve(request, path, body, priority)
            outcome = "ok" if response.status < 400 else f"http_{response.status}"
            return response
        except BadRequest as exc:
            outcome = "bad_request"
            return error_response(400, str(exc), "invalid_request_error")
        except (asyncio.CancelledError, ConnectionResetError):
            outcome = "cancelled"
            raise
        finally:
            self.metrics.requests.labels(path, outcome).inc()

    async def _serve(self, request: web.Request, path: str, body: dict[str, Any],
                     priority: int) -> web.StreamResponse:
        started = time.perf_counter()
        hashes = text_block_hashes(prompt_text(body, path))
        headers = {PRIORITY_HEADER: str(priority)}
        if KV_COMPRESSION_HEADER in request.headers:  # the per-request opt-out, to both tiers
            headers[KV_COMPRESSION_HEADER] = request.headers[KV_COMPRESSION_HEADER]
        tried: set[str] = set()
        while True:
            decode = self.decode_policy.choose(self.decode.healthy_loads(), hashes,
                                               frozenset(tried))
            if decode is None:
                return error_response(503, "no decode worker is ready", "unavailable")
            tried.add(decode)
            decision = self._disaggregation(body, path, decode)
            if decision == PREFILL_DECODE:
                handed_off, early = await self._prefill(path, body, headers, hashes, decode)
                if early is not None:
                    return early
                decision = PREFILL_DECODE if handed_off else PREFILL_FAILED
            try:
                response = await self._decode(request, path, body, headers, decode, started)
            except UPSTREAM_ERRORS as exc:
                if request.transport is None or request.transport.is_closing():
                    raise
                log.warning("decode worker %s failed: %s", decode, exc)
                self.decode.mark_unhealthy(decode)
                headers.pop(TRANSFER_HEADER, None)
                continue
            self.decode_policy.record(hashes, decode)
            self.metrics.count_disaggregation(decision)  # once, for the attempt that answered
            return response

    def _disaggregation(self, body: dict[str, Any], path: str, decode: str) -> Disaggregation:
        """PREFILL_DECODE when the prompt goes through the prefill tier, else why decode
        prefills it itself."""
        if estimate_tokens(prompt_text(body, path)) < self.config.short_prompt_threshold:
            return SHORT_PROMPT
        if not self.prefill.configured or self.decode.workers[decode].kv_address is None:
            return NO_KV_TARGET
        if not self._prefill_peers(decode):
            return NO_PREFILL_PEER
        return PREFILL_DECODE

    def _prefill_peers(self, decode: str) -> dict[str, WorkerLoad]:
        """The ready prefill workers of the decode worker's model."""
        return same_model(self.prefill.healthy_loads(), self.decode.workers[decode].load.identity)

    async def _prefill(self, path: str, body: dict[str, Any], headers: dict[str, str],
                       hashes: list[int], decode: str) -> tuple[bool, web.Response | None]:
        """Runs the prefill tier and sets the transfer header: (whether a prefill worker handed
        the KV to decode, the prefill's answer to a 4xx)."""
        assert self.session is not None
        kv_target = self.decode.workers[decode].kv_address
        assert kv_target is not None
        tried: set[str] = set()
        for attempt in range(MAX_PREFILL_ATTEMPTS):
            worker = self.prefill_policy.choose(self._prefill_peers(decode), hashes,
                                                frozenset(tried))
            if worker is None:
                break
            if attempt:
                self.metrics.prefill_retries.inc()
            tried.add(worker)
            transfer_id = uuid.uuid4().hex
            headers[TRANSFER_HEADER] = transfer_id
            load = self.prefill.workers[worker].load
            load.inflight += 1
            try:
                async with self.session.post(
                        f"http://{worker}{path}", json=body,
                        headers={**headers, KV_TARGET_HEADER: kv_target}) as resp:
                    payload = await resp.read()
                    if resp.status == 200:
                        self.prefill_policy.record(hashes, worker)
                        return True, None
                    if 400 <= resp.status < 500:
                        return False, web.Response(status=resp.status, body=payload,
                                                   content_type=resp.content_type)
                    log.warning("prefill on %s failed (HTTP %d): %s", worker, resp.status,
                                payload[:200])
            except UPSTREAM_ERRORS as exc:
                log.warning("prefill worker %s failed: %s", worker, exc)
                self.prefill.mark_unhealthy(worker)
            finally:
                load.inflight -= 1
        return False, None

    async def _decode(self, request: web.Request, path: str, body: dict[str, Any],
                      headers: dict[str, str], decode: str,
                      started: float) -> web.StreamResponse:
        assert self.session is not None
        timer = StreamTimer(self.metrics, started)
        load = self.decode.workers[decode].load
        load.inflight += 1
        try:
            async with self.session.post(f"http://{decode}{path}", json=body,
                                         headers=headers) as resp:
                if not resp.content_type.startswith("text/event-stream"):
                    payload = await resp.read()
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
    raw = request.headers.get(PRIORITY_HEADER, body.get("priority", 0))
    try:
        priority = int(raw)
    except (TypeError, ValueError):
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
