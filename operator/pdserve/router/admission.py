"""Decode admission before prefill: which decode workers have KV room for a prompt, and where a
prefill worker should push its KV. Pure (no I/O).

Each decode worker's `GET /load` reports its free KV blocks and block size. The router adds its
own claims: the blocks of prompts it has sent toward a worker and whose decode request that
worker has not started answering yet (its next /load counts them itself). A worker has room for
a prompt when free minus claimed blocks hold the prompt's estimated tokens. The router picks its
decode worker among those with room; when none has any, the one with the most room (claims
include prompts queued there for blocks, so the shortest backlog), where the KV then queues for
blocks (kv_targets.py: overload queues, it does not fail). The prefill
worker gets the chosen worker first, then the others of the model by room, so a worker that
turns out full passes the KV on instead of the prompt being prefilled again.
"""

from __future__ import annotations

import math

from pdserve.router.routing import WorkerLoad


def blocks_for(tokens: int, block_size: int) -> int:
    return math.ceil(tokens / block_size) if block_size > 0 else 0


def room(load: WorkerLoad) -> int | None:
    """Free blocks not yet claimed, or None when the worker does not report its blocks."""
    if load.free_blocks is None or load.block_size <= 0:
        return None
    return load.free_blocks - load.claimed_blocks


def has_room(load: WorkerLoad, tokens: int) -> bool:
    free = room(load)
    return free is None or free >= blocks_for(tokens, load.block_size)


def with_room(loads: dict[str, WorkerLoad], tokens: int) -> dict[str, WorkerLoad]:
    """The workers with room for a prompt of `tokens` (those that report no blocks count)."""
    return {address: load for address, load in loads.items() if has_room(load, tokens)}


def candidates(loads: dict[str, WorkerLoad], tokens: int) -> dict[str, WorkerLoad]:
    """The workers to choose among: those with room, else those with the most room."""
    roomy = with_room(loads, tokens)
    if roomy or not loads:
        return roomy
    most = max(room(load) or 0 for load in loads.values())
    return {address: load for address, load in loads.items() if (room(load) or 0) == most}


def kv_targets(chosen: str, loads: dict[str, WorkerLoad], tokens: int) -> list[str]:
    """`chosen` first, then the other workers of `loads`: those with room first, most room
    first, then the rest by room (stale figures may be wrong both ways), ties by name."""

    def order(address: str) -> tuple[bool, int, str]:
        load = loads[address]
        free = room(load)
        return (not has_room(load, tokens), -(free if free is not None else 0), address)

    return [chosen, *sorted((a for a in loads if a != chosen), key=order)]


class Claim:
    """Blocks a prompt will take on a decode worker, counted until its decode request starts
    being answered there (release); moves when the KV went to another worker."""

    def __init__(self, load: WorkerLoad, tokens: int) -> None:
        self.tokens = tokens
        self._load: WorkerLoad | None = None
        self._blocks = 0
        self.move(load)

    def move(self, load: WorkerLoad) -> None:
        self.release()
        self._load = load
        self._blocks = blocks_for(self.tokens, load.block_size)
        load.claimed_blocks += self._blocks

    def release(self) -> None:
        if self._load is not None:
            self._load.claimed_blocks -= self._blocks
            self._load = None
