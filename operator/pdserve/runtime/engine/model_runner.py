"""Turning one scheduler step into a model forward pass.

From the scheduled chunks it builds the flat inputs (token ids, positions, cache slots; decodes
first, then prefill chunks), the attention metadata (padded block tables for the decodes: one
table for the CPU kernel, or groups of similar lengths for the SDPA path; context blocks for
prefill chunks that continue a cached prefix), runs the model and returns logits only for the
sequences whose chunk reached their last known token (the ones that need a sample).
Positions drive RoPE; the cache is addressed by slot (position less the sequence's dropped
tokens, which KV compression prunes). Chunks with SnapKV window rows score the prompt too:
`score_windows` holds the last step's, by request id.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Protocol

import torch

from pdserve.runtime.devices.cpu_kernels import library, paged_decode
from pdserve.runtime.engine.sequence import Sequence
from pdserve.runtime.models.attention import (
    AttentionMetadata,
    DecodeGroup,
    GatherWorkspace,
    KernelDecodes,
    PrefillChunk,
    ScoreWindow,
)
from pdserve.runtime.models.llama import CausalLM

# Decodes are attended in padded batches of at most this many sequences of similar context
# length: less padding, and the gathered K/V of a batch stays in the CPU's cache for attention.
DECODE_GROUP_ROWS = 4


class ScheduledChunk(Protocol):
    """What the runner needs of the scheduler's ScheduledSeq."""

    seq: Sequence
    start: int
    num_new_tokens: int
    needs_sample: bool


