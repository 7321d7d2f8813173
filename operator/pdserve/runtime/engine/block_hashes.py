"""Chained hashes of full KV blocks: the prefix cache's keys (pure Python).

A block's hash chains its tokens to its prefix's hash, so equal prefixes give equal hash chains
in every process (blake2b, not Python's salted `hash`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence as TokenSequence

ROOT_HASH = 0


def hash_block(parent_hash: int, token_ids: TokenSequence[int]) -> int:
    """Chained hash of one full block: identical in every process for the same prefix."""
    data = struct.pack(f"<Q{len(token_ids)}q", parent_hash, *token_ids)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def compute_block_hashes(
    token_ids: TokenSequence[int], block_size: int, parent_hash: int = ROOT_HASH
) -> list[int]:
    """Chained hashes of the full blocks of `token_ids` (a trailing partial block has none)."""
    hashes = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent_hash = hash_block(parent_hash, token_ids[start : start + block_size])
        hashes.append(parent_hash)
    return hashes
