"""Paged attention.

Each step's new tokens are laid out flat: first the single-token decodes, then the prefill
chunks. New K/V are written into the paged cache through `slot_mapping`. On CPU the decodes go
to a C kernel that reads their context straight out of the cache blocks (`KernelDecodes`).
Elsewhere (CUDA, or no C compiler) decodes attend over their context gathered block by block
into padded batches of similar lengths (`DecodeGroup`), the query heads of a KV group standing
in for the query length (so grouped-query attention needs no K/V repetition). A prefill
chunk with nothing cached before it attends causally over its own new K/V; one that continues a
cached prefix (prefix cache or an earlier chunk) gathers its context blocks and uses a causal
mask offset by the cached length.

Cache addressing is by slot, not position: a sequence whose KV was compressed holds fewer
slots than tokens (see engine/sequence.py), and the runner gives slots and context lengths.
A prefill chunk holding prompt rows of SnapKV's observation window also scores the candidate
positions with them (`ScoreWindow`), layer by layer.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pdserve.runtime.compression.snapkv import window_scores
from pdserve.runtime.devices.cpu_kernels.paged_decode import paged_decode


@dataclass
class ScoreWindow:
    """Chunk rows [first_row, end) are SnapKV window queries; each layer appends the attention
    they give the candidate slots [0, num_candidates), [Hkv, num_candidates] float32."""

    first_row: int
    num_candidates: int
    scores: list[torch.Tensor] = field(default_factory=list)


@dataclass
class PrefillChunk:
    """One sequence's chunk: rows [start, end) of the flat batch."""

    start: int
    end: int
    num_context: int  # tokens already in the cache before this chunk
    # Block ids covering num_context + chunk and the offset causal mask [chunk, total];
    # both None when nothing is cached before the chunk (plain causal attention).
    context_blocks: torch.Tensor | None
    mask: torch.Tensor | None
    window: ScoreWindow | None = None


@dataclass
class DecodeGroup:
    """Decodes in rows [start, end) of similar context length, attended as one padded batch."""

    start: int
    end: int
    blocks: torch.Tensor  # [rows, max_blocks] block tables, padded with block 0
    mask: torch.Tensor  # [rows, 1, 1, max_blocks * block_size] True for valid keys


@dataclass
class KernelDecodes:
    """All decodes, rows [0, len(context_lens)), for the CPU paged-decode kernel."""

    library: ctypes.CDLL
    block_tables: torch.Tensor  # int64 [rows, max_blocks], padded with block 0
    context_lens: torch.Tensor  # int64 [rows] tokens to attend over, the new one included


class GatherWorkspace:
    """Reused buffers for gathered context K/V. A fresh multi-megabyte tensor per layer costs
    page faults on CPU that take longer than the copy itself."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def gather(self, name: str, cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """cache [num_blocks, block_size, H, D] -> [*blocks.shape[:-1], n * block_size, H, D].

        The result is overwritten by the next gather under the same name."""
        shape = (blocks.numel(), *cache.shape[1:])
        numel = blocks.numel() * cache[0].numel()
        buf = self._buffers.get(name)
        if (
            buf is None
            or buf.numel() < numel
            or buf.dtype != cache.dtype
            or buf.device != cache.device
        ):
            buf = torch.empty(numel, dtype=cache.dtype, device=cache.device)
            self._buffers[name] = buf
        out = buf[:numel].view(shape)
        torch.index_select(cache, 0, blocks.reshape(-1), out=out)
        return out.view(*blocks.shape[:-1], -1, *cache.shape[2:])


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot (block * block_size + offset) of every new token
    decodes: list[DecodeGroup]  # the single-token decodes come first in the flat batch
    prefills: list[PrefillChunk]
    kernel_decodes: KernelDecodes | None = None  # instead of `decodes`, on CPU
    workspace: GatherWorkspace = field(default_factory=GatherWorkspace)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor, scale: float) -> torch.Tensor:
        return paged_attention(q, k, v, k_cache, v_cache, self, scale)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hkv, D]; caches [num_blocks, block_size, Hkv, D] -> [T, Hq, D]."""
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
    out = torch.empty_like(q)
    if meta.kernel_decodes is not None:
        kd = meta.kernel_decodes
        rows = kd.context_lens.shape[0]
        paged_decode(kd.library, q[:rows].contiguous(), k_cache, v_cache, kd.block_tables,
                     kd.context_lens, out[:rows], scale)  # fmt: skip
    for group in meta.decodes:
        b = group.end - group.start
        qd = q[group.start : group.end].view(b, num_kv_heads, -1, head_dim)
        kd = meta.workspace.gather("k", k_cache, group.blocks).transpose(1, 2)
        vd = meta.workspace.gather("v", v_cache, group.blocks).transpose(1, 2)
        od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=group.mask, scale=scale)
        out[group.start : group.end] = od.reshape(b, q.shape[1], head_dim)
    for chunk in meta.prefills:
        qp = q[chunk.start : chunk.end].transpose(0, 1)
        if chunk.context_blocks is None:
            kp = k[chunk.start : chunk.end].transpose(0, 1)
            vp = v[chunk.start : chunk.end].transpose(0, 1)
        else:
            total = chunk.num_context + chunk.end - chunk.start
            kp = meta.workspace.gather("k", k_cache, chunk.context_blocks)[:total].transpose(0, 1)
            vp = meta.workspace.gather("v", v_cache, chunk.context_blocks)[:total].transpose(0, 1)
        op = F.scaled_dot_product_attention(
            qp, kp, vp, attn_mask=chunk.mask, is_causal=chunk.mask is None, scale=scale,
            enable_gqa=True,
        )  # fmt: skip
        out[chunk.start : chunk.end] = op.transpose(0, 1)
        if chunk.window is not None:
            w = chunk.window
            w.scores.append(window_scores(q[chunk.start + w.first_row : chunk.end], kp,
                                          chunk.num_context + w.first_row, w.num_candidates,
                                          scale))
    return out