class ModelRunner:
    def __init__(self, model: CausalLM, block_size: int, device: torch.device):
        self.model = model
        self.block_size = block_size
        self.device = device
        self.workspace = GatherWorkspace()
        dtype = model.embed_tokens.weight.dtype
        heads, head_dim = model.config.num_attention_heads // model.parallel.size, \
            model.config.head_dim
        kernel_fits = paged_decode.supports(heads, head_dim, block_size, dtype)
        self.decode_kernel = library.load() if device.type == "cpu" and kernel_fits else None
        self.score_windows: dict[str, ScoreWindow] = {}

    def close(self) -> None:
        """Nothing to release: a single-process runner (see parallel/runner.py for others)."""

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(self.device, non_blocking=True)

    def _block_tables(self, decodes: list[ScheduledChunk]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decodes sorted by context length -> their block tables [rows, blocks of the longest],
        padded with block 0, and context lengths [rows]."""
        width = -(-(_slot(decodes[-1]) + 1) // self.block_size)
        flat = [b for c in decodes for b in (c.seq.block_table[:width] + [0] * width)[:width]]
        lengths = self._tensor([_slot(c) + 1 for c in decodes])
        return self._tensor(flat).view(-1, width), lengths

    def _decode_groups(self, decodes: list[ScheduledChunk]) -> list[DecodeGroup]:
        """Split decodes (sorted by context length) into padded batches of similar lengths."""
        bs = self.block_size
        num_groups = -(-len(decodes) // DECODE_GROUP_ROWS)
        groups = []
        for g in range(num_groups):
            start, end = g * len(decodes) // num_groups, (g + 1) * len(decodes) // num_groups
            tables, lengths = self._block_tables(decodes[start:end])
            keys = torch.arange(tables.shape[1] * bs, device=self.device)
            mask = (keys[None, :] < lengths[:, None])[:, None, None, :]
            groups.append(DecodeGroup(start, end, tables, mask))
        return groups

    def _kernel_decodes(self, decodes: list[ScheduledChunk]) -> KernelDecodes:
        assert self.decode_kernel is not None
        return KernelDecodes(self.decode_kernel, *self._block_tables(decodes))

    def _prefill_chunk(self, c: ScheduledChunk, row: int) -> PrefillChunk:
        window = _score_window(c)
        if window is not None:
            self.score_windows[c.seq.request_id] = window
        start = _slot(c)
        if start == 0:
            return PrefillChunk(row, row + c.num_new_tokens, 0, None, None, window)
        end = start + c.num_new_tokens
        blocks = self._tensor(c.seq.block_table[: -(-end // self.block_size)])
        rows = torch.arange(start, end, device=self.device)[:, None]
        mask = torch.arange(end, device=self.device)[None, :] <= rows
        return PrefillChunk(row, row + c.num_new_tokens, start, blocks, mask, window)

    def prepare(
        self, chunks: Seq[ScheduledChunk]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int], list[ScheduledChunk]]:
        """Flat inputs, metadata, rows to sample and the chunks in row order (decodes first)."""
        bs = self.block_size
        self.score_windows = {}
        decodes = sorted(
            (c for c in chunks if c.num_new_tokens == 1 and c.needs_sample), key=_slot
        )
        prefills = [c for c in chunks if not (c.num_new_tokens == 1 and c.needs_sample)]
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        for c in decodes:
            ids.append(c.seq.token_at(c.start))
            positions.append(c.start)
            slot = _slot(c)
            slots.append(c.seq.block_table[slot // bs] * bs + slot % bs)
        prefill_chunks = []
        sample_rows = list(range(len(decodes)))
        for c in prefills:
            table = c.seq.block_table
            row = len(ids)
            end = c.start + c.num_new_tokens
            ids.extend(c.seq.token_slice(c.start, end))
            positions.extend(range(c.start, end))
            first = _slot(c)
            slots.extend(table[s // bs] * bs + s % bs for s in range(first, first + end - c.start))
            prefill_chunks.append(self._prefill_chunk(c, row))
            if c.needs_sample:
                sample_rows.append(row + c.num_new_tokens - 1)
        kernel = self.decode_kernel is not None and bool(decodes)
        meta = AttentionMetadata(
            slot_mapping=self._tensor(slots),
            decodes=self._decode_groups(decodes) if decodes and not kernel else [],
            prefills=prefill_chunks,
            workspace=self.workspace,
            kernel_decodes=self._kernel_decodes(decodes) if kernel else None,
        )
        ordered = decodes + [c for c in prefills if c.needs_sample]
        return self._tensor(ids), self._tensor(positions), meta, sample_rows, ordered

    @torch.inference_mode()
    def forward(self, chunks: Seq[ScheduledChunk]
                ) -> tuple[torch.Tensor, list[int], list[ScheduledChunk]]:
        """Run the model over one step: hidden states, the rows to sample, their chunks."""
        input_ids, positions, meta, sample_rows, ordered = self.prepare(chunks)
        return self.model(input_ids, positions, meta), sample_rows, ordered

    @torch.inference_mode()
    def execute(self, chunks: Seq[ScheduledChunk]) -> tuple[torch.Tensor, list[ScheduledChunk]]:
        """Run one step; logits [N, vocab] (float32) for the N chunks that need a sample."""
        hidden, sample_rows, ordered = self.forward(chunks)
        if not sample_rows:
            return hidden.new_empty((0, self.model.config.vocab_size), dtype=torch.float32), []
        logits = self.model.compute_logits(hidden[self._tensor(sample_rows)])
        return logits, ordered


def _slot(c: ScheduledChunk) -> int:
    """The cache slot of the chunk's first token."""
    return c.start - c.seq.num_dropped_tokens


def _score_window(c: ScheduledChunk) -> ScoreWindow | None:
    """The chunk's rows in SnapKV's observation window, when its sequence will be compressed."""
    seq = c.seq
    if not seq.snapkv_pending:
        return None
    num_prompt = seq.num_prompt_tokens
    if seq.kv_compression.snapkv_kept(num_prompt) >= num_prompt:
        return None  # within budget: nothing will be pruned
    num_candidates = num_prompt - seq.kv_compression.window
    first, end = max(c.start, num_candidates), min(c.start + c.num_new_tokens, num_prompt)
    if first >= end:
        return None
    return ScoreWindow(first - c.start, num_candidates)
