"""Priority classes at the router: one bounded queue per class, strict priority, a starvation
guard for the lowest class, and load shedding (HTTP 429 + Retry-After). Configured by
`pdserve router --priority-classes JSON` (the operator renders spec.router.priorityClasses into
it); without it the router admits every request at once, as before. API keys that pick a class
come from `--api-keys-dir DIR`, one subdirectory per class holding one key per file: the
operator mounts each class's `apiKeysSecretRef` Secret there, so keys never appear in the
LLMService, the command line or the operator's reach (`ApiKeyTable`, `read_api_keys`, and
`watch_api_keys`, which follows the kubelet's updates of the mounted Secrets).

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
import hashlib
import json
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CLASS_HEADER = "x-pdserve-priority-class"
CLASS_BODY_FIELD = "priority_class"
DEFAULT_MAX_QUEUE = 256
DEFAULT_STARVATION_GUARD_EVERY = 10
# The mean slot time before any request completed (seconds): a guess that only the first
# expected waits use.
INITIAL_SERVICE_SECONDS = 1.0
SERVICE_EWMA = 0.1
# Seconds between two reads of --api-keys-dir: the kubelet itself refreshes a mounted Secret
# within about a minute of its change, so polling adds little to that delay.
API_KEYS_POLL_SECONDS = 5.0


WORKER_QUEUE_SHARE = 0.25  # of max_num_seqs, waiting at the worker beyond its batch


def worker_slots(max_num_seqs: int) -> int:
    """A worker's slots from the batch size it reports: the batch and a short queue."""
    return max_num_seqs + math.ceil(WORKER_QUEUE_SHARE * max_num_seqs)


class PriorityConfigError(ValueError):
    """A --priority-classes value that does not hold together."""


class UnknownClass(ValueError):
    """A request named a class that is not configured (HTTP 400)."""


@dataclass(frozen=True)
class PriorityClass:
    name: str
    priority: int  # passed to the workers; smaller is more urgent
    max_queue: int = DEFAULT_MAX_QUEUE
    ttft_target_seconds: float | None = None


class ApiKeyTable:
    """API keys -> class names, held as SHA-256 digests (a memory dump or a log line shows no
    key). Replaced whole when the key files change: the handlers read it in the same event
    loop, so a request sees the old table or the new one, never half of each."""

    def __init__(self, digests: dict[str, str] | None = None) -> None:
        self.digests = dict(digests or {})

    @classmethod
    def of(cls, keys: dict[str, str]) -> ApiKeyTable:
        """From plain keys -> class names."""
        return cls({key_digest(k): v for k, v in keys.items()})

    def class_name(self, key: str) -> str | None:
        return self.digests.get(key_digest(key)) if self.digests else None

    def replace(self, digests: dict[str, str]) -> None:
        self.digests = dict(digests)

    def counts(self) -> dict[str, int]:
        """Keys per class (what the log may say about them)."""
        out: dict[str, int] = {}
        for name in self.digests.values():
            out[name] = out.get(name, 0) + 1
        return out


