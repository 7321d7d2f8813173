"""Paged KV-cache bookkeeping: reference-counted blocks and the prefix cache (pure Python).

The KV tensor is split into `num_blocks` blocks of `block_size` token slots; a sequence's
`block_table` lists the blocks that hold its tokens in order. This module only decides which
block ids a sequence uses; the engine owns the tensor.

Prefix caching: once a block is FULL of computed tokens it is registered under a hash chained to
its prefix (`block_hashes.py`; the first block's parent is `ROOT_HASH`), so equal prefixes give
equal hash chains in every process. A later request whose prompt starts with the same tokens
reuses those blocks (ref count + 1) instead of recomputing them. A registered block whose ref
count drops to 0 stays cached and evictable, and is evicted only when no never-cached free block
is left: blocks of less urgent requests first, least recently freed first within a priority
class, any block unused for a whole turnover of the cache first of all (`eviction_pool.py`).

Lifecycle of a locally computed sequence (driven by the scheduler):
  `num_matched_tokens(seq)` / `can_allocate(seq, n)`   peek, no side effects
  `allocate(seq)`           first admission: share cached prefix blocks, set
                            seq.num_computed_tokens = seq.num_cached_tokens = matched tokens
                            (never the whole sequence: the engine must compute >= 1 token)
  `ensure_slots(seq, n)`    grow the table for the n tokens about to be computed (False: no room)
  `commit_computed(seq)`    after the step: register blocks that became full
  `free(seq)`               drop the references (preemption, finish, abort)

Disaggregation (decode side): `reserve(seq)` shares the locally cached full prompt
blocks and allocates the rest for KV arriving from a prefill worker; the returned
`KVReservation` says how many leading blocks are already here (only the others travel).
`complete_reservation(request_id)` marks the prompt computed; `cancel_reservation` frees one
whose transfer failed or never finished (the decode worker's transfer table decides when).
`block_hashes(token_ids)` and `match_prefix(hashes)` are the pure hash/lookup helpers.

KV compression (a sequence's slots hold fewer tokens than it computed, see Sequence):
`compact(seq, num_kept)` gives the kept KV its blocks, `drop_blocks(seq, indices)` evicts
whole blocks (streaming), and a compressed prompt's reservation takes no cached prefix. Blocks
of a sequence with dropped tokens are never registered: the prefix cache holds exact KV only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from collections.abc import Sequence as TokenSequence
from dataclasses import dataclass

from pdserve.runtime.engine.block_hashes import ROOT_HASH, compute_block_hashes, hash_block
from pdserve.runtime.engine.eviction_pool import EvictionPool
from pdserve.runtime.engine.kv_reservation import KVReservation
from pdserve.runtime.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None  # set while the block is registered in the prefix cache
    # The most urgent priority among its holders since it left the free pool: its eviction class.
    priority: int | None = None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(block_id) for block_id in range(num_blocks)]
        self._free_uncached: deque[int] = deque(range(num_blocks))
        # ref-count-0 registered blocks; an age guard of one turnover of the cache.
        self._evictable = EvictionPool(max_age=num_blocks)
        self._cached: dict[int, int] = {}  # block hash -> block id
        self._reservations: dict[str, KVReservation] = {}
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of which served from cached blocks

    # ---- capacity -------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take: never-cached free ones plus evictable cached ones."""
        return len(self._free_uncached) + len(self._evictable)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    @property
    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- pure prefix helpers -----------------------------------------------------------------

    def block_hashes(self, token_ids: TokenSequence[int]) -> list[int]:
        return compute_block_hashes(token_ids, self.block_size)

    def match_prefix(self, hashes: TokenSequence[int]) -> list[int]:
        """Ids of the cached blocks for the longest prefix of `hashes` (no side effects)."""
        if not self.enable_prefix_caching:
            return []
        matched = []
        for block_hash in hashes:
            block_id = self._cached.get(block_hash)
            if block_id is None:
                break
            matched.append(block_id)
        return matched

    def _hash_full_blocks(self, seq: Sequence, num_tokens: int) -> int:
        """Extend seq.block_hashes over the full blocks of the first `num_tokens` tokens.

        Each block is hashed once per sequence; returns the number of those full blocks.
        """
        num_full = num_tokens // self.block_size
        hashes = seq.block_hashes
        parent = hashes[-1] if hashes else ROOT_HASH
        for index in range(len(hashes), num_full):
            start = index * self.block_size
            parent = hash_block(parent, seq.token_slice(start, start + self.block_size))
            hashes.append(parent)
        return num_full

    def _matchable_hashes(self, seq: Sequence) -> list[int]:
        # The last token is always recomputed so that the engine gets its logits; matching only
        # blocks that end before it also means a step never writes into a shared block.
        if not self.enable_prefix_caching:
            return []
        limit = seq.num_tokens - 1
        if seq.snapkv_pending:  # SnapKV scores the window's queries: they must be computed
            limit = min(limit, seq.num_prompt_tokens - seq.kv_compression.window)
        return seq.block_hashes[: self._hash_full_blocks(seq, max(0, limit))]

    def num_matched_tokens(self, seq: Sequence) -> int:
        """Tokens `allocate(seq)` would take from the prefix cache."""
        return len(self.match_prefix(self._matchable_hashes(seq))) * self.block_size

    def _num_evictable(self, block_ids: list[int]) -> int:
        return sum(1 for block_id in block_ids if self.blocks[block_id].ref_count == 0)

    # ---- local sequences -----------------------------------------------------------------

    def can_allocate(self, seq: Sequence, num_new_tokens: int | None = None) -> bool:
        """Whether `allocate(seq)` then `ensure_slots(seq, num_new_tokens)` would succeed.

        `num_new_tokens=None` means every token of the sequence not served from the cache.
        """
        matched = self.match_prefix(self._matchable_hashes(seq))
        matched_tokens = len(matched) * self.block_size
        if num_new_tokens is None:
            num_new_tokens = seq.num_tokens - matched_tokens
        needed = self.num_blocks_for(matched_tokens + num_new_tokens) - len(matched)
        # Reviving a ref-0 cached block takes it out of the free pool too.
        return needed <= self.num_free_blocks - self._num_evictable(matched)

    def allocate(self, seq: Sequence) -> None:
        """First admission (or re-admission after preemption): share the cached prefix."""
        if seq.block_table:
            raise RuntimeError(f"request {seq.request_id} already holds KV blocks")
        hashes = self._matchable_hashes(seq)
        matched = self.match_prefix(hashes)
        for block_id in matched:
            self._acquire(block_id)
        seq.block_table = list(matched)
        seq.num_committed_blocks = len(matched)
        seq.num_computed_tokens = len(matched) * self.block_size
        if not seq.output_token_ids:  # a recompute after preemption is not a new prompt
            seq.num_cached_tokens = seq.num_computed_tokens
        self.prefix_queries += seq.num_tokens
        self.prefix_hits += seq.num_computed_tokens

    def ensure_slots(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow the table to hold `num_tokens` more tokens after the computed ones."""
        needed = self.num_blocks_for(seq.num_kv_tokens + num_tokens) - len(seq.block_table)
        if needed <= 0:
            return True
        if needed > self.num_free_blocks:
            return False
        seq.block_table.extend(self._take_free_block() for _ in range(needed))
        return True

    def commit_computed(self, seq: Sequence) -> None:
        """Register the blocks that became full of computed tokens in the prefix cache."""
        if not self.enable_prefix_caching or seq.num_dropped_tokens:
            return
        num_full = min(seq.num_computed_tokens, seq.num_tokens) // self.block_size
        if num_full <= seq.num_committed_blocks:
            return  # the common decode step: no block became full
        self._hash_full_blocks(seq, num_full * self.block_size)
        for index in range(seq.num_committed_blocks, num_full):
            self._register(seq.block_table[index], seq.block_hashes[index])
        seq.num_committed_blocks = num_full

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references; its KV is gone (num_computed_tokens = 0)."""
        # Tail blocks first: they become the least recently used, so a shared prefix outlives
        # the blocks that only this sequence could ever reuse.
        for block_id in reversed(seq.block_table):
            self._release(block_id, seq.priority)
        seq.block_table = []
        seq.num_committed_blocks = 0
        seq.num_computed_tokens = 0
        seq.num_dropped_tokens = 0

    # ---- KV compression ---------------------------------------------------------------------

    def compact(self, seq: Sequence, num_kept: int) -> list[int] | None:
        """Blocks for the `num_kept` tokens compression keeps of the sequence's computed ones,
        the rest of its table released; None (nothing changed) when they do not fit now.

        The caller reads the kept KV out of the old table first, then writes it into the
        returned one. Blocks only this sequence holds and nobody can look up are reused; its
        blocks in the prefix cache stay there, exact, unless there is no other room."""
        needed = self.num_blocks_for(num_kept)
        own = [b for b in seq.block_table if self.blocks[b].ref_count == 1]
        reusable = [b for b in own if self.blocks[b].hash is None]
        registered = [b for b in own if self.blocks[b].hash is not None]
        extra = needed - len(reusable)
        if extra > len(self._free_uncached) + len(registered) + len(self._evictable):
            return None
        targets = reusable[:needed]
        while len(targets) < needed and self._free_uncached:
            targets.append(self._take_free_block())
        for block_id in registered:
            if len(targets) == needed:
                break
            self._unregister(block_id)
            targets.append(block_id)
        while len(targets) < needed:
            targets.append(self._take_free_block())
        kept = set(targets)
        for block_id in reversed(seq.block_table):
            if block_id not in kept:
                self._release(block_id, seq.priority)
        seq.block_table = targets
        seq.num_dropped_tokens = seq.num_computed_tokens - num_kept
        return targets

    def drop_blocks(self, seq: Sequence, indices: list[int]) -> None:
        """Evict whole blocks (`indices` into the table) from the middle of a sequence; the
        tokens after them move up by as many slots."""
        for index in sorted(indices, reverse=True):
            self._release(seq.block_table.pop(index), seq.priority)
        seq.num_dropped_tokens += len(indices) * self.block_size
        seq.num_committed_blocks = min(seq.num_committed_blocks, len(seq.block_table))

    # ---- disaggregation: KV arriving from a prefill worker ------------------------------

    def reserve(self, seq: Sequence, num_kv_tokens: int | None = None) -> KVReservation | None:
        """Hold blocks for the prompt KV of `seq`; None when they do not fit right now.

        Full prompt blocks already cached here are shared, not transferred again; a compressed
        prompt (`num_kv_tokens` below its length) shares none: its blocks are not a prefix.
        """
        if seq.request_id in self._reservations or seq.block_table:
            raise RuntimeError(f"request {seq.request_id} already holds KV blocks")
        num_kv = seq.num_prompt_tokens if num_kv_tokens is None else num_kv_tokens
        if not 0 < num_kv <= seq.num_prompt_tokens:
            raise ValueError(f"{num_kv} KV tokens for a prompt of {seq.num_prompt_tokens}")
        caching = self.enable_prefix_caching and num_kv == seq.num_prompt_tokens
        num_full = self._hash_full_blocks(seq, seq.num_prompt_tokens) if caching else 0
        hashes = seq.block_hashes[:num_full]
        matched = self.match_prefix(hashes)
        needed = self.num_blocks_for(num_kv) - len(matched)
        if needed > self.num_free_blocks - self._num_evictable(matched):
            return None
        for block_id in matched:
            self._acquire(block_id)
        seq.block_table = list(matched) + [self._take_free_block() for _ in range(needed)]
        seq.num_committed_blocks = len(matched)
        seq.num_computed_tokens = 0
        seq.num_cached_tokens = len(matched) * self.block_size
        self.prefix_queries += seq.num_prompt_tokens
        self.prefix_hits += seq.num_cached_tokens
        reservation = KVReservation(seq, len(matched), num_kv)
        self._reservations[seq.request_id] = reservation
        return reservation

    def complete_reservation(self, request_id: str) -> Sequence:
        """The transferred KV is written: the whole prompt counts as computed and cached."""
        reservation = self._reservations.pop(request_id)
        seq = reservation.seq
        seq.num_computed_tokens = seq.num_prompt_tokens
        seq.num_dropped_tokens = seq.num_prompt_tokens - reservation.num_kv_tokens
        self.commit_computed(seq)
        return seq

    def cancel_reservation(self, request_id: str) -> Sequence | None:
        reservation = self._reservations.pop(request_id, None)
        if reservation is None:
            return None
        self.free(reservation.seq)
        return reservation.seq

    @property
    def reservations(self) -> dict[str, KVReservation]:
        return dict(self._reservations)

    def check_consistency(self, block_tables: Iterable[list[int]] | None = None) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (tests, leak checks).

        With `block_tables` (every table holding blocks, reservations included), also check
        that each block's ref count equals the number of tables that hold it.
        """
        free = list(self._free_uncached)
        evictable = list(self._evictable)
        pooled = set(free) | set(evictable)
        assert len(pooled) == len(free) + len(evictable), "a block is twice in the free pool"
        self._evictable.check_consistency()
        for block in self.blocks:
            assert block.ref_count >= 0, f"negative ref count: {block}"
            assert (block.block_id in pooled) == (block.ref_count == 0), (
                f"free and referenced: {block}"
            )
            if block.hash is not None:
                assert self._cached.get(block.hash) == block.block_id, f"stale hash: {block}"
        assert all(self.blocks[b].hash is None for b in free), "a free block is still cached"
        assert all(self.blocks[b].hash is not None for b in evictable), "uncached evictable"
        assert len(self._cached) == sum(1 for b in self.blocks if b.hash is not None)
        used = sum(1 for block in self.blocks if block.ref_count > 0)
        assert used + len(free) + len(evictable) == self.num_blocks, "blocks were lost"
        if block_tables is not None:
            expected = [0] * self.num_blocks
            for table in block_tables:
                for block_id in table:
                    expected[block_id] += 1
            actual = [block.ref_count for block in self.blocks]
            assert actual == expected, f"ref counts {actual} != holders {expected}"

    # ---- block pool ------------------------------------------------------------------------

    def _take_free_block(self) -> int:
        if self._free_uncached:
            block_id = self._free_uncached.popleft()
        else:
            block_id = self._evictable.pop()
            block = self.blocks[block_id]
            assert block.hash is not None
            del self._cached[block.hash]
            block.hash = None
        self._evictable.count_allocation()
        block = self.blocks[block_id]
        block.ref_count = 1
        block.priority = None
        return block_id

    def _acquire(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            self._evictable.remove(block_id)
            block.priority = None
        block.ref_count += 1

    def _release(self, block_id: int, priority: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count <= 0:
            raise RuntimeError(f"KV block {block_id} released more often than acquired")
        block.ref_count -= 1
        block.priority = priority if block.priority is None else min(block.priority, priority)
        if block.ref_count == 0:
            if block.hash is None:
                self._free_uncached.append(block_id)
            else:
                self._evictable.add(block_id, block.priority)

    def _unregister(self, block_id: int) -> None:
        block = self.blocks[block_id]
        assert block.hash is not None
        del self._cached[block.hash]
        block.hash = None

    def _register(self, block_id: int, block_hash: int) -> None:
        block = self.blocks[block_id]
        if block.hash is not None or block_hash in self._cached:
            return  # already registered, or an identical block computed concurrently is
        block.hash = block_hash
        self._cached[block_hash] = block_id
