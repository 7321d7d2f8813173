"""Turning one scheduler step into forward passes of fixed shapes (engine/buckets.py), for a
device that compiles a graph per shape (XLA).

A step runs as one decode batch (rows and block-table width rounded up to buckets) and one pass
per prefill chunk (tokens and width rounded up); padding rows and tokens write the scratch
block of the KV cache. Each pass computes the logits of its sampled rows inside its graph,
then `sync` runs it and the logits come to the host, where the sampler runs. `warm_up`
compiles every bucket before the engine serves, so serving compiles nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from pdserve.runtime.engine.buckets import CompiledDevice, round_up
from pdserve.runtime.engine.model_runner import ScheduledChunk
from pdserve.runtime.models.bucketed_attention import BucketedBatch
from pdserve.runtime.models.llama import CausalLM

log = logging.getLogger(__name__)


@dataclass
class _Pass:
    """One padded forward pass, as host lists."""

    ids: list[int]
    positions: list[int]
    slots: list[int]
    tables: list[list[int]]
    sample_index: list[int]


class BucketedRunner:
    def __init__(self, model: CausalLM, block_size: int, device: torch.device,
                 compiled: CompiledDevice, scratch_block: int):
        self.model = model
        self.block_size = block_size
        self.device = device
        self.compiled = compiled
        self.buckets = compiled.buckets
        self.scratch_block = scratch_block

    def close(self) -> None:
        """Nothing to release."""

    def _scratch_slot(self, i: int) -> int:
        return self.scratch_block * self.block_size + i % self.block_size

    def _decode_pass(self, decodes: list[ScheduledChunk]) -> _Pass:
        bs = self.block_size
        rows = round_up(len(decodes), self.buckets.rows)
        width = round_up(-(-(max(c.start for c in decodes) + 1) // bs), self.buckets.widths)
        step = _Pass([], [], [], [], list(range(rows)))
        for c in decodes:
            step.ids.append(c.seq.token_at(c.start))
            step.positions.append(c.start)
            step.slots.append(c.seq.block_table[c.start // bs] * bs + c.start % bs)
            table = c.seq.block_table[:width]
            step.tables.append(table + [self.scratch_block] * (width - len(table)))
        for i in range(len(decodes), rows):
            self._pad(step, i, width)
        return step

    def _prefill_pass(self, c: ScheduledChunk) -> _Pass:
        bs = self.block_size
        end = c.start + c.num_new_tokens
        tokens = round_up(c.num_new_tokens, self.buckets.tokens)
        width = round_up(-(-end // bs), self.buckets.widths)
        table = c.seq.block_table[:width]
        step = _Pass(c.seq.token_slice(c.start, end), list(range(c.start, end)),
                     [table[p // bs] * bs + p % bs for p in range(c.start, end)],
                     [table + [self.scratch_block] * (width - len(table))],
                     [c.num_new_tokens - 1])
        for i in range(c.num_new_tokens, tokens):
            step.ids.append(0)
            step.positions.append(0)
            step.slots.append(self._scratch_slot(i))
        return step

    def _pad(self, step: _Pass, i: int, width: int) -> None:
        """A padding row: token 0 at position 0 of the scratch block."""
        step.ids.append(0)
        step.positions.append(0)
        step.slots.append(self._scratch_slot(i))
        step.tables.append([self.scratch_block] * width)

    def _tensor(self, values: list[int] | list[list[int]]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(self.device)

    @torch.no_grad()
    def _run(self, step: _Pass) -> torch.Tensor:
        """Logits [len(sample_index), vocab] of one pass, on the host."""
        rows = len(step.tables)
        positions = self._tensor(step.positions)
        batch = BucketedBatch(self._tensor(step.slots), self._tensor(step.tables),
                              positions.view(rows, -1), self._tensor(step.sample_index))
        with self.compiled.lock:
            hidden = self.model(self._tensor(step.ids), positions, batch)
            logits = self.model.compute_logits(hidden.index_select(0, batch.sample_index))
            self.compiled.sync()
        return logits.cpu()

    def execute(self, chunks: Seq[ScheduledChunk]) -> tuple[torch.Tensor, list[ScheduledChunk]]:
        """Run one step; logits [N, vocab] (float32, host) for the N chunks that need a
        sample, decodes first (as ModelRunner orders them)."""
        decodes = [c for c in chunks if c.num_new_tokens == 1 and c.needs_sample]
        prefills = [c for c in chunks if not (c.num_new_tokens == 1 and c.needs_sample)]
        parts, ordered = [], []
        if decodes:
            parts.append(self._run(self._decode_pass(decodes))[:len(decodes)])
            ordered += decodes
        for c in prefills:
            logits = self._run(self._prefill_pass(c))
            if c.needs_sample:
                parts.append(logits)
                ordered.append(c)
        if not parts:
            return torch.empty((0, self.model.config.vocab_size), dtype=torch.float32), []
        return torch.cat(parts), ordered

    def warm_up(self) -> float:
        """Run every bucket once on padding only (the scratch block): returns the seconds."""
        started = time.perf_counter()
        for width in self.buckets.widths:
            for rows in self.buckets.rows:
                step = _Pass([], [], [], [], list(range(rows)))
                for i in range(rows):
                    self._pad(step, i, width)
                self._run(step)
            for tokens in self.buckets.tokens:
                step = _Pass([], [], [], [[self.scratch_block] * width], [0])
                for i in range(tokens):
                    step.ids.append(0)
                    step.positions.append(0)
                    step.slots.append(self._scratch_slot(i))
                self._run(step)
        return time.perf_counter() - started
