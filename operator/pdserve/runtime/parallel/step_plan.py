"""One engine step as flat integers, so follower ranks run the same forward pass as rank 0.

Per scheduled chunk: start, new tokens, whether it is sampled, its dropped tokens (KV
compression), its tokens [start, start + new), its block table. The followers rebuild the
chunks and hand them to their own ModelRunner, which lays out inputs and attention metadata
exactly as rank 0's does (pure Python, no torch).
A plan starting with a negative number is a command instead: [-1] stops the followers,
[-2, blocks...] gathers those KV blocks' shards to rank 0, [-3, blocks...] scatters them from
rank 0 (the KV handoff of a tensor-parallel replica, parallel/kv_shards.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pdserve.runtime.engine.model_runner import ScheduledChunk

STOP = [-1]
GATHER_KV, SCATTER_KV = -2, -3


@dataclass(frozen=True)
class PlannedSeq:
    start: int
    tokens: list[int]  # the chunk's tokens, from `start`
    block_table: list[int]
    num_dropped_tokens: int = 0
    snapkv_pending = False  # rank 0 alone scores and compacts

    def token_at(self, position: int) -> int:
        return self.tokens[position - self.start]

    def token_slice(self, start: int, end: int) -> list[int]:
        return self.tokens[start - self.start:end - self.start]


@dataclass(frozen=True)
class PlannedChunk:
    seq: PlannedSeq
    start: int
    num_new_tokens: int
    needs_sample: bool


def encode(chunks: Sequence[ScheduledChunk]) -> list[int]:
    """The chunks of a scheduler step as integers."""
    plan = [len(chunks)]
    for c in chunks:
        table = list(c.seq.block_table)
        plan += [c.start, c.num_new_tokens, int(c.needs_sample), c.seq.num_dropped_tokens,
                 len(table)]
        plan += c.seq.token_slice(c.start, c.start + c.num_new_tokens)
        plan += table
    return plan


def kv_command(command: int, block_ids: Sequence[int]) -> list[int]:
    return [command, *block_ids]


def decode(plan: list[int]) -> list[PlannedChunk]:
    """The chunks of an encoded step (not a command)."""
    chunks, at = [], 1
    for _ in range(plan[0]):
        start, count, sampled, dropped, width = plan[at:at + 5]
        at += 5
        tokens = plan[at:at + count]
        table = plan[at + count:at + count + width]
        at += count + width
        chunks.append(PlannedChunk(PlannedSeq(start, tokens, table, dropped), start, count,
                                   bool(sampled)))
    return chunks
