"""The padded shapes a compiled-graph device (XLA) runs, so that it compiles a bounded set of
graphs (pure: no torch).

A step runs as one decode batch of `rows` sequences attending over `width` blocks each, and one
pass per prefill chunk of `tokens` tokens over `width` blocks. Each size is rounded up to the
next power of two, capped at the engine's limit (which is itself a bucket): the set of graphs
is rows x widths for decodes plus tokens x widths for prefill chunks, all compiled at warm-up.
Block transfers of the KV handoff are padded to `blocks` the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

MIN_PREFILL_TOKENS = 16


def powers_of_two(limit: int, start: int = 1) -> tuple[int, ...]:
    """start, 2*start, ... below `limit`, then `limit` itself."""
    sizes = []
    size = start
    while size < limit:
        sizes.append(size)
        size *= 2
    sizes.append(limit)
    return tuple(sizes)


def round_up(value: int, sizes: tuple[int, ...]) -> int:
    """The smallest bucket holding `value`."""
    for size in sizes:
        if value <= size:
            return size
    raise ValueError(f"{value} exceeds the largest bucket {sizes[-1]}")


@dataclass(frozen=True)
class Buckets:
    rows: tuple[int, ...]  # decode batch sizes
    tokens: tuple[int, ...]  # prefill chunk lengths
    widths: tuple[int, ...]  # block-table widths
    blocks: tuple[int, ...]  # blocks per KV transfer piece

    @classmethod
    def for_engine(cls, max_num_seqs: int, max_num_batched_tokens: int, max_model_len: int,
                   block_size: int) -> Buckets:
        max_blocks = -(-max_model_len // block_size)
        return cls(rows=powers_of_two(max_num_seqs),
                   tokens=powers_of_two(max_num_batched_tokens,
                                        min(MIN_PREFILL_TOKENS, max_num_batched_tokens)),
                   widths=powers_of_two(max_blocks),
                   blocks=powers_of_two(max_blocks))

    @property
    def num_step_graphs(self) -> int:
        """Graphs a warmed-up engine holds for its steps."""
        return (len(self.rows) + len(self.tokens)) * len(self.widths)


@dataclass(frozen=True)
class CompiledDevice:
    """What the engine does differently on a device that compiles graphs: shapes padded to
    `buckets`, each graph cut and run by `sync`, and every trace that mutates or reads the
    KV cache under `lock` through its sync (a lazy tensor updated from two threads would lose
    one of the updates)."""

    buckets: Buckets
    sync: Callable[[], None]
    describe_compiles: Callable[[], str] = lambda: ""  # e.g. "36 graphs compiled in 73.2s"
    lock: threading.Lock = field(default_factory=threading.Lock)
