"""The prefill tier as the router uses it: whether a prompt goes through it (the conditional
disaggregation's signals, disagg_policy.py) and the prefill call that hands its KV to a decode
worker, retried on another prefill worker when one fails (see proxy.py for the whole flow).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from pdserve.router.admission import has_room, kv_targets
from pdserve.router.config import RouterConfig
from pdserve.router.disagg_policy import (
    LocalPrefills,
    PrefillTimings,
    RequestSignals,
    choose_path,
    local_prefill_seconds,
)
from pdserve.router.discovery import WorkerSet
from pdserve.router.metrics import (
    DECODE_FULL,
    LOCAL_CHEAPER,
    NO_KV_TARGET,
    NO_PREFILL_PEER,
    PREFILL_DECODE,
    PREFILL_FAILED,
    SHORT_PROMPT,
    Disaggregation,
    RouterMetrics,
)
from pdserve.router.routing import RoutingPolicy, WorkerLoad, cached_tokens, same_model
from pdserve.runtime.disagg.headers import (
    KV_HANDOFF_SECONDS_HEADER,
    KV_RECEIVER_HEADER,
    KV_REFUSED_HEADER,
    KV_REFUSED_NO_ROOM,
    KV_TARGET_HEADER,
    KV_TARGETS_HEADER,
    PREFILL_SECONDS_HEADER,
    TRANSFER_HEADER,
)

log = logging.getLogger(__name__)
MAX_PREFILL_ATTEMPTS = 3
UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError)


@dataclass
class Handoff:
    """How the prefill tier ended: the decision to count, the decode worker holding the KV
    (or that recomputes the prompt), and the prefill's answer to a 4xx."""

    decision: Disaggregation
    decode: str
    early: web.Response | None = None



