"""A fake model for pure scheduler tests: it checks the KV bookkeeping, not the math."""

from __future__ import annotations

from pdserve.runtime.engine.block_manager import BlockManager
from pdserve.runtime.engine.scheduler import SchedulerOutput

VOCAB = 50
EOS = 0


class FakeModel:
    """A model whose 'KV cache' stores token ids in the slots the block tables point at.

    The next token is a function of the whole context read back through the block table, so a
    wrong block table, a stale prefix-cache block or a lost recompute changes the output.
    """

    def __init__(self, bm: BlockManager):
        self.block_size = bm.block_size
        self.slots: dict[tuple[int, int], int] = {}

    def run(self, output: SchedulerOutput) -> dict[str, int]:
        sampled = {}
        for item in output.scheduled:
            seq = item.seq
            for pos, token in zip(range(item.start, item.end), item.token_ids, strict=True):
                block = seq.block_table[pos // self.block_size]
                self.slots[(block, pos % self.block_size)] = token
            if item.needs_sample:
                context = [
                    self.slots[(seq.block_table[pos // self.block_size], pos % self.block_size)]
                    for pos in range(item.end)
                ]
                assert context == seq.token_ids, "KV cache content differs from the tokens"
                sampled[seq.request_id] = next_token(context)
        return sampled


def next_token(context: list[int]) -> int:
    return 1 + (sum(context) * 31 + len(context) * 7) % (VOCAB - 1)  # never EOS
