"""The prefix cache's evictable blocks and the order in which they are given up (pure Python).

A registered block whose ref count drops to 0 stays cached until a new block is needed. Under
pressure the blocks of urgent requests (smaller priority number) should outlive those of
background traffic, since a hit saves an urgent request its prefill. A block's class is the most
urgent priority among the requests that held it since it last left the pool. `pop` evicts:

1. Age guard: the least recently freed block, whatever its class, once it has waited in the pool
   for `max_age` block allocations or more (the block manager counts them with
   `count_allocation`; it passes the cache's size: the cache has turned over once). An urgent
   prefix nobody reuses therefore leaves after a bounded time and never pins the cache.
2. Otherwise the least urgent class first (largest priority number), least recently freed first
   within it.

With one class both rules pick the least recently freed block: plain LRU. The most urgent class
never loses a block sooner than LRU would take it. Ages count allocations, not seconds, so the
order depends on the workload only. Every operation is O(1), except that finding the least
urgent class costs O(log c) for c classes (a heap of class keys; emptied classes leave lazily).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterator


class EvictionPool:
    def __init__(self, max_age: int) -> None:
        if max_age < 1:
            raise ValueError(f"max_age must be at least 1, got {max_age}")
        self.max_age = max_age
        self.allocations = 0  # the clock ages are measured on
        # Every pooled block, least recently freed first: block id -> (freed at, class).
        self._by_age: OrderedDict[int, tuple[int, int]] = OrderedDict()
        # Class -> its blocks, LRU first; a class emptied stays until it reaches the heap's top.
        self._classes: dict[int, OrderedDict[int, None]] = {}
        self._class_heap: list[int] = []  # the keys of _classes negated: least urgent on top

    def __len__(self) -> int:
        return len(self._by_age)

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_age)

    def count_allocation(self) -> None:
        self.allocations += 1

    def add(self, block_id: int, priority: int) -> None:
        """A cached block became free; `priority` is its class."""
        self._by_age[block_id] = (self.allocations, priority)
        members = self._classes.get(priority)
        if members is None:
            members = self._classes[priority] = OrderedDict()
            heapq.heappush(self._class_heap, -priority)
        members[block_id] = None

    def remove(self, block_id: int) -> None:
        """Take a block out of the pool (reused by a prefix hit, or evicted)."""
        _, priority = self._by_age.pop(block_id)
        del self._classes[priority][block_id]

    def pop(self) -> int:
        """Evict: the block to reuse, by the rules above."""
        oldest = next(iter(self._by_age))
        if self.allocations - self._by_age[oldest][0] >= self.max_age:
            self.remove(oldest)
            return oldest
        victim, _ = self._classes[self._least_urgent_class()].popitem(last=False)
        del self._by_age[victim]
        return victim

    def _least_urgent_class(self) -> int:
        while not self._classes[-self._class_heap[0]]:
            del self._classes[-heapq.heappop(self._class_heap)]
        return -self._class_heap[0]

    def check_consistency(self) -> None:
        """Raise AssertionError if the class lists do not partition the pool."""
        members = [(b, p) for p, blocks in self._classes.items() for b in blocks]
        assert sorted(members) == sorted((b, p) for b, (_, p) in self._by_age.items()), (
            "the class lists do not match the pool"
        )
        assert sorted(self._classes) == sorted(-key for key in self._class_heap), (
            "the heap does not hold each class once"
        )
