"""Decode worker: the transfers it is receiving or holding, between the KV receiver's threads
and the HTTP requests that claim them.

A transfer's life: the receiver thread calls `reserve` (engine.admit_with_kv on the engine
thread: blocks held, cached prefix blocks shared; without free blocks the OFFER is refused
(DecodeFullError, so that the prefill worker can try another decode worker) or, when it asks to
wait, queued until blocks free up, most urgent first, then first come, first served
(offer_queue.py), for at most WAIT_SHARE of --kv-timeout) -> the KV lands in the reserved blocks ->
`complete` (ready) or `fail` (blocks freed at once). The decode request for it, sent by the
router once the prefill worker answered, `claim`s it and admits it as running. A transfer
that is not claimed within --kv-timeout of its reservation is aborted, which frees its blocks
(by this table's timer: the engine's reservations have no deadline). One whose KV is still
landing then is cut off first (`cancel_receiving`) and its blocks are freed
when the receiving thread has stopped (its `fail`): never while a write into them may be in
flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from pdserve.runtime.disagg.kv_transfer import DecodeFullError, KVTransferError, Offer
from pdserve.runtime.disagg.offer_queue import OfferQueue
from pdserve.runtime.engine.async_engine import AsyncEngine
from pdserve.runtime.engine.kv_reservation import KVReservation
from pdserve.runtime.engine.sampling_params import SamplingParams
from pdserve.runtime.grammar.compiler import GrammarError
from pdserve.runtime.serving.metrics import WorkerMetrics

log = logging.getLogger(__name__)
ROOM_POLL_SECONDS = 0.005  # how often the head of the queue asks the engine for blocks
# Of --kv-timeout, how long an OFFER may queue for blocks: the prefill worker waits for NEED up
# to the whole timeout, so it must hear back before that.
WAIT_SHARE = 0.8


@dataclass
class IncomingTransfer:
    offer: Offer
    request_id: str  # the engine's id for the reserved request
    params: SamplingParams
    deadline: float
    ready: bool = False  # its KV has landed: no receiver thread writes into its blocks any more
    abandoned: bool = False  # given up on while landing: freed by the receiver's complete/fail
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expiry: asyncio.TimerHandle | None = None


class DecodeTransfers:
    """Implements the KV receiver's hooks; its state lives on the event loop."""

    def __init__(self, engine: AsyncEngine, metrics: WorkerMetrics, timeout: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.metrics = metrics
        self.timeout = timeout
        self.loop = loop
        self.transfers: dict[str, IncomingTransfer] = {}
        self._waiting = OfferQueue()  # OFFERs queued for blocks
        # The KV receiver's `cancel` (set once it exists): True if a thread was receiving.
        self.cancel_receiving: Callable[[str], bool] = lambda transfer_id: False

    # ---- receiver threads ----------------------------------------------------------------

    def reserve(self, offer: Offer) -> tuple[int, list[int]]:
        grammar = offer.params.get("grammar")
        if isinstance(grammar, str):  # compiled here, off the engine's thread (then cached)
            try:
                self.engine.engine.grammars.compile(grammar)
            except GrammarError as exc:
                raise KVTransferError(f"cannot compile the request's grammar: {exc}") from None
        future = asyncio.run_coroutine_threadsafe(self._reserve(offer), self.loop)
        try:
            return future.result(self.timeout)
        except FutureTimeout:
            future.cancel()
            raise KVTransferError("the decode engine did not reserve blocks in time") from None

    def complete(self, transfer_id: str, nbytes: int, seconds: float) -> None:
        self.loop.call_soon_threadsafe(self._complete, transfer_id, nbytes, seconds)

    def fail(self, transfer_id: str, reason: str, cause: str = "transfer_error") -> None:
        self.loop.call_soon_threadsafe(self._fail, transfer_id, reason, cause)

    # ---- event loop ----------------------------------------------------------------------

    async def _reserve(self, offer: Offer) -> tuple[int, list[int]]:
        if offer.transfer_id in self.transfers:
            raise KVTransferError(f"transfer {offer.transfer_id!r} is already in progress")
        try:
            params = SamplingParams(**offer.params)
        except TypeError as exc:
            raise KVTransferError(f"bad sampling params in OFFER: {exc}") from None
        request_id = f"kv-{offer.transfer_id}"
        # Queued OFFERs as urgent or more come first: one that does not wait is refused rather
        # than overtake them.
        reservation = (await self._admit(offer, params, request_id)
                       if not self._waiting.is_ahead_of(offer.priority) else None)
        if reservation is None and offer.wait_for_room:
            reservation = await self._wait_for_room(offer, params, request_id)
        if reservation is None:
            waited = f" within {WAIT_SHARE * self.timeout:.1f}s" if offer.wait_for_room else " now"
            raise DecodeFullError(f"no free KV blocks on the decode worker for this prompt{waited}")
        transfer = IncomingTransfer(offer, request_id, params, time.monotonic() + self.timeout)
        transfer.expiry = self.loop.call_later(self.timeout, self._expire, offer.transfer_id)
        self.transfers[offer.transfer_id] = transfer
        return reservation.num_cached_blocks, list(reservation.missing_block_ids)

    async def _admit(self, offer: Offer, params: SamplingParams,
                     request_id: str) -> KVReservation | None:
        try:
            return await self.engine.call(lambda e: e.admit_with_kv(
                request_id, offer.prompt_token_ids, offer.first_token, params,
                priority=offer.priority, num_kv_tokens=offer.num_kv_tokens))
        except ValueError as exc:
            raise KVTransferError(f"decode worker cannot take the request: {exc}") from None

    async def _wait_for_room(self, offer: Offer, params: SamplingParams,
                             request_id: str) -> KVReservation | None:
        """Queue for blocks (offer_queue.py); the head asks for them every few ms."""
        deadline = time.monotonic() + WAIT_SHARE * self.timeout
        self._waiting.join(offer.transfer_id, offer.priority)
        try:
            while time.monotonic() < deadline:
                if self._waiting.head() == offer.transfer_id:
                    reservation = await self._admit(offer, params, request_id)
                    if reservation is not None:
                        return reservation
                await asyncio.sleep(ROOM_POLL_SECONDS)
            return None
        finally:
            self._waiting.leave(offer.transfer_id)

    def _complete(self, transfer_id: str, nbytes: int, seconds: float) -> None:
        transfer = self.transfers.get(transfer_id)
        if transfer is None:  # expired meanwhile
            return
        if transfer.abandoned:  # given up on while it landed: free its blocks now
            self._release(transfer_id)
            return
        self.metrics.kv_transfer_bytes.inc(nbytes)
        self.metrics.kv_transfer_seconds.observe(seconds)
        if transfer.offer.num_kv_tokens is not None:
            self.metrics.kv_compressed_handoffs.inc()
        transfer.ready = True
        transfer.done.set()

    def _fail(self, transfer_id: str, reason: str, cause: str) -> None:
        self.metrics.count_transfer_failure(cause)
        log.warning("KV transfer %s failed: %s; its reserved blocks are freed", transfer_id,
                    reason)
        self._release(transfer_id)

    def _expire(self, transfer_id: str) -> None:
        if self._drop(transfer_id):
            log.warning("KV transfer %s was not claimed within %.0fs; its blocks are freed",
                        transfer_id, self.timeout)

    def _drop(self, transfer_id: str) -> bool:
        """Give up on a transfer: free its blocks, or, while its KV may still be landing, cut
        the receiver off and leave the freeing to its `fail`/`complete`."""
        transfer = self.transfers.get(transfer_id)
        if transfer is None or transfer.abandoned:
            return False
        if not transfer.ready and self.cancel_receiving(transfer_id):
            transfer.abandoned = True
            if transfer.expiry is not None:
                transfer.expiry.cancel()
            transfer.done.set()  # a claim waiting for it gets None
            return True
        return self._release(transfer_id)

    def _release(self, transfer_id: str) -> bool:
        transfer = self.transfers.pop(transfer_id, None)
        if transfer is None:
            return False
        if transfer.expiry is not None:
            transfer.expiry.cancel()
        self.engine.abort(transfer.request_id)
        transfer.done.set()
        return True

    async def claim(self, transfer_id: str, prompt_token_ids: list[int],
                    params: SamplingParams) -> IncomingTransfer | None:
        """The received transfer for this request, taken out of the table; None if it failed,
        expired, never came or does not match the request (its blocks are then freed)."""
        transfer = self.transfers.get(transfer_id)
        if transfer is None or transfer.abandoned:
            return None
        if not transfer.ready:
            try:
                await asyncio.wait_for(transfer.done.wait(),
                                       max(0.0, transfer.deadline - time.monotonic()))
            except TimeoutError:
                self._drop(transfer_id)
                return None
            if transfer_id not in self.transfers or transfer.abandoned:
                return None
        if (transfer.offer.prompt_token_ids != prompt_token_ids
                or _comparable(transfer.params) != _comparable(params)):
            log.warning("transfer %s does not match its decode request; recomputing",
                        transfer_id)
            self._drop(transfer_id)
            return None
        self.transfers.pop(transfer_id)
        if transfer.expiry is not None:
            transfer.expiry.cancel()
        return transfer


def _comparable(params: SamplingParams) -> dict[str, Any]:
    return dict(vars(params))
