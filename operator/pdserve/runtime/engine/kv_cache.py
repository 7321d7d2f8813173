"""The engine's paged KV cache: ONE tensor
`kv[num_layers, 2 (k, v), num_blocks, block_size, num_kv_heads, head_dim]`.

Block ids come from the block manager; this module owns the memory, the per-layer views the
model writes through, and whole-block reads/writes for moving a prompt's KV between engines.
`KVLayout` is what two engines compare in the KV-transfer handshake; `KVPool` is what that
handoff moves blocks through (this cache, or a tensor-parallel replica's shards seen as one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

from pdserve.runtime.devices.resolve import dtype_from_name, dtype_name
from pdserve.runtime.engine.buckets import CompiledDevice, round_up


@dataclass(frozen=True)
class KVLayout:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: str  # "float32" | "bfloat16" | "float16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_from_name(self.dtype)

    def blocks_shape(self, num_blocks: int) -> tuple[int, ...]:
        """Shape of some blocks' data, as the pool holds it and the handoff sends it:
        [layers, 2, blocks, block_size, kv_heads, head_dim]."""
        return (self.num_layers, 2, num_blocks, self.block_size, self.num_kv_heads, self.head_dim)

    @property
    def bytes_per_block(self) -> int:
        elements = 1
        for size in self.blocks_shape(1):
            elements *= size
        return elements * torch.empty((), dtype=self.torch_dtype).element_size()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KVLayout:
        return cls(**data)


class KVPool(Protocol):
    """Whole-block access to all of a replica's KV, for the handoff between engines."""

    @property
    def layout(self) -> KVLayout: ...  # every KV head of the model
    def memory(self) -> torch.Tensor | None:
        """The pool tensor when a socket or a transfer library may read and write its blocks in
        place (one tensor holding every head, in host or CUDA memory), else None (blocks go
        through read_blocks/write_blocks)."""
        ...
    def read_blocks(self, block_ids: list[int]) -> torch.Tensor: ...
    def write_blocks(self, block_ids: list[int], data: torch.Tensor) -> None: ...


class KVCache:
    """`num_blocks` blocks for the block manager. On a compiled-graph device (`compiled`) one
    more, the scratch block, takes the writes of padding, and block reads and writes are padded
    to its transfer buckets so that they reuse a few graphs."""

    def __init__(self, layout: KVLayout, num_blocks: int, device: torch.device,
                 compiled: CompiledDevice | None = None):
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.layout = layout
        self.num_blocks = num_blocks
        self.compiled = compiled
        self.scratch_block = num_blocks
        # Zeroed, not empty: padded attention reads of never-written slots must stay finite.
        self.kv = torch.zeros(
            layout.blocks_shape(num_blocks + (1 if compiled else 0)),
            dtype=layout.torch_dtype,
            device=device,
        )  # fmt: skip

    @classmethod
    def layout_for(
        cls, num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
    ) -> KVLayout:
        return KVLayout(num_layers, num_kv_heads, head_dim, block_size, dtype_name(dtype))

    def layer_views(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, (k, v) views shaped [num_blocks, block_size, num_kv_heads, head_dim]."""
        return [(self.kv[layer, 0], self.kv[layer, 1]) for layer in range(self.layout.num_layers)]

    def _index(self, block_ids: list[int]) -> torch.Tensor:
        if any(not 0 <= b < self.num_blocks for b in block_ids):
            raise ValueError(f"block ids out of range 0..{self.num_blocks - 1}: {block_ids}")
        return torch.tensor(block_ids, dtype=torch.long, device=self.kv.device)

    def memory(self) -> torch.Tensor | None:
        # A compiled device's tensor is not at a stable address that others may write.
        return self.kv if self.compiled is None else None

    def read_blocks(self, block_ids: list[int]) -> torch.Tensor:
        """A copy of the blocks' KV, shaped `layout.blocks_shape(len(block_ids))`."""
        index = self._index(block_ids)
        if self.compiled is None:
            return self.kv.index_select(2, index)
        with self.compiled.lock:
            return self.kv.index_select(2, self._padded(index)).cpu()[:, :, :len(block_ids)]

    def write_blocks(self, block_ids: list[int], data: torch.Tensor) -> None:
        """Write data shaped like `read_blocks` returns into the given blocks."""
        check_blocks_shape(self.layout, block_ids, data)
        index = self._index(block_ids)
        if self.compiled is None:
            self.kv.index_copy_(2, index, data.to(device=self.kv.device, dtype=self.kv.dtype))
            return
        padded = self._padded(index)
        fill = data.new_zeros(self.layout.blocks_shape(len(padded) - len(block_ids)))
        whole = torch.cat([data.cpu(), fill], dim=2).to(device=self.kv.device,
                                                         dtype=self.kv.dtype)
        with self.compiled.lock:
            self.kv.index_copy_(2, padded, whole)
            self.compiled.sync()

    def _padded(self, index: torch.Tensor) -> torch.Tensor:
        """`index` padded with the scratch block to a transfer bucket."""
        assert self.compiled is not None
        size = round_up(len(index), self.compiled.buckets.blocks)
        pad = torch.full((size - len(index),), self.scratch_block, dtype=torch.long)
        return torch.cat([index.cpu(), pad]).to(self.kv.device)


def check_blocks_shape(layout: KVLayout, block_ids: list[int], data: torch.Tensor) -> None:
    expected = layout.blocks_shape(len(block_ids))
    if tuple(data.shape) != expected:
        raise ValueError(f"KV data has shape {tuple(data.shape)}, expected {expected}")
