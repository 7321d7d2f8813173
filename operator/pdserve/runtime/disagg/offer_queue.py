"""OFFERs waiting at a decode worker for free KV blocks, in the order they get them.

An OFFER that asks to wait (`wait_for_room`) queues when its blocks are not free, and only the
head of the queue asks the engine for blocks, so a small prompt never starves a big one. The head
is the most urgent OFFER (smallest priority number), the earliest queued among equals: with equal
priorities, first come, first served. A more urgent OFFER goes ahead of those already waiting;
one of background traffic may then wait out its share of --kv-timeout and be refused (the router
lets the decode worker prefill it itself). The queue holds at most one OFFER per connection from
a prefill worker, so a sorted list is enough.
"""

from __future__ import annotations

import bisect
import itertools


class OfferQueue:
    def __init__(self) -> None:
        self._entries: list[tuple[int, int, str]] = []  # (priority, arrival, transfer id), sorted
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def join(self, transfer_id: str, priority: int) -> None:
        bisect.insort(self._entries, (priority, next(self._arrivals), transfer_id))

    def leave(self, transfer_id: str) -> None:
        self._entries = [entry for entry in self._entries if entry[2] != transfer_id]

    def head(self) -> str | None:
        """The OFFER whose turn it is to ask for blocks."""
        return self._entries[0][2] if self._entries else None

    def is_ahead_of(self, priority: int) -> bool:
        """Whether a waiting OFFER comes before one of `priority` arriving now."""
        return bool(self._entries) and self._entries[0][0] <= priority
