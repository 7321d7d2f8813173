"""Prefix-cache eviction by priority class: EvictionPool's rules, and the BlockManager using it."""

from __future__ import annotations

import random

import pytest

from pdserve.runtime.engine.block_manager import BlockManager
from pdserve.runtime.engine.eviction_pool import EvictionPool
from pdserve.runtime.engine.sequence import Sequence


def evict_all(pool: EvictionPool) -> list[int]:
    order = []
    while len(pool):
        order.append(pool.pop())
        pool.check_consistency()
    return order


def test_one_class_is_plain_lru() -> None:
    pool = EvictionPool(max_age=100)
    for block_id in [4, 2, 7, 1]:
        pool.add(block_id, 3)
    pool.remove(7)  # a prefix hit took it back
    pool.add(7, 3)
    assert evict_all(pool) == [4, 2, 1, 7]


def test_least_urgent_class_first_lru_within_it() -> None:
    pool = EvictionPool(max_age=100)
    for block_id, priority in [(1, 0), (2, 5), (3, 2), (4, 5), (5, 0), (6, 2)]:
        pool.add(block_id, priority)
    assert evict_all(pool) == [2, 4, 3, 6, 1, 5]


def test_age_guard_evicts_an_old_urgent_block_first() -> None:
    pool = EvictionPool(max_age=3)
    pool.add(1, 0)  # urgent, freed at allocation 0
    pool.add(2, 9)
    for _ in range(2):
        pool.count_allocation()
    assert pool.pop() == 2  # block 1 is 2 allocations old: its class still protects it
    pool.add(3, 9)
    pool.count_allocation()
    assert pool.pop() == 1  # 3 allocations old: evicted before the fresh background block
    assert pool.pop() == 3


def test_emptied_classes_do_not_pile_up_in_the_heap() -> None:
    pool = EvictionPool(max_age=100)
    for round_ in range(50):
        for priority in range(4):
            pool.add(round_ * 4 + priority, priority)
        for priority in range(4):
            pool.remove(round_ * 4 + priority)
    pool.check_consistency()
    assert len(pool._class_heap) == 4
    pool.add(999, 1)
    assert pool.pop() == 999  # the emptied classes above it are skipped and dropped
    assert len(pool._class_heap) == 2


def test_bad_max_age_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_age"):
        EvictionPool(max_age=0)


def test_random_operations_match_the_rules() -> None:
    """Against a brute-force reading of the module docstring's two rules."""
    rng = random.Random(7)
    pool = EvictionPool(max_age=12)
    reference: dict[int, tuple[int, int, int]] = {}  # block -> (freed at, class, add order)
    next_id = 0
    for step in range(5000):
        action = rng.random()
        if action < 0.45:
            priority = rng.randrange(4)
            pool.add(next_id, priority)
            reference[next_id] = (pool.allocations, priority, step)
            next_id += 1
        elif action < 0.6 and reference:
            block_id = rng.choice(sorted(reference))
            pool.remove(block_id)
            del reference[block_id]
        elif action < 0.8:
            pool.count_allocation()
        elif reference:
            oldest = min(reference, key=lambda b: reference[b][2])
            if pool.allocations - reference[oldest][0] >= pool.max_age:
                expected = oldest
            else:
                expected = min(reference, key=lambda b: (-reference[b][1], reference[b][2]))
            assert pool.pop() == expected
            del reference[expected]
        assert len(pool) == len(reference)
    pool.check_consistency()


# ---- through the BlockManager -----------------------------------------------------------------


def run_and_free(bm: BlockManager, request_id: str, tokens: list[int], priority: int) -> Sequence:
    """Prefill a prompt completely, then finish it: its full blocks stay cached."""
    seq = Sequence(request_id, tokens, priority=priority)
    bm.allocate(seq)
    assert bm.ensure_slots(seq, seq.num_tokens - seq.num_computed_tokens)
    seq.num_computed_tokens = seq.num_tokens
    bm.commit_computed(seq)
    bm.free(seq)
    bm.check_consistency([])
    return seq


def cached_prefix_blocks(bm: BlockManager, tokens: list[int]) -> int:
    return len(bm.match_prefix(bm.block_hashes(tokens)))


URGENT = [1, 2, 3, 4, 5, 6, 7, 8]  # two full blocks of 4


def background(index: int) -> list[int]:
    return [100 + 8 * index + offset for offset in range(8)]


@pytest.mark.parametrize(("urgent_priority", "survives"), [(0, True), (5, False)])
def test_urgent_prefix_outlives_background_blocks(urgent_priority: int, survives: bool) -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    run_and_free(bm, "urgent", URGENT, urgent_priority)
    for index in range(4):  # 6 background blocks fill the cache, the last 2 must evict
        run_and_free(bm, f"bg{index}", background(index), 5)
    # Equal priorities: plain LRU takes the urgent blocks, freed first.
    assert cached_prefix_blocks(bm, URGENT) == (2 if survives else 0)
    assert cached_prefix_blocks(bm, background(0)) == (0 if survives else 2)
    assert bm.num_cached_blocks == 8


def test_unused_urgent_prefix_is_evicted_after_a_turnover() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    run_and_free(bm, "urgent", URGENT, 0)  # freed after 2 allocations
    for index in range(4):  # 8 allocations: younger than one turnover, it is kept
        run_and_free(bm, f"bg{index}", background(index), 5)
    assert cached_prefix_blocks(bm, URGENT) == 2
    run_and_free(bm, "bg4", background(4), 5)  # 8 allocations old: evicted before bg1
    assert cached_prefix_blocks(bm, URGENT) == 0
    assert cached_prefix_blocks(bm, background(1)) == 2


def test_reuse_restarts_the_age_of_an_urgent_prefix() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    run_and_free(bm, "urgent", URGENT, 0)
    for index in range(4):
        run_and_free(bm, f"bg{index}", background(index), 5)
    run_and_free(bm, "urgent-again", [*URGENT, 9], 0)  # a hit on both blocks
    for index in range(4, 7):
        run_and_free(bm, f"bg{index}", background(index), 5)
    assert cached_prefix_blocks(bm, URGENT) == 2


def test_a_shared_block_takes_its_most_urgent_holder_class() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    tokens = [*URGENT, 9]  # the last token is recomputed: both full blocks are shared
    low = Sequence("low", tokens, priority=5)
    bm.allocate(low)
    assert bm.ensure_slots(low, low.num_tokens)
    low.num_computed_tokens = low.num_tokens
    bm.commit_computed(low)
    urgent = Sequence("urgent", tokens, priority=0)
    bm.allocate(urgent)
    assert urgent.num_computed_tokens == 8
    shared = urgent.block_table[:2]
    bm.free(urgent)
    bm.free(low)  # the less urgent holder leaves last
    assert [bm.blocks[b].priority for b in shared] == [0, 0]
    bm.check_consistency([])
