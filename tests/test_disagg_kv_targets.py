"""Where a prefill worker's KV goes without processes: the next of the router's targets on a
refusal for lack of blocks (kv_targets.py), and a decode worker queueing OFFERs that ask to wait,
first come, first served (decode_transfers.py, against a fake engine)."""

from __future__ import annotations

import asyncio
import types

import pytest

from pdserve.runtime.disagg.decode_transfers import DecodeTransfers
from pdserve.runtime.disagg.kv_targets import KVTargets, parse_targets, push_to_first_with_room
from pdserve.runtime.disagg.kv_transfer import DecodeFullError, KVTransferError, Offer


class FakeDecodes:
    """Targets that refuse for lack of blocks unless asked to wait (then they take the KV)."""

    def __init__(self, full: set[str], broken: frozenset[str] = frozenset(),
                 full_even_waiting: bool = False) -> None:
        self.full, self.broken, self.full_even_waiting = full, broken, full_even_waiting
        self.offers: list[tuple[str, bool]] = []

    async def push(self, target: str, wait: bool) -> str:
        self.offers.append((target, wait))
        if target in self.broken:
            raise KVTransferError(f"{target} is gone")
        if target in self.full and (not wait or self.full_even_waiting):
            raise DecodeFullError(f"{target} is full")
        return f"pushed to {target}"


def test_the_targets_list_comes_first_and_the_single_target_gets_no_wait():
    assert parse_targets({"x-pdserve-kv-targets": "d1:1, d2:2,d1:1",
                          "x-pdserve-kv-target": "d9:9"}) == KVTargets(("d1:1", "d2:2"), True)
    assert parse_targets({"x-pdserve-kv-target": "d9:9"}) == KVTargets(("d9:9",), False)
    assert parse_targets({}) is None


async def test_a_full_decode_worker_passes_the_kv_to_the_next_target():
    decodes = FakeDecodes({"d1"})
    taken = await push_to_first_with_room(decodes.push, KVTargets(("d1", "d2"), True))
    assert taken == ("d2", "pushed to d2")
    assert decodes.offers == [("d1", False), ("d2", False)]


async def test_when_all_are_full_the_kv_queues_at_the_first():
    decodes = FakeDecodes({"d1", "d2"})
    taken = await push_to_first_with_room(decodes.push, KVTargets(("d1", "d2"), True))
    assert taken == ("d1", "pushed to d1")
    assert decodes.offers == [("d1", False), ("d2", False), ("d1", True)]


async def test_no_room_even_waiting_is_a_decode_full_error():
    decodes = FakeDecodes({"d1"}, full_even_waiting=True)
    with pytest.raises(DecodeFullError):
        await push_to_first_with_room(decodes.push, KVTargets(("d1",), True))


async def test_the_single_legacy_target_is_tried_once_without_waiting():
    decodes = FakeDecodes({"d1"})
    with pytest.raises(DecodeFullError):
        await push_to_first_with_room(decodes.push, KVTargets(("d1",), False))
    assert decodes.offers == [("d1", False)]


async def test_other_failures_end_the_push_at_once():
    decodes = FakeDecodes(set(), broken=frozenset({"d1"}))
    with pytest.raises(KVTransferError, match="d1 is gone"):
        await push_to_first_with_room(decodes.push, KVTargets(("d1", "d2"), True))
    assert decodes.offers == [("d1", False)]


class FakeEngine:
    """admit_with_kv takes one block per prompt token while `free` lasts."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.engine = types.SimpleNamespace(grammars=None)

    def admit_with_kv(self, request_id, prompt, first, params, **_):
        if len(prompt) > self.free:
            return None
        self.free -= len(prompt)
        return types.SimpleNamespace(num_cached_blocks=0, missing_block_ids=[0] * len(prompt))

    async def call(self, fn):
        return fn(self)

    def abort(self, request_id):
        return True


def offer(transfer_id: str, size: int, wait: bool) -> Offer:
    return Offer(transfer_id, [1] * size, 2, {"max_tokens": 4}, wait_for_room=wait)


async def test_offers_that_wait_are_served_in_order_and_others_do_not_overtake_them():
    engine = FakeEngine(free=3)
    transfers = DecodeTransfers(engine, None, timeout=5.0, loop=asyncio.get_running_loop())
    first = asyncio.ensure_future(transfers._reserve(offer("first", 4, True)))
    await asyncio.sleep(0.02)
    second = asyncio.ensure_future(transfers._reserve(offer("second", 1, True)))
    await asyncio.sleep(0.02)
    with pytest.raises(DecodeFullError, match="now"):  # would fit, but others wait before it
        await transfers._reserve(offer("impatient", 1, False))
    assert not first.done() and not second.done()  # "second" fits, yet waits its turn
    engine.free += 2
    assert (await first)[1] == [0] * 4
    assert (await second)[1] == [0]
    assert set(transfers.transfers) == {"first", "second"}
    for transfer in transfers.transfers.values():
        transfer.expiry.cancel()


async def test_a_waiting_offer_is_refused_when_no_room_comes_in_time():
    transfers = DecodeTransfers(FakeEngine(free=0), None, timeout=0.1,
                                loop=asyncio.get_running_loop())
    with pytest.raises(DecodeFullError, match="within"):
        await transfers._reserve(offer("late", 1, True))
    assert not transfers._waiting
