"""Pure routing decisions of the router: which prefill and which decode worker serve a request.

No I/O here. The router has no tokenizer, so prompts are hashed in fixed-size character chunks,
each hash chained to its prefix like the workers' KV block hashes. A `PrefixIndex` remembers which
worker last served each chunk hash (LRU-bounded); the longest run of leading chunks a worker holds
is its affinity for the request.

- prefill (prefix-affinity): score = matched prefix fraction - LOAD_WEIGHT x queue length, so a
  conversation keeps returning to the worker that holds its prefix until that worker's queue grows
  by more than ~1/LOAD_WEIGHT requests compared with an idle one.
- decode: free KV capacity and running requests, plus a small affinity bonus (agentic sessions that
  return to the same decode worker need only their new blocks transferred).
- least-loaded ignores affinity; round-robin cycles through the healthy workers.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass

CHARS_PER_BLOCK = 64
CHARS_PER_TOKEN = 4  # rough estimate for the short-prompt threshold: the router has no tokenizer
MAX_HASHED_BLOCKS = 256
LOAD_WEIGHT = 0.25
DECODE_AFFINITY_WEIGHT = 0.5
POLICIES = ("prefix-affinity", "least-loaded", "round-robin")


@dataclass
class WorkerLoad:
    """What the router knows about a worker's load: scraped figures plus its own in-flight count."""

    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    max_num_seqs: int = 0
    inflight: int = 0
    identity: str | None = None  # the model identity's digest (from /load)
    free_blocks: int | None = None  # free KV blocks (from /load; None: not reported)
    block_size: int = 0  # tokens a KV block holds (from /load; 0: not reported)
    claimed_blocks: int = 0  # the router's own: blocks of prompts on their way (admission.py)

    @property
    def queue(self) -> int:
        # Requests sent since the last scrape are not in the scraped figures yet.
        return self.waiting + self.inflight


def same_model(loads: dict[str, WorkerLoad], identity: str | None) -> dict[str, WorkerLoad]:
    """The workers whose KV another worker of model `identity` can use: equal digests only, so
    during a rolling update old prefill pairs with old decode and new with new."""
    if identity is None:
        return {}
    return {address: load for address, load in loads.items() if load.identity == identity}


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def cached_tokens(matched_blocks: int) -> int:
    """Tokens of a prompt's leading chunks that a worker holds (the same rough estimate)."""
    return matched_blocks * CHARS_PER_BLOCK // CHARS_PER_TOKEN


def text_block_hashes(text: str, chars_per_block: int = CHARS_PER_BLOCK) -> list[int]:
    """Chained hashes of the text's full chunks (stable across processes, unlike hash())."""
    hashes: list[int] = []
    parent = b""
    full = min(len(text) // chars_per_block, MAX_HASHED_BLOCKS)
    for i in range(full):
        chunk = text[i * chars_per_block : (i + 1) * chars_per_block].encode()
        digest = hashlib.blake2b(parent + chunk, digest_size=8).digest()
        hashes.append(int.from_bytes(digest, "big"))
        parent = digest
    return hashes


class PrefixIndex:
    """Which workers served which chained prefix hashes, bounded LRU."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._owners: OrderedDict[int, set[str]] = OrderedDict()

    def matched_blocks(self, hashes: list[int], workers: list[str]) -> dict[str, int]:
        """Number of leading hashes each worker holds."""
        matched = dict.fromkeys(workers, 0)
        alive = set(workers)
        for h in hashes:
            owners = self._owners.get(h)
            if not owners:
                break
            alive &= owners
            if not alive:
                break
            for worker in alive:
                matched[worker] += 1
        return matched

    def record(self, hashes: list[int], worker: str) -> None:
        for h in hashes:
            owners = self._owners.get(h)
            if owners is None:
                owners = self._owners[h] = set()
            owners.add(worker)
            self._owners.move_to_end(h)
        while len(self._owners) > self.capacity:
            self._owners.popitem(last=False)

    def forget(self, worker: str) -> None:
        for owners in self._owners.values():
            owners.discard(worker)

    def __len__(self) -> int:
        return len(self._owners)


def prefill_score(load: WorkerLoad, matched: int, num_blocks: int) -> float:
    affinity = matched / num_blocks if num_blocks else 0.0
    return affinity - LOAD_WEIGHT * load.queue


def decode_score(load: WorkerLoad, matched: int, num_blocks: int) -> float:
    free_kv = 1.0 - min(max(load.kv_usage, 0.0), 1.0)
    busy = (load.running + load.queue) / load.max_num_seqs if load.max_num_seqs else 0.0
    affinity = matched / num_blocks if num_blocks else 0.0
    return free_kv - busy + DECODE_AFFINITY_WEIGHT * affinity


class RoutingPolicy:
    """Chooses workers of one tier; keeps the affinity index and the round-robin cursor."""

    def __init__(self, policy: str, tier: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown routing policy {policy!r}; expected one of {POLICIES}")
        if tier not in ("prefill", "decode"):
            raise ValueError(f"unknown tier {tier!r}")
        self.policy = policy
        self.tier = tier
        self.index = PrefixIndex()
        self._cursor = 0

    def choose(self, loads: dict[str, WorkerLoad], hashes: list[int],
               exclude: frozenset[str] = frozenset()) -> str | None:
        """The best worker among `loads` (healthy ones) not in `exclude`, or None."""
        workers = sorted(w for w in loads if w not in exclude)
        if not workers:
            return None
        if self.policy == "round-robin":
            self._cursor += 1
            return workers[self._cursor % len(workers)]
        use_affinity = self.policy == "prefix-affinity"
        matched = (self.index.matched_blocks(hashes, workers) if use_affinity
                   else dict.fromkeys(workers, 0))
        score = prefill_score if self.tier == "prefill" else decode_score
        # Ties go to the shorter queue, then to the name, so the choice is deterministic.
        return max(workers, key=lambda w: (score(loads[w], matched[w], len(hashes)),
                                           -loads[w].queue, _reverse_name(w)))

    def matched_blocks(self, hashes: list[int], worker: str) -> int:
        """Leading chunks of the prompt the worker holds (0 without prefix affinity)."""
        if self.policy != "prefix-affinity":
            return 0
        return self.index.matched_blocks(hashes, [worker])[worker]

    def record(self, hashes: list[int], worker: str) -> None:
        if self.policy == "prefix-affinity":
            self.index.record(hashes, worker)


def _reverse_name(name: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in name)
