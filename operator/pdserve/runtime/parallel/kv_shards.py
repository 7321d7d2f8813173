"""A tensor-parallel replica's KV as one pool, for the handoff between prefill and decode.

Each rank holds the KV heads of its shard (rank r: heads [r*h, (r+1)*h)). The handoff moves
blocks with every head, so a TP=2 prefill and a TP=1 decode (or the reverse, or any two
degrees) exchange the same bytes: rank 0 gathers the other ranks' heads of the blocks it sends,
and scatters the heads of the blocks it receives, over the replica's group. Rank 0's transfer
threads call this; the followers serve the matching command in their step loop.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from pdserve.runtime.engine.kv_cache import KVCache, KVLayout, check_blocks_shape
from pdserve.runtime.parallel.group import TensorParallelGroup
from pdserve.runtime.parallel.step_plan import GATHER_KV, SCATTER_KV, kv_command

if TYPE_CHECKING:
    from pdserve.runtime.parallel.runner import LeaderRunner

KV_HEAD_DIM = 4  # of [layers, 2, blocks, block_size, kv_heads, head_dim]


class ShardedKVPool:
    """Rank 0's view of the whole replica's KV (engine/kv_cache.py's KVPool)."""

    def __init__(self, local: KVCache, leader: LeaderRunner):
        self.local = local
        self.leader = leader
        self.group = leader.group
        self.layout: KVLayout = dataclasses.replace(
            local.layout, num_kv_heads=local.layout.num_kv_heads * self.group.size)

    def memory(self) -> torch.Tensor | None:
        return None  # the heads live in several processes

    def read_blocks(self, block_ids: list[int]) -> torch.Tensor:
        self._check_ids(block_ids)

        def gather() -> torch.Tensor:
            whole = self.group.gather(self.local.read_blocks(block_ids), KV_HEAD_DIM)
            assert whole is not None  # rank 0
            return whole

        return self.leader.lead(kv_command(GATHER_KV, block_ids), gather)

    def write_blocks(self, block_ids: list[int], data: torch.Tensor) -> None:
        self._check_ids(block_ids)
        check_blocks_shape(self.layout, block_ids, data)
        whole = data.to(device=self.local.kv.device, dtype=self.local.kv.dtype)

        def scatter() -> None:
            mine = torch.empty(self.local.layout.blocks_shape(len(block_ids)),
                               dtype=whole.dtype, device=whole.device)
            self.group.scatter(whole, mine, KV_HEAD_DIM)
            self.local.write_blocks(block_ids, mine)

        self.leader.lead(kv_command(SCATTER_KV, block_ids), scatter)

    def _check_ids(self, block_ids: list[int]) -> None:
        # Before the command goes out: a bad id must fail here, not in every follower.
        if any(not 0 <= b < self.local.num_blocks for b in block_ids):
            raise ValueError(f"block ids out of range 0..{self.local.num_blocks - 1}: {block_ids}")


def serve_kv_command(plan: list[int], local: KVCache, group: TensorParallelGroup) -> None:
    """A follower's part of rank 0's GATHER_KV or SCATTER_KV command."""
    command, block_ids = plan[0], plan[1:]
    if command == GATHER_KV:
        group.gather(local.read_blocks(block_ids), KV_HEAD_DIM)
    elif command == SCATTER_KV:
        mine = torch.empty(local.layout.blocks_shape(len(block_ids)), dtype=local.kv.dtype,
                           device=local.kv.device)
        group.scatter(None, mine, KV_HEAD_DIM)
        local.write_blocks(block_ids, mine)
    else:
        raise RuntimeError(f"unknown tensor-parallel command {command}")
