"""One request's token state as the scheduler and block manager see it (pure Python)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import Enum

from pdserve.runtime.compression.config import NO_COMPRESSION, KVCompression
from pdserve.runtime.engine.sampling_params import SamplingParams

# Breaks ties between requests with equal priority and equal arrival time: first added wins.
_admission_counter = itertools.count()


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """A request in the engine.

    `num_computed_tokens` counts the leading tokens of `token_ids` whose KV is in the cache; the
    next model step computes from there. `block_hashes` caches the chained hashes of the leading
    full blocks of `token_ids` (filled lazily by the block manager; tokens are only ever
    appended, so it stays valid across preemption); the first `num_committed_blocks` blocks of
    `block_table` are known to the prefix cache.
    A preempted request keeps its output: its next prefill covers prompt + output so far.

    KV compression (see compression/config.py) prunes tokens' KV: the first
    `num_dropped_tokens` computed tokens hold no slot, so token position p lives in slot
    p - num_dropped_tokens of `block_table` (positions still drive RoPE). A sequence with
    dropped tokens never registers blocks in the prefix cache. SnapKV runs once per request:
    after a recompute (preemption) the request stays uncompressed.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    priority: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    num_committed_blocks: int = 0
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    num_preemptions: int = 0
    # Prefill-only (disaggregated) requests keep their KV blocks after finishing until released.
    retain_kv_on_finish: bool = False
    kv_compression: KVCompression = NO_COMPRESSION
    num_dropped_tokens: int = 0
    snapkv_done: bool = False
    order: int = field(default_factory=lambda: next(_admission_counter), init=False)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_kv_tokens(self) -> int:
        """Computed tokens whose KV is held (slots in use)."""
        return self.num_computed_tokens - self.num_dropped_tokens

    @property
    def snapkv_pending(self) -> bool:
        return self.kv_compression.method == "snapkv" and not self.snapkv_done

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    @property
    def urgency(self) -> tuple[int, float, int]:
        """Sort key: smaller priority first, then earlier arrival, then first added."""
        return (self.priority, self.arrival_time, self.order)

    def token_at(self, index: int) -> int:
        """Token `index` of prompt + output without building the concatenated list."""
        num_prompt = len(self.prompt_token_ids)
        if index < num_prompt:
            return self.prompt_token_ids[index]
        return self.output_token_ids[index - num_prompt]

    def token_slice(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + output, cheap when the range lies in one part."""
        num_prompt = len(self.prompt_token_ids)
        if end <= num_prompt:
            return self.prompt_token_ids[start:end]
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt : end - num_prompt]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - num_prompt]
