"""Paged attention in pure torch.

Each step's new tokens are laid out flat: first the decoding sequences (one token each), then
the prefill chunks. New K/V are written into the paged cache through `slot_mapping`; decodes
then attend over their gathered context as one padded batch (the query heads of a KV group are
treated as the query length, so grouped-query attention needs no K/V repetition); each prefill
chunk attends over its own tokens (plain causal) or, when part of its prompt is already cached
(prefix cache or an earlier chunk), over its gathered context with an offset causal mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PrefillChunk:
    """One sequence's chunk of new tokens: rows [start, end) of the flat batch."""

    start: int
    end: int
    num_context: int  # tokens already in the cache before this chunk
    context_slots: torch.Tensor | None  # [num_context + chunk] cache slots, None if no context


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot of every new token
    num_decodes: int  # the first num_decodes rows are single-token decodes
    decode_slots: torch.Tensor | None  # [B, max_context] cache slots of each decode's context
    decode_mask: torch.Tensor | None  # [B, 1, 1, max_context] True where a key is valid
    prefills: list[PrefillChunk]


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hkv, D]; caches [num_slots, Hkv, D]. Returns [T, Hq, D]."""
    k_cache.index_copy_(0, meta.slot_mapping, k)
    v_cache.index_copy_(0, meta.slot_mapping, v)
    out = torch.empty_like(q)
    num_kv_heads = k.shape[1]
    if meta.num_decodes:
        b = meta.num_decodes
        assert meta.decode_slots is not None
        groups = q.shape[1] // num_kv_heads
        qd = q[:b].view(b, num_kv_heads, groups, -1)
        kd = k_cache[meta.decode_slots].transpose(1, 2)
        vd = v_cache[meta.decode_slots].transpose(1, 2)
        od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask, scale=scale)
        out[:b] = od.reshape(b, q.shape[1], -1)
    for chunk in meta.prefills:
        qp = q[chunk.start : chunk.end].transpose(0, 1)
        if chunk.context_slots is None:
            kp = k[chunk.start : chunk.end].transpose(0, 1)
            vp = v[chunk.start : chunk.end].transpose(0, 1)
            op = F.scaled_dot_product_attention(
                qp, kp, vp, is_causal=True, scale=scale, enable_gqa=True
            )
        else:
            kp = k_cache[chunk.context_slots].transpose(0, 1)
            vp = v_cache[chunk.context_slots].transpose(0, 1)
            n = chunk.end - chunk.start
            rows = torch.arange(n, device=q.device)[:, None] + chunk.num_context
            mask = torch.arange(kp.shape[1], device=q.device)[None, :] <= rows
            op = F.scaled_dot_product_attention(
                qp, kp, vp, attn_mask=mask, scale=scale, enable_gqa=True
            )
        out[chunk.start : chunk.end] = op.transpose(0, 1)
    return out
