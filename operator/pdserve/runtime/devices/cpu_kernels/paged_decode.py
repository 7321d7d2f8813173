"""Calling the CPU paged-decode attention kernel (paged_decode.c)."""

from __future__ import annotations

import ctypes

import torch

from pdserve.runtime.devices.cpu_kernels.library import DTYPE_FLAGS

# The limits paged_decode.c checks; shapes past them use the gather + SDPA path.
MAX_Q_HEADS, MAX_HEAD_DIM, MAX_Q_WIDTH, MAX_BLOCK_SIZE, MAX_SCORES = 256, 512, 16384, 128, 8192


def supports(num_q_heads: int, head_dim: int, block_size: int, dtype: torch.dtype) -> bool:
    return (
        dtype in DTYPE_FLAGS
        and num_q_heads <= MAX_Q_HEADS
        and head_dim <= MAX_HEAD_DIM
        and num_q_heads * head_dim <= MAX_Q_WIDTH
        and block_size <= MAX_BLOCK_SIZE
        and num_q_heads * block_size <= MAX_SCORES
    )


def paged_decode(
    library: ctypes.CDLL,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    out: torch.Tensor,
    scale: float,
) -> None:
    """out[s] = attention of q[s] [Hq, D] over the first context_lens[s] tokens of its blocks.

    q, out [S, Hq, D]; caches [num_blocks, block_size, Hkv, D]; block_tables int64 [S, width];
    context_lens int64 [S]. All contiguous, on CPU, same dtype (float32 or bfloat16)."""
    num_seqs, num_q_heads, head_dim = q.shape
    status = library.paged_decode(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), block_tables.data_ptr(),
        context_lens.data_ptr(), out.data_ptr(), num_seqs, num_q_heads, k_cache.shape[2],
        head_dim, k_cache.shape[1], block_tables.shape[1], scale, DTYPE_FLAGS[q.dtype],
        torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise ValueError("paged_decode: shapes over the kernel's limits (check supports())")
