"""The router's priority queues (the classes and their keys: priority.py).

A *slot* is one request in flight on a decode worker: every request ends on a decode worker and
holds a slot from admission until its answer is complete. The stack has `maxInFlightPerWorker`
slots per ready decode worker, or, unset, the `max_num_seqs` each worker reports in its `/load`
(vLLM's `--max-num-seqs`, the batch a worker runs at once) plus a quarter of it
(`worker_slots`): that short queue at the worker refills a finished sequence at its next engine
step without waiting for a round trip through the router (with slots = max_num_seqs exactly, a
benchmark run lost a third of the throughput), and the worker orders it by the forwarded
priority itself. Beyond that the router queues: a request is admitted while fewer than that many
requests are in flight through this router, else it queues in its class. A worker without
`/load` (role both) reports no batch size: set maxInFlightPerWorker, else nothing queues.
Each router replica counts only its own requests: with several replicas, lower
maxInFlightPerWorker (the slots are not yet divided among replicas).

A free slot goes to the most urgent class with a waiting request (classes rank by their
`priority`, the value the workers get: smaller is more urgent, as in the engine), first come
first served within a class, except that when a lowest-class request has waited while
`starvationGuardEvery - 1` admissions in a row went to other classes, the next goes to the oldest
lowest-class request (at least 1 of every N admissions while it waits).

Shedding (429, OpenAI-style error, `Retry-After` in seconds): a lowest-class request whose queue
is full (or all queues together hold the sum of the classes' `maxQueue`), or whose expected wait
exceeds its class's `ttftTargetSeconds`; a request of a higher class whose queue is full (or all
are) first evicts the newest queued lowest-class request (answered 429) and takes its place, so
nothing above the lowest class is shed while lowest-class requests queue, and only when none
does is it shed itself. Queued requests never exceed the sum of the classes' `maxQueue`. The
expected wait is the requests queued ahead plus one, times the mean time a request holds a slot
(a moving average), over the slots.

`PriorityQueues` is pure: no I/O, no clock of its own (callers pass `now`), no asyncio;
`PriorityGate` below wraps it with futures for the proxy.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pdserve.router.priority import PriorityClass, PriorityConfig

# The mean slot time before any request completed (seconds): a guess that only the first
# expected waits use.
INITIAL_SERVICE_SECONDS = 1.0
SERVICE_EWMA = 0.1
WORKER_QUEUE_SHARE = 0.25  # of max_num_seqs, waiting at the worker beyond its batch


def worker_slots(max_num_seqs: int) -> int:
    """A worker's slots from the batch size it reports: the batch and a short queue."""
    return max_num_seqs + math.ceil(WORKER_QUEUE_SHARE * max_num_seqs)



@dataclass(eq=False)
class Entry:
    """One queued request."""

    cls: PriorityClass
    enqueued: float
    token: Any = None  # the caller's handle (PriorityGate: a future)


@dataclass(frozen=True)
class Shed:
    """Why a request is answered 429, and the Retry-After to send."""

    message: str
    retry_after: int
    reason: str  # queue_full | ttft_target | evicted


@dataclass
class Offer:
    """What `PriorityQueues.offer` decided: admitted now, queued (as `entry`), or shed; and
    queued lowest-class entries it evicted to make room (each to answer 429 with `shed`)."""

    admitted: bool = False
    entry: Entry | None = None
    shed: Shed | None = None
    evicted: list[tuple[Entry, Shed]] = field(default_factory=list)


