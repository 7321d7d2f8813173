"""BlockManager: reference counts, chained-hash prefix cache, LRU eviction, KV reservations."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pdserve.runtime.engine.block_hashes import ROOT_HASH, compute_block_hashes, hash_block
from pdserve.runtime.engine.block_manager import BlockManager
from pdserve.runtime.engine.sequence import Sequence


def check_invariants(bm: BlockManager, holders: list[Sequence]) -> None:
    bm.check_consistency(seq.block_table for seq in holders)
    assert 0.0 <= bm.usage <= 1.0


def compute(bm: BlockManager, seq: Sequence, num_tokens: int | None = None) -> None:
    """What one engine step does for `seq`: grow, compute, commit."""
    num_new = seq.num_tokens - seq.num_computed_tokens if num_tokens is None else num_tokens
    assert bm.ensure_slots(seq, num_new)
    seq.num_computed_tokens += num_new
    bm.commit_computed(seq)


def run_prompt(bm: BlockManager, request_id: str, tokens: list[int]) -> Sequence:
    seq = Sequence(request_id, tokens)
    assert bm.can_allocate(seq)
    bm.allocate(seq)
    compute(bm, seq)
    return seq


def test_hashes_are_chained_full_block_only_and_stable_across_processes() -> None:
    tokens = list(range(10))
    hashes = compute_block_hashes(tokens, 4)
    assert len(hashes) == 2  # the trailing 2 tokens are no full block
    assert hashes[0] == hash_block(ROOT_HASH, [0, 1, 2, 3])
    assert hashes[1] == hash_block(hashes[0], [4, 5, 6, 7])
    # Same second block after a different first block: a different chain.
    assert compute_block_hashes([9, 1, 2, 3, 4, 5, 6, 7], 4)[1] != hashes[1]
    code = (
        "from pdserve.runtime.engine.block_hashes import compute_block_hashes as c; "
        "print(c(list(range(10)), 4))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert other.strip() == str(hashes)


def test_allocate_grow_and_free_count_blocks() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = Sequence("a", list(range(10)))
    bm.allocate(seq)
    assert seq.block_table == [] and seq.num_computed_tokens == 0
    assert bm.ensure_slots(seq, 10)
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 5
    assert bm.usage == pytest.approx(3 / 8)
    seq.num_computed_tokens = 10
    bm.commit_computed(seq)
    assert len(seq.block_hashes) == 2 and bm.num_cached_blocks == 2
    assert bm.ensure_slots(seq, 2)  # 12 tokens still fit 3 blocks
    assert len(seq.block_table) == 3
    assert not bm.ensure_slots(seq, 100)  # 27 blocks: refused without side effects
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 5
    check_invariants(bm, [seq])
    bm.free(seq)
    assert seq.block_table == [] and seq.num_computed_tokens == 0
    assert bm.num_free_blocks == 8 and bm.usage == 0.0
    check_invariants(bm, [])


def test_prefix_shared_across_running_requests() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    first = run_prompt(bm, "a", list(range(10)))
    second = Sequence("b", [*range(8), 42, 43, 44])
    bm.allocate(second)
    assert second.block_table == first.block_table[:2]
    assert second.num_computed_tokens == second.num_cached_tokens == 8
    assert bm.blocks[first.block_table[0]].ref_count == 2
    compute(bm, second)
    assert second.block_table[2] != first.block_table[2]
    assert bm.prefix_queries == 10 + 11 and bm.prefix_hits == 8
    check_invariants(bm, [first, second])


def test_prefix_kept_after_request_finishes() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    first = run_prompt(bm, "a", list(range(13)))
    blocks = list(first.block_table)
    bm.free(first)
    assert bm.num_free_blocks == 16 and bm.num_cached_blocks == 3
    turn2 = Sequence("b", [*range(13), 7, 7, 7])
    bm.allocate(turn2)
    assert turn2.block_table == blocks[:3] and turn2.num_computed_tokens == 12
    assert bm.num_free_blocks == 13  # revived blocks are no longer free
    check_invariants(bm, [turn2])


def test_whole_prompt_never_served_from_cache() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    bm.free(run_prompt(bm, "a", list(range(8))))
    again = Sequence("b", list(range(8)))
    assert bm.num_matched_tokens(again) == 4  # the last block holds the token to recompute
    bm.allocate(again)
    assert again.num_computed_tokens == 4 and len(again.block_table) == 1
    compute(bm, again)
    # The recomputed last block duplicates a cached one: it is not registered twice.
    assert bm.num_cached_blocks == 2
    bm.free(again)
    check_invariants(bm, [])


def test_lru_evicts_least_recently_freed_tail_first() -> None:
    bm = BlockManager(num_blocks=6, block_size=2)
    a = run_prompt(bm, "a", [1, 2, 3, 4])
    b = run_prompt(bm, "b", [5, 6, 7, 8])
    a_blocks, b_blocks = list(a.block_table), list(b.block_table)
    bm.free(a)
    bm.free(b)
    # Two never-cached blocks are used before any cached one is evicted.
    c = Sequence("c", [9] * 8)
    bm.allocate(c)
    assert bm.ensure_slots(c, 4)
    assert len(c.block_table) == 2 and bm.num_cached_blocks == 4
    # Then a's blocks go first, its tail block before its head block.
    assert bm.ensure_slots(c, 6)
    assert c.block_table[2] == a_blocks[1]
    assert bm.match_prefix(bm.block_hashes([1, 2, 3, 4])) == [a_blocks[0]]
    assert bm.ensure_slots(c, 8)
    assert bm.match_prefix(bm.block_hashes([1, 2])) == []
    assert bm.match_prefix(bm.block_hashes([5, 6, 7, 8])) == b_blocks
    check_invariants(bm, [c])


def test_reuse_refreshes_lru_position() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    a = run_prompt(bm, "a", [1, 2, 3])
    b = run_prompt(bm, "b", [5, 6, 7])
    bm.free(a)
    bm.free(b)
    a_again = Sequence("a2", [1, 2, 3])
    bm.allocate(a_again)  # a's block is used again: now b's is the oldest
    bm.free(a_again)
    filler = Sequence("f", [0] * 5)
    bm.allocate(filler)
    assert bm.ensure_slots(filler, 6)  # 2 never-cached blocks + 1 eviction
    assert bm.match_prefix(bm.block_hashes([1, 2])) != []
    assert bm.match_prefix(bm.block_hashes([5, 6])) == []
    check_invariants(bm, [filler])


def test_can_allocate_counts_revived_cached_blocks() -> None:
    bm = BlockManager(num_blocks=3, block_size=2)
    bm.free(run_prompt(bm, "a", [1, 2, 3, 4, 5]))
    assert bm.num_free_blocks == 3
    seq = Sequence("b", [1, 2, 3, 4, 5, 6, 7])
    # matched 2 blocks (ref 0, counted free) + 2 new blocks needed = 4 > 3.
    assert not bm.can_allocate(seq)
    assert bm.can_allocate(seq, 2)
    bm.allocate(seq)
    assert bm.ensure_slots(seq, 2)
    assert not bm.ensure_slots(seq, 3)
    check_invariants(bm, [seq])


def test_prefix_caching_disabled() -> None:
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    bm.free(run_prompt(bm, "a", [1, 2, 3, 4, 5]))
    assert bm.num_cached_blocks == 0
    seq = Sequence("b", [1, 2, 3, 4, 5])
    bm.allocate(seq)
    assert seq.num_computed_tokens == 0 and bm.prefix_hits == 0
    assert bm.match_prefix(bm.block_hashes([1, 2])) == []


def test_concurrent_identical_prompts_do_not_leak() -> None:
    bm = BlockManager(num_blocks=8, block_size=2)
    a, b = Sequence("a", [1, 2, 3, 4, 5]), Sequence("b", [1, 2, 3, 4, 5])
    bm.allocate(a)
    bm.allocate(b)  # nothing cached yet: both compute the same blocks
    compute(bm, a)
    compute(bm, b)
    assert bm.num_cached_blocks == 2
    check_invariants(bm, [a, b])
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 8
    check_invariants(bm, [])


def test_double_release_is_an_error() -> None:
    bm = BlockManager(num_blocks=2, block_size=2)
    seq = run_prompt(bm, "a", [1, 2, 3])
    table = list(seq.block_table)
    bm.free(seq)
    seq.block_table = table
    with pytest.raises(RuntimeError, match="released more often"):
        bm.free(seq)


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        BlockManager(num_blocks=0, block_size=16)
    with pytest.raises(ValueError, match="block_size"):
        BlockManager(num_blocks=4, block_size=0)


def test_reservation_shares_cached_prefix_and_lists_missing_blocks() -> None:
    prefill = BlockManager(num_blocks=16, block_size=4)
    decode = BlockManager(num_blocks=16, block_size=4)
    history = list(range(9))
    bm_seq = run_prompt(decode, "turn1", history)  # the decode worker saw turn 1
    decode.free(bm_seq)
    prompt = [*history, 50, 51, 52, 53, 54]
    on_prefill = run_prompt(prefill, "turn2", prompt)
    # The prefill worker and the decode worker agree on the hash chain.
    assert prefill.block_hashes(prompt)[:2] == decode.block_hashes(history)
    seq = Sequence("turn2", prompt, output_token_ids=[99])
    reservation = decode.reserve(seq)
    assert reservation is not None
    assert reservation.num_cached_blocks == 2
    assert len(reservation.missing_block_ids) == 2  # block 2 (full) and block 3 (partial)
    assert seq.num_cached_tokens == 8
    to_send = on_prefill.block_table[reservation.num_cached_blocks :]
    assert len(to_send) == len(reservation.missing_block_ids)
    done = decode.complete_reservation("turn2")
    assert done is seq and seq.num_computed_tokens == len(prompt)
    assert decode.num_cached_blocks == 3  # the transferred full block is now cached too
    assert decode.reservations == {}
    check_invariants(decode, [seq])


def test_cancelling_a_reservation_frees_its_blocks() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    early = Sequence("early", list(range(10)), output_token_ids=[1])
    late = Sequence("late", list(range(20, 26)), output_token_ids=[1])
    assert bm.reserve(early) is not None
    assert bm.reserve(late) is not None
    assert bm.num_free_blocks == 3
    assert bm.cancel_reservation("early") is early
    assert early.block_table == [] and bm.num_free_blocks == 6
    assert set(bm.reservations) == {"late"}
    assert bm.cancel_reservation("late") is late
    assert bm.cancel_reservation("late") is None
    assert bm.num_free_blocks == 8
    check_invariants(bm, [])


def test_reservation_refused_when_blocks_run_out() -> None:
    bm = BlockManager(num_blocks=2, block_size=4)
    seq = Sequence("big", list(range(9)), output_token_ids=[1])
    assert bm.reserve(seq) is None
    assert seq.block_table == [] and bm.num_free_blocks == 2
    with pytest.raises(RuntimeError, match="already holds"):
        small = Sequence("s", [1, 2], output_token_ids=[1])
        bm.reserve(small)
        bm.reserve(small)
