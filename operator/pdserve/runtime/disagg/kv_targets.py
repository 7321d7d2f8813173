"""Where a prefill worker pushes a prompt's KV: the decode workers the router names, in order.

The router sends `x-pdserve-kv-targets: D1,D2,...` (the decode worker it chose first, then the
others of the same model, those with free KV blocks first). A target that refuses the KV for lack
of free blocks (DecodeFullError, refused at OFFER before anything moves) passes it to the next,
so a decode-side shortage never costs a second prefill. When every target refuses, the KV is
offered to the first once more, asking it to queue the OFFER until blocks free up (most urgent
first, then first come, first served, bounded by its --kv-timeout: decode_transfers.py): overload
waits, it is not prefilled again. Any other failure ends the push at once (the router then
retries on another prefill worker).

A request with only `x-pdserve-kv-target` (routers before the targets list, and the overload
benchmark's baseline router) gets one try on that one target, without waiting, as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from pdserve.runtime.disagg.headers import KV_TARGET_HEADER, KV_TARGETS_HEADER
from pdserve.runtime.disagg.kv_transfer import DecodeFullError

Result = TypeVar("Result")


@dataclass(frozen=True)
class KVTargets:
    addresses: tuple[str, ...]  # KV addresses (host:port) of decode workers, in order
    wait_for_room: bool  # when all refuse for lack of blocks, queue at the first


def parse_targets(headers: Mapping[str, str]) -> KVTargets | None:
    """The targets a request names, or None when it names none."""
    listed = [t.strip() for t in headers.get(KV_TARGETS_HEADER, "").split(",") if t.strip()]
    if listed:
        return KVTargets(tuple(dict.fromkeys(listed)), wait_for_room=True)
    single = headers.get(KV_TARGET_HEADER, "").strip()
    return KVTargets((single,), wait_for_room=False) if single else None


async def push_to_first_with_room(push: Callable[[str, bool], Awaitable[Result]],
                                  targets: KVTargets) -> tuple[str, Result]:
    """(the target that took the KV, its push's result); `push(target, wait_for_room)`.
    DecodeFullError when no target had room (in time); other errors pass through."""
    for target in targets.addresses:
        try:
            return target, await push(target, False)
        except DecodeFullError:
            if not targets.wait_for_room:
                raise
    first = targets.addresses[0]
    return first, await push(first, True)
