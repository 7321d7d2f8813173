"""Turning one scheduler step into a model forward pass.

From the scheduled chunks it builds the flat inputs (token ids, positions, cache slots; decodes
first, then prefill chunks), the attention metadata (padded block tables for the decodes, context
blocks for prefill chunks that continue a cached prefix), runs the model and returns logits only
for the sequences whose chunk reached their last known token (the ones that need a sample).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Protocol

import torch

from pdserve.runtime.attention import AttentionMetadata, GatherWorkspace, PrefillChunk
from pdserve.runtime.models.llama import CausalLM
from pdserve.runtime.sequence import Sequence


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

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(self.device, non_blocking=True)

    def prepare(
        self, chunks: Seq[ScheduledChunk]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int], list[ScheduledChunk]]:
        """Flat inputs, metadata, rows to sample and the chunks in row order (decodes first)."""
        bs = self.block_size
        decodes = [c for c in chunks if c.num_new_tokens == 1 and c.needs_sample]
        prefills = [c for c in chunks if not (c.num_new_tokens == 1 and c.needs_sample)]
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        for c in decodes:
            table = c.seq.block_table
            ids.append(c.seq.token_at(c.start))
            positions.append(c.start)
            slots.append(table[c.start // bs] * bs + c.start % bs)
        decode_blocks = decode_mask = None
        if decodes:
            width = max(len(c.seq.block_table) for c in decodes)
            tables = [c.seq.block_table + [0] * (width - len(c.seq.block_table)) for c in decodes]
            decode_blocks = self._tensor([b for table in tables for b in table]).view(-1, width)
            lengths = self._tensor([c.start + 1 for c in decodes])
            keys = torch.arange(width * bs, device=self.device)
            decode_mask = (keys[None, :] < lengths[:, None])[:, None, None, :]
        prefill_chunks = []
        sample_rows = list(range(len(decodes)))
        for c in prefills:
            table = c.seq.block_table
            row = len(ids)
            end = c.start + c.num_new_tokens
            ids.extend(c.seq.token_slice(c.start, end))
            span = range(c.start, end)
            positions.extend(span)
            slots.extend(table[p // bs] * bs + p % bs for p in span)
            context = None
            if c.start > 0:
                context = self._tensor(table[: -(-end // bs)])
            prefill_chunks.append(PrefillChunk(row, row + c.num_new_tokens, c.start, context))
            if c.needs_sample:
                sample_rows.append(row + c.num_new_tokens - 1)
        meta = AttentionMetadata(
            slot_mapping=self._tensor(slots),
            num_decodes=len(decodes),
            decode_blocks=decode_blocks,
            decode_mask=decode_mask,
            prefills=prefill_chunks,
            workspace=self.workspace,
        )
        ordered = decodes + [c for c in prefills if c.needs_sample]
        return self._tensor(ids), self._tensor(positions), meta, sample_rows, ordered

    @torch.inference_mode()
    def execute(self, chunks: Seq[ScheduledChunk]) -> tuple[torch.Tensor, list[ScheduledChunk]]:
        """Run one step; logits [N, vocab] (float32) for the N chunks that need a sample."""
        input_ids, positions, meta, sample_rows, ordered = self.prepare(chunks)
        hidden = self.model(input_ids, positions, meta)
        if not sample_rows:
            return hidden.new_empty((0, self.model.config.vocab_size), dtype=torch.float32), []
        logits = self.model.compute_logits(hidden[self._tensor(sample_rows)])
        return logits, ordered
