"""SnapKV's two steps in torch: score the prompt positions by the attention of its last queries,
then choose per KV head the positions to keep.

Scoring runs inside attention, for the prompt rows in the observation window (the last
`window` prompt tokens), in whichever prefill chunk they fall: a window query sees every
candidate position (all come before the window), so the scores do not depend on chunking or on
how much of the prompt came from the prefix cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pdserve.runtime.compression.config import POOL_KERNEL


def window_scores(q: torch.Tensor, keys: torch.Tensor, first_query: int,
                  num_candidates: int, scale: float) -> torch.Tensor:
    """Attention of window queries on the candidate positions, summed per KV head.

    q [w, Hq, D]: the window rows, the first at key index `first_query`; keys [Hkv, T, D] with
    T >= first_query + w, each query seeing the keys up to itself. Returns float32
    [Hkv, num_candidates]: per KV head, the attention its query heads and the window rows give
    each candidate (key indices [0, num_candidates))."""
    w, num_heads, head_dim = q.shape
    num_kv_heads = keys.shape[0]
    total = first_query + w
    grouped = q.float().view(w, num_kv_heads, num_heads // num_kv_heads, head_dim)
    logits = torch.einsum("wkgd,ktd->kgwt", grouped, keys[:, :total].float()) * scale
    rows = torch.arange(first_query, total, device=q.device)[:, None]
    visible = torch.arange(total, device=q.device)[None, :] <= rows
    probs = logits.masked_fill(~visible, float("-inf")).softmax(dim=-1)
    return probs[..., :num_candidates].sum(dim=(1, 2))


def choose_positions(scores: torch.Tensor, num_prompt_tokens: int, num_kept: int
                     ) -> torch.Tensor:
    """Positions to keep, per layer and KV head, ascending: int64 [layers, Hkv, num_kept].

    scores [layers, Hkv, C] cover the candidates [0, C); the window [C, num_prompt_tokens) is
    always kept and the `num_kept - window` best-scoring candidates after max-pooling."""
    num_layers, num_kv_heads, num_candidates = scores.shape
    window = num_prompt_tokens - num_candidates
    chosen = num_kept - window
    if not 0 <= chosen <= num_candidates:
        raise ValueError(f"cannot keep {num_kept} of {num_prompt_tokens} tokens with a "
                         f"{window}-token window")
    pooled = F.max_pool1d(scores.reshape(-1, 1, num_candidates), POOL_KERNEL, stride=1,
                          padding=POOL_KERNEL // 2).view(num_layers, num_kv_heads, -1)
    # A stable sort: equal scores (uniform attention) keep the earlier position, on every run.
    best = pooled.sort(dim=-1, descending=True, stable=True).indices[..., :chosen]
    top = best.sort(dim=-1).values
    recent = torch.arange(num_candidates, num_prompt_tokens, device=scores.device)
    return torch.cat([top, recent.expand(num_layers, num_kv_heads, window)], dim=-1)


def gather_kept(kv: torch.Tensor, block_table: list[int], positions: torch.Tensor,
                block_size: int) -> torch.Tensor:
    """The kept K/V of one sequence packed into whole blocks, ready to write into
    `ceil(kept / block_size)` blocks: [layers, 2, blocks, block_size, Hkv, D].

    kv is the cache [layers, 2, num_blocks, block_size, Hkv, D]; positions [layers, Hkv, kept]
    index the sequence's slots (its block_table in order)."""
    num_layers, _, _, _, num_kv_heads, head_dim = kv.shape
    kept = positions.shape[-1]
    num_blocks = -(-kept // block_size)
    table = torch.tensor(block_table, dtype=torch.long, device=kv.device)
    slots = kv.index_select(2, table).flatten(2, 3)  # [layers, 2, slots, Hkv, D]
    index = positions.to(kv.device).transpose(1, 2)[:, None, :, :, None]
    out = slots.new_zeros(num_layers, 2, num_blocks * block_size, num_kv_heads, head_dim)
    out[:, :, :kept] = slots.gather(2, index.expand(-1, 2, -1, -1, head_dim))
    return out.view(num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim)
