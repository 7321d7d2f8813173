"""Blocks a decode worker holds for a sequence whose prompt KV a prefill worker is sending in
(BlockManager.reserve; the receiving side of the KV handoff, runtime/disagg/)."""

from __future__ import annotations

from dataclasses import dataclass

from pdserve.runtime.engine.sequence import Sequence


@dataclass
class KVReservation:
    """Blocks held for a sequence whose prompt KV is being transferred in."""

    seq: Sequence
    num_cached_blocks: int  # leading blocks of seq.block_table already cached here
    num_kv_tokens: int  # prompt tokens whose KV arrives (fewer than the prompt: compressed)

    @property
    def missing_block_ids(self) -> list[int]:
        """Blocks the transfer must fill, in prompt order."""
        return self.seq.block_table[self.num_cached_blocks :]
