"""Where a prefill worker pushes a prompt's KV: the decode workers the router names, in order.

The router sends `x-pdserve-kv-targets: D1,D2,...` (the decode worker it chose first, then the
others of the same model, those with free KV blocks first). A target that refuses the KV for lack
of free blocks (DecodeFullError, refused at OFFER before anything moves) passes it to the next,
so a decode-side shortage never costs a second prefill. When every target refuses, the KV stays
pinned here and the round is tried again after a backoff until a deadline: decode frees blocks
as its requests finish, so the prompt waits for room instead of being prefilled again. Any other
failure ends the push at once (the router then retries on another prefill worker).

A request with only `x-pdserve-kv-target` (routers before the targets list, and the overload
benchmark's baseline router) gets one try on that one target, as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from pdserve.runtime.disagg.headers import KV_TARGET_HEADER, KV_TARGETS_HEADER
from pdserve.runtime.disagg.kv_transfer import DecodeFullError

FIRST_BACKOFF = 0.02
MAX_BACKOFF = 0.5
Result = TypeVar("Result")


@dataclass(frozen=True)
class KVTargets:
    addresses: tuple[str, ...]  # KV addresses (host:port) of decode workers, in order
    wait_for_room: bool  # when all refuse for lack of blocks, retry until the deadline


def parse_targets(headers: Mapping[str, str]) -> KVTargets | None:
    """The targets a request names, or None when it names none."""
    listed = [t.strip() for t in headers.get(KV_TARGETS_HEADER, "").split(",") if t.strip()]
    if listed:
        return KVTargets(tuple(dict.fromkeys(listed)), wait_for_room=True)
    single = headers.get(KV_TARGET_HEADER, "").strip()
    return KVTargets((single,), wait_for_room=False) if single else None


async def push_to_first_with_room(
    push: Callable[[str], Awaitable[Result]], targets: KVTargets, deadline: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[str, Result]:
    """(the target that took the KV, its push's result). DecodeFullError when every target
    refused for lack of blocks until `deadline` (clock's time); other errors pass through."""
    backoff = FIRST_BACKOFF
    refusals = 0
    while True:
        for target in targets.addresses:
            try:
                return target, await push(target)
            except DecodeFullError:
                refusals += 1
        if not targets.wait_for_room or clock() + backoff > deadline:
            raise DecodeFullError(f"no decode worker had free KV blocks for the prompt "
                                  f"({refusals} refusals from {', '.join(targets.addresses)})")
        await sleep(backoff)
        backoff = min(2 * backoff, MAX_BACKOFF)