class PriorityQueues:
    """The admission state: slots, requests in flight, one queue per class."""

    def __init__(self, config: PriorityConfig) -> None:
        self.config = config
        self.queues: dict[str, deque[Entry]] = {c.name: deque() for c in config.classes}
        self.capacity = 0  # 0: unknown (no worker reported yet): admit everything
        self.in_flight = 0
        self.service_seconds = INITIAL_SERVICE_SECONDS
        self._since_lowest = 0  # admissions to other classes while the lowest waited
        self.admitted_total: dict[str, int] = {c.name: 0 for c in config.classes}
        # Queued requests never exceed this: a more urgent class over its own maxQueue takes
        # the place of an evicted lowest-class request.
        self.bound = sum(c.max_queue for c in config.classes)

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def _has_slot(self) -> bool:
        return self.capacity <= 0 or self.in_flight < self.capacity

    def expected_wait(self, ahead: int) -> float:
        """Seconds until a request with `ahead` requests queued before it gets a slot."""
        slots = max(self.capacity, 1)
        return (ahead + 1) * self.service_seconds / slots

    def _queue_full(self, cls: PriorityClass) -> Shed:
        return Shed(f"overloaded: the router's queue for priority class {cls.name!r} is full "
                    f"({cls.max_queue} requests); retry later", self._retry_after(), "queue_full")

    def _retry_after(self) -> int:
        return max(1, math.ceil(self.expected_wait(self.queued())))

    def offer(self, cls: PriorityClass, now: float, token: Any = None) -> Offer:
        if self.queued() == 0 and self._has_slot():
            self._admit(cls)
            return Offer(admitted=True)
        lowest = self.config.lowest
        queue = self.queues[cls.name]
        result = Offer()
        full = len(queue) >= cls.max_queue or self.queued() >= self.bound
        if cls.name == lowest.name:
            if full:
                return Offer(shed=self._queue_full(cls))
            wait = self.expected_wait(self.queued())
            if cls.ttft_target_seconds is not None and wait > cls.ttft_target_seconds:
                return Offer(shed=Shed(
                    f"overloaded: the expected wait for priority class {cls.name!r} "
                    f"({wait:.1f} s) exceeds its TTFT target ({cls.ttft_target_seconds:g} s); "
                    "retry later", max(1, math.ceil(wait)), "ttft_target"))
        elif full:
            low = self.queues[lowest.name]
            if not low:
                return Offer(shed=self._queue_full(cls))
            victim = low.pop()  # the newest: the oldest has waited longest
            result.evicted.append((victim, Shed(
                f"overloaded: a request of priority class {lowest.name!r} was shed for more "
                "urgent ones; retry later", self._retry_after(), "evicted")))
        entry = Entry(cls, now, token)
        queue.append(entry)
        result.entry = entry
        return result

    def cancel(self, entry: Entry) -> bool:
        """Drops a queued entry (its client left); False when it is no longer queued."""
        queue = self.queues[entry.cls.name]
        try:
            queue.remove(entry)
        except ValueError:
            return False
        return True

    def release(self, held_seconds: float | None = None) -> list[Entry]:
        """A request left its slot (after `held_seconds`): the entries admitted now."""
        self.in_flight -= 1
        if held_seconds is not None:
            self.service_seconds += SERVICE_EWMA * (held_seconds - self.service_seconds)
        return self.dispatch()

    def set_capacity(self, capacity: int) -> list[Entry]:
        self.capacity = max(0, capacity)
        return self.dispatch()

    def dispatch(self) -> list[Entry]:
        """Admits queued entries while slots are free, in the guarded strict order."""
        admitted = []
        while self._has_slot():
            entry = self._next()
            if entry is None:
                break
            self._admit(entry.cls)
            admitted.append(entry)
        return admitted

    def _next(self) -> Entry | None:
        lowest = self.queues[self.config.lowest.name]
        if lowest and self._since_lowest >= self.config.starvation_guard_every - 1:
            return lowest.popleft()
        for queue in self.queues.values():  # most urgent first
            if queue:
                return queue.popleft()
        return None

    def _admit(self, cls: PriorityClass) -> None:
        self.in_flight += 1
        self.admitted_total[cls.name] += 1
        if cls.name == self.config.lowest.name:
            self._since_lowest = 0
        elif self.queues[self.config.lowest.name]:
            self._since_lowest += 1


class RequestShed(Exception):
    def __init__(self, shed: Shed) -> None:
        super().__init__(shed.message)
        self.shed = shed


class PriorityGate:
    """`PriorityQueues` for asyncio handlers: `await acquire(cls)` returns once the request holds
    a slot (raises RequestShed for a 429); `release(held_seconds)` after its answer."""

    def __init__(self, config: PriorityConfig) -> None:
        self.config = config
        self.state = PriorityQueues(config)
        self.shed_counts: dict[tuple[str, str], int] = {}

    def _wake(self, entries: list[Entry]) -> None:
        for entry in entries:
            future: asyncio.Future[None] = entry.token
            if future.done():  # its waiter was cancelled between the two: give the slot back
                self._wake(self.state.release())
            else:
                future.set_result(None)

    def _count(self, cls: PriorityClass, shed: Shed) -> None:
        key = (cls.name, shed.reason)
        self.shed_counts[key] = self.shed_counts.get(key, 0) + 1

    async def acquire(self, cls: PriorityClass) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        offer = self.state.offer(cls, loop.time(), future)
        for victim, shed in offer.evicted:
            self._count(victim.cls, shed)
            if not victim.token.done():  # else its client left already
                victim.token.set_exception(RequestShed(shed))
        if offer.admitted:
            return
        if offer.shed is not None:
            self._count(cls, offer.shed)
            raise RequestShed(offer.shed)
        assert offer.entry is not None
        try:
            await future
        except asyncio.CancelledError:
            if not self.state.cancel(offer.entry) and future.done() and not future.cancelled() \
                    and future.exception() is None:
                self.release()  # admitted just as the client left
            raise

    def release(self, held_seconds: float | None = None) -> None:
        self._wake(self.state.release(held_seconds))

    def set_capacity(self, capacity: int) -> None:
        self._wake(self.state.set_capacity(capacity))
