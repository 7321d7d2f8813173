"""Applying KV compression to an engine's sequences after each step.

SnapKV: the window scores each step's prefill chunks produced are summed per request; once a
prompt is computed (its first token sampled, or a prefill-only request retained), the kept KV
is gathered, given its blocks and written back, and the rest of the prompt's blocks are freed.
Streaming: whole blocks between the sinks and the recent window are evicted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from pdserve.runtime.compression.snapkv import choose_positions, gather_kept
from pdserve.runtime.engine.block_manager import BlockManager
from pdserve.runtime.engine.kv_cache import KVCache
from pdserve.runtime.engine.sequence import Sequence
from pdserve.runtime.models.attention import ScoreWindow

log = logging.getLogger(__name__)


class KVCompressor:
    def __init__(self, kv_cache: KVCache, block_manager: BlockManager, bytes_per_token: int):
        self.kv_cache = kv_cache
        self.block_manager = block_manager
        self.bytes_per_token = bytes_per_token
        self._scores: dict[str, torch.Tensor] = {}  # request id -> [layers, Hkv, candidates]
        self.tokens_pruned = 0

    @property
    def bytes_saved(self) -> int:
        return self.tokens_pruned * self.bytes_per_token

    def observe(self, windows: dict[str, ScoreWindow]) -> None:
        """Add one step's window scores (one tensor per layer) to each request's sum."""
        for request_id, window in windows.items():
            scores = torch.stack(window.scores)
            total = self._scores.get(request_id)
            self._scores[request_id] = scores if total is None else total + scores

    def forget(self, request_id: str) -> None:
        self._scores.pop(request_id, None)

    def after_step(self, seqs: Iterable[Sequence]) -> None:
        for seq in seqs:
            if not seq.block_table:  # finished and freed, or preempted
                self.forget(seq.request_id)
                continue
            if seq.snapkv_pending and seq.num_computed_tokens >= seq.num_prompt_tokens:
                self._snapkv(seq)
            if seq.kv_compression.method == "streaming":
                self._stream(seq)

    def _snapkv(self, seq: Sequence) -> None:
        seq.snapkv_done = True
        scores = self._scores.pop(seq.request_id, None)
        num_prompt = seq.num_prompt_tokens
        num_kept = seq.kv_compression.snapkv_kept(num_prompt)
        if num_kept >= num_prompt:
            return
        assert scores is not None, f"no window scores for {seq.request_id}"
        positions = choose_positions(scores, num_prompt, num_kept)
        data = gather_kept(self.kv_cache.kv, seq.block_table, positions,
                           self.block_manager.block_size)
        table = self.block_manager.compact(seq, num_kept)
        if table is None:
            log.warning("no free KV blocks to compact request %s: kept whole (%d tokens)",
                        seq.request_id, num_prompt)
            return
        self.kv_cache.write_blocks(table, data)
        self.tokens_pruned += num_prompt - num_kept

    def _stream(self, seq: Sequence) -> None:
        bm = self.block_manager
        evict = seq.kv_compression.streaming_evictable(seq.num_kv_tokens, len(seq.block_table),
                                                       bm.block_size)
        if not evict:
            return
        bm.drop_blocks(seq, evict)
        self.tokens_pruned += len(evict) * bm.block_size
