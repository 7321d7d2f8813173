"""A prefill worker's choice among the router's KV targets (kv_targets.py), without processes:
the next target on a refusal for lack of blocks, waiting for room, and every other failure
ending the push at once."""

from __future__ import annotations

import pytest

from pdserve.runtime.disagg.kv_targets import KVTargets, parse_targets, push_to_first_with_room
from pdserve.runtime.disagg.kv_transfer import DecodeFullError, KVTransferError


class FakeDecodes:
    """Targets that refuse for lack of blocks a given number of times, then take the KV."""

    def __init__(self, refusals: dict[str, int], broken: frozenset[str] = frozenset()) -> None:
        self.refusals = refusals
        self.broken = broken
        self.offers: list[str] = []
        self.now = 0.0

    async def push(self, target: str) -> str:
        self.offers.append(target)
        if target in self.broken:
            raise KVTransferError(f"{target} is gone")
        if self.refusals.get(target, 0) > 0:
            self.refusals[target] -= 1
            raise DecodeFullError(f"{target} is full")
        return f"pushed to {target}"

    async def sleep(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> float:
        return self.now


def test_the_targets_list_comes_first_and_the_single_target_gets_no_wait():
    assert parse_targets({"x-pdserve-kv-targets": "d1:1, d2:2,d1:1",
                          "x-pdserve-kv-target": "d9:9"}) == KVTargets(("d1:1", "d2:2"), True)
    assert parse_targets({"x-pdserve-kv-target": "d9:9"}) == KVTargets(("d9:9",), False)
    assert parse_targets({}) is None


async def test_a_full_decode_worker_passes_the_kv_to_the_next_target():
    decodes = FakeDecodes({"d1": 5})
    taken = await push_to_first_with_room(decodes.push, KVTargets(("d1", "d2"), True), 10.0,
                                          decodes.sleep, decodes.clock)
    assert taken == ("d2", "pushed to d2")
    assert decodes.offers == ["d1", "d2"]


async def test_when_all_are_full_the_kv_waits_for_room():
    decodes = FakeDecodes({"d1": 3, "d2": 3})
    taken = await push_to_first_with_room(decodes.push, KVTargets(("d1", "d2"), True), 10.0,
                                          decodes.sleep, decodes.clock)
    assert taken == ("d1", "pushed to d1")
    assert decodes.offers == ["d1", "d2"] * 3 + ["d1"]
    assert 0 < decodes.now < 1.0


async def test_no_room_until_the_deadline_is_a_decode_full_error():
    decodes = FakeDecodes({"d1": 1000})
    with pytest.raises(DecodeFullError, match="no decode worker had free KV blocks"):
        await push_to_first_with_room(decodes.push, KVTargets(("d1",), True), 2.0,
                                      decodes.sleep, decodes.clock)
    assert decodes.now <= 2.0


async def test_the_single_legacy_target_is_tried_once():
    decodes = FakeDecodes({"d1": 1})
    with pytest.raises(DecodeFullError):
        await push_to_first_with_room(decodes.push, KVTargets(("d1",), False), 10.0,
                                      decodes.sleep, decodes.clock)
    assert decodes.offers == ["d1"]


async def test_other_failures_end_the_push_at_once():
    decodes = FakeDecodes({}, broken=frozenset({"d1"}))
    with pytest.raises(KVTransferError, match="d1 is gone"):
        await push_to_first_with_room(decodes.push, KVTargets(("d1", "d2"), True), 10.0,
                                      decodes.sleep, decodes.clock)
    assert decodes.offers == ["d1"]