@dataclass(frozen=True)
class PriorityConfig:
    """The classes, most urgent first, and how a request picks one."""

    classes: tuple[PriorityClass, ...]
    default_class: str
    api_keys: ApiKeyTable = field(default_factory=ApiKeyTable, compare=False)
    starvation_guard_every: int = DEFAULT_STARVATION_GUARD_EVERY
    max_in_flight_per_worker: int | None = None

    @property
    def lowest(self) -> PriorityClass:
        return self.classes[-1]

    def by_name(self, name: str) -> PriorityClass:
        for cls in self.classes:
            if cls.name == name:
                return cls
        known = ", ".join(c.name for c in self.classes)
        raise UnknownClass(f"unknown priority class {name!r} (configured: {known})")

    def class_of(self, headers: Any, body: dict[str, Any]) -> PriorityClass:
        """The request's class: its API key's mapped class (a client cannot raise its key's
        class), else the `x-pdserve-priority-class` header, else the body's `priority_class`,
        else the default class."""
        auth = str(headers.get("Authorization", ""))
        if auth[:7].lower() == "bearer ":
            mapped = self.api_keys.class_name(auth[7:].strip())
            if mapped is not None:
                return self.by_name(mapped)
        name = headers.get(CLASS_HEADER)
        if name is None:
            name = body.get(CLASS_BODY_FIELD)
        if name is None:
            return self.by_name(self.default_class)
        if not isinstance(name, str):
            raise UnknownClass(f"{CLASS_BODY_FIELD} must be a string, got {name!r}")
        return self.by_name(name.strip())

    @classmethod
    def from_json(cls, text: str) -> PriorityConfig:
        """`{"classes": [{"name", "priority", "maxQueue", "ttftTargetSeconds"}, ...],
        "defaultClass", "starvationGuardEvery", "maxInFlightPerWorker"}`, as the operator
        renders spec.router (API keys come from files: `read_api_keys`)."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PriorityConfigError(f"priority classes are not valid JSON: {exc}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("classes"), list):
            raise PriorityConfigError("priority classes must be an object with a 'classes' list")
        try:
            classes = tuple(PriorityClass(
                name=str(c["name"]), priority=int(c["priority"]),
                max_queue=int(c.get("maxQueue", DEFAULT_MAX_QUEUE)),
                ttft_target_seconds=(None if c.get("ttftTargetSeconds") is None
                                     else float(c["ttftTargetSeconds"])))
                for c in raw["classes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PriorityConfigError(f"bad priority class: {exc}") from None
        every = raw.get("starvationGuardEvery", DEFAULT_STARVATION_GUARD_EVERY)
        per_worker = raw.get("maxInFlightPerWorker")
        unknown = sorted(set(raw) - {"classes", "defaultClass", "starvationGuardEvery",
                                     "maxInFlightPerWorker"})
        if unknown:  # e.g. the apiKeys of earlier versions: keys come from --api-keys-dir
            raise PriorityConfigError(f"priority classes: unknown fields {unknown}")
        return build_config(list(classes), raw.get("defaultClass"), int(every),
                            None if per_worker is None else int(per_worker))


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def build_config(classes: list[PriorityClass], default_class: str | None = None,
                 starvation_guard_every: int = DEFAULT_STARVATION_GUARD_EVERY,
                 max_in_flight_per_worker: int | None = None) -> PriorityConfig:
    """Checks and orders the classes (most urgent first)."""
    if not classes:
        raise PriorityConfigError("at least one priority class is needed")
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise PriorityConfigError(f"priority class names must be unique: {names}")
    priorities = [c.priority for c in classes]
    if len(set(priorities)) != len(priorities):
        raise PriorityConfigError(f"priority class priorities must be unique: {priorities}")
    for c in classes:
        if c.max_queue < 0:
            raise PriorityConfigError(f"class {c.name!r}: maxQueue must be >= 0")
        if c.ttft_target_seconds is not None and c.ttft_target_seconds <= 0:
            raise PriorityConfigError(f"class {c.name!r}: ttftTargetSeconds must be > 0")
    ordered = tuple(sorted(classes, key=lambda c: c.priority))
    default = default_class or ordered[-1].name
    if default not in names:
        raise PriorityConfigError(f"default priority class {default!r} is not one of {names}")
    if starvation_guard_every < 2:
        raise PriorityConfigError("starvationGuardEvery must be >= 2")
    if max_in_flight_per_worker is not None and max_in_flight_per_worker < 1:
        raise PriorityConfigError("maxInFlightPerWorker must be >= 1")
    return PriorityConfig(ordered, default, ApiKeyTable(), starvation_guard_every,
                          max_in_flight_per_worker)


def read_api_keys(directory: Path, config: PriorityConfig) -> dict[str, str]:
    """SHA-256 digests of the keys under `directory` -> class names: `directory/<class>/<any
    name>` holds one key (surrounding whitespace dropped: `kubectl create secret
    --from-file` keeps a trailing newline). Names starting with `..` are the kubelet's own
    (the atomic-update links of a mounted Secret) and skipped. Raises PriorityConfigError for
    a subdirectory that is not a configured class, an empty key, or a key in two classes."""
    if not directory.is_dir():
        raise PriorityConfigError(f"API key directory {str(directory)!r} does not exist")
    names = [c.name for c in config.classes]
    digests: dict[str, str] = {}
    for class_dir in sorted(directory.iterdir()):
        if class_dir.name.startswith(".."):
            continue
        if class_dir.name not in names or not class_dir.is_dir():
            raise PriorityConfigError(
                f"API keys: {str(class_dir)!r} is not the directory of a configured priority "
                f"class (one subdirectory per class: {', '.join(names)})")
        for key_file in sorted(class_dir.iterdir()):
            if key_file.name.startswith("..") or key_file.is_dir():
                continue
            key = key_file.read_text(encoding="utf-8").strip()
            if not key:
                raise PriorityConfigError(f"API keys: {str(key_file)!r} is empty")
            digest = key_digest(key)
            other = digests.setdefault(digest, class_dir.name)
            if other != class_dir.name:
                raise PriorityConfigError(
                    f"API keys: the key in {str(key_file)!r} is also a key of class {other!r} "
                    "(a key belongs to one class)")
    return digests


async def watch_api_keys(directory: Path, config: PriorityConfig,
                         interval: float = API_KEYS_POLL_SECONDS) -> None:
    """Re-reads `directory` every `interval` seconds and swaps `config.api_keys` when the keys
    changed (a mounted Secret updated by the kubelet). A read that fails keeps the keys in
    use and logs why: a serving router must not lose every key to one bad file."""
    while True:
        await asyncio.sleep(interval)
        try:
            digests = await asyncio.to_thread(read_api_keys, directory, config)
        except (PriorityConfigError, OSError, UnicodeDecodeError) as exc:
            log.error("API keys not reloaded, the previous ones stay in use: %s", exc)
            continue
        if digests != config.api_keys.digests:
            config.api_keys.replace(digests)
            log.info("API keys reloaded from %s: keys per class %s", directory,
                     config.api_keys.counts())


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