class PrefillTier:
    """The prefill workers behind one router, with their routing policy and learnt timings."""

    def __init__(self, config: RouterConfig, prefill: WorkerSet, decode: WorkerSet,
                 decode_policy: RoutingPolicy, metrics: RouterMetrics) -> None:
        self.config = config
        self.prefill = prefill
        self.decode = decode
        self.decode_policy = decode_policy
        self.metrics = metrics
        self.prefill_policy = RoutingPolicy(config.routing_policy, "prefill")
        self.prefill_timings = PrefillTimings()
        self.local_prefills: dict[str, LocalPrefills] = {}  # by decode worker

    def path_for(self, hashes: list[int], tokens: int, decode: str) -> Disaggregation:
        """PREFILL_DECODE when the prompt goes through the prefill tier, else why decode
        prefills it itself."""
        if not self.prefill.configured or self.decode.workers[decode].kv_address is None:
            return NO_KV_TARGET if tokens >= self.config.short_prompt_threshold else SHORT_PROMPT
        peers = self._prefill_peers(decode)
        if not peers:
            return NO_PREFILL_PEER if tokens >= self.config.short_prompt_threshold \
                else SHORT_PROMPT
        load = self.decode.workers[decode].load
        now = time.monotonic()
        signals = RequestSignals(
            tokens=tokens,
            decode_cached=cached_tokens(self.decode_policy.matched_blocks(hashes, decode)),
            prefill_cached=max(cached_tokens(self.prefill_policy.matched_blocks(hashes, p))
                               for p in peers),
            # This router's in-flight requests are among the scraped ones once the worker has
            # them (others' only there): the larger figure, not the sum.
            decode_streams=max(load.running + load.waiting, load.inflight),
            decode_has_room=has_room(load, tokens),
            prefill_queue=min(p.queue for p in peers.values()),
            decode_local_share=self._local_prefills(decode).share(now))
        path = choose_path(self.config.disaggregation, signals, self.prefill_timings,
                           self.config.short_prompt_threshold)
        if path == LOCAL_CHEAPER:
            self._local_prefills(decode).add(
                now, local_prefill_seconds(signals, self.prefill_timings))
        return path

    def _local_prefills(self, decode: str) -> LocalPrefills:
        prefills = self.local_prefills.get(decode)
        if prefills is None:
            prefills = self.local_prefills[decode] = LocalPrefills()
        return prefills

    def _prefill_peers(self, decode: str) -> dict[str, WorkerLoad]:
        """The ready prefill workers of the decode worker's model."""
        return same_model(self.prefill.healthy_loads(), self.decode.workers[decode].load.identity)

    def _kv_target_headers(self, decode: str, tokens: int) -> dict[str, str]:
        """Where the prefill worker may push the KV: `decode` first, then the other ready
        decode workers of its model with a KV port."""
        chosen = self.decode.workers[decode]
        assert chosen.kv_address is not None
        if not self.config.decode_admission:
            return {KV_TARGET_HEADER: chosen.kv_address}
        peers = {a: load for a, load in same_model(self.decode.healthy_loads(),
                                                   chosen.load.identity).items()
                 if self.decode.workers[a].kv_address is not None}
        addresses = [self.decode.workers[a].kv_address for a in kv_targets(decode, peers, tokens)]
        return {KV_TARGETS_HEADER: ",".join(a for a in addresses if a is not None)}

    def _decode_worker_of(self, kv_address: str | None, default: str) -> str:
        for address, worker in self.decode.workers.items():
            if kv_address is not None and worker.kv_address == kv_address:
                return address
        return default  # a prefill worker that names no receiver pushed to the one target

    async def hand_off(self, session: aiohttp.ClientSession, path: str, body: dict[str, Any],
                       headers: dict[str, str], hashes: list[int], decode: str,
                       tokens: int) -> Handoff:
        """Prefills the prompt on a worker of the tier, which pushes its KV to `decode` or
        another decode worker of its model; sets the transfer header."""
        kv_headers = self._kv_target_headers(decode, tokens)
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
            idle_worker = load.queue == 0
            computed = tokens - cached_tokens(self.prefill_policy.matched_blocks(hashes, worker))
            load.inflight += 1
            sent = time.perf_counter()
            try:
                async with session.post(f"http://{worker}{path}", json=body,
                                             headers={**headers, **kv_headers}) as resp:
                    payload = await resp.read()
                    if resp.status == 200:
                        self._learn_timings(resp, computed, time.perf_counter() - sent,
                                            idle_worker)
                        self.prefill_policy.record(hashes, worker)
                        receiver = self._decode_worker_of(resp.headers.get(KV_RECEIVER_HEADER),
                                                          decode)
                        if receiver != decode:
                            self.metrics.kv_redirects.inc()
                        return Handoff(PREFILL_DECODE, receiver)
                    if 400 <= resp.status < 500:
                        return Handoff(PREFILL_FAILED, decode, web.Response(
                            status=resp.status, body=payload, content_type=resp.content_type))
                    if (self.config.decode_admission
                            and resp.headers.get(KV_REFUSED_HEADER) == KV_REFUSED_NO_ROOM):
                        log.warning("no decode worker took the KV prefilled on %s: %s", worker,
                                    payload[:200])
                        return Handoff(DECODE_FULL, decode)  # another prefill would not help
                    log.warning("prefill on %s failed (HTTP %d): %s", worker, resp.status,
                                payload[:200])
            except UPSTREAM_ERRORS as exc:
                log.warning("prefill worker %s failed: %s", worker, exc)
                self.prefill.mark_unhealthy(worker)
            finally:
                load.inflight -= 1
        return Handoff(PREFILL_FAILED, decode)

    def _learn_timings(self, resp: aiohttp.ClientResponse, computed_tokens: int,
                       call_seconds: float, idle_worker: bool) -> None:
        """Feeds the conditional disaggregation what a prefill cost (headers of prefill.py;
        absent from workers that predate them)."""
        try:
            prefill = float(resp.headers[PREFILL_SECONDS_HEADER])
            handoff = float(resp.headers[KV_HANDOFF_SECONDS_HEADER])
        except (KeyError, ValueError):
            return
        self.prefill_timings.observe(computed_tokens, prefill, handoff, call_seconds,
                                     idle_worker)
