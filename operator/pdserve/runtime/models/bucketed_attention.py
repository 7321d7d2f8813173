"""Paged attention in fixed shapes, for devices that compile one graph per shape (XLA).

One batch is `rows` sequences of `tokens` new tokens each (a decode batch: tokens = 1; a
prefill chunk: rows = 1), every one with a block table of `width` blocks. New K/V are written
through `slot_mapping`; then each row gathers its context from the cache and attends with the
mask key position <= query position (a block table lists a sequence's blocks in order, so
the key's index is its position). Padding rows and tokens write to a scratch block and attend
to one key of it: finite, and never read back. This is the gather-based path; it runs on any
device (the tests compare it with the CPU path) and is the one XLA's CPU backend runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class BucketedBatch:
    slot_mapping: torch.Tensor  # [rows * tokens] cache slot of every new token
    block_tables: torch.Tensor  # [rows, width]
    positions: torch.Tensor  # [rows, tokens] of every new token
    sample_index: torch.Tensor  # rows of the flat batch whose logits are computed

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor, scale: float) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D]; caches [num_blocks, block_size, Hkv, D] -> [T, Hq, D]."""
        num_kv_heads, head_dim = k.shape[1], k.shape[2]
        k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, self.slot_mapping, k)
        v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, self.slot_mapping, v)
        rows, tokens = self.positions.shape
        keys = self.block_tables.shape[1] * k_cache.shape[1]
        # [rows, keys, Hkv, D] -> [rows, Hkv, keys, D]
        kc = k_cache[self.block_tables].reshape(rows, keys, num_kv_heads, head_dim).transpose(1, 2)
        vc = v_cache[self.block_tables].reshape(rows, keys, num_kv_heads, head_dim).transpose(1, 2)
        qr = q.view(rows, tokens, -1, head_dim).transpose(1, 2)  # [rows, Hq, tokens, D]
        key_positions = torch.arange(keys, device=q.device)
        mask = key_positions[None, None, None, :] <= self.positions[:, None, :, None]
        out = F.scaled_dot_product_attention(qr, kc, vc, attn_mask=mask, scale=scale,
                                             enable_gqa=True)
        return out.transpose(1, 2).reshape(q.shape)
