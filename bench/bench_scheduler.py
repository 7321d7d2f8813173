"""Pure scheduling overhead per engine step: Scheduler + BlockManager, no model.

    .venv/bin/python -m bench.bench_scheduler [--seqs 256] [--block-size 16] [--steps 300]

256 requests of mixed prompt lengths (64..1024 tokens, half of them sharing a 512-token prefix)
are admitted under a 8192-token budget, then all decode together. A constant fake token stands
in for the model. Prints the time of `schedule()` and `postprocess()` per step for the prefill
phase and for the steady decode phase, and per scheduled sequence. Then the prefix cache under
pressure, which that run never reaches: --churn one-shot prompts (three priority classes, half
sharing a prefix) through a BlockManager a tenth of their size, each allocated, computed and
freed, so that every new block evicts a cached one; prints the time per allocated block.
Prints, never asserts.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from pdserve.runtime.engine.block_manager import BlockManager
from pdserve.runtime.engine.sampling_params import SamplingParams
from pdserve.runtime.engine.scheduler import Scheduler
from pdserve.runtime.engine.sequence import Sequence


def build(num_seqs: int, block_size: int, max_tokens: int) -> Scheduler:
    rng = random.Random(0)
    shared = [rng.randrange(1, 32000) for _ in range(512)]
    max_model_len = 1024 + max_tokens
    num_blocks = num_seqs * (-(-max_model_len // block_size))
    scheduler = Scheduler(
        BlockManager(num_blocks, block_size),
        max_num_seqs=num_seqs,
        max_num_batched_tokens=8192,
        max_model_len=max_model_len,
    )
    for index in range(num_seqs):
        length = rng.randint(64, 1024)
        prefix = shared[: min(length - 1, 512)] if index % 2 else []
        tokens = prefix + [rng.randrange(1, 32000) for _ in range(length - len(prefix))]
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        scheduler.add(Sequence(f"r{index}", tokens, params))
    return scheduler


def summarize(label: str, samples: list[tuple[float, float, int]]) -> None:
    if not samples:
        return
    sched_us = [s * 1e6 for s, _, _ in samples]
    post_us = [p * 1e6 for _, p, _ in samples]
    per_seq = [(s + p) * 1e6 / n for s, p, n in samples if n]
    print(
        f"{label:8s} steps={len(samples):4d}  schedule p50={statistics.median(sched_us):8.1f} us"
        f"  postprocess p50={statistics.median(post_us):8.1f} us"
        f"  total p99={sorted(a + b for a, b in zip(sched_us, post_us, strict=True))[-1]:8.1f} us"
        f"  per seq p50={statistics.median(per_seq):6.2f} us"
    )


def bench_eviction_churn(num_prompts: int, block_size: int) -> None:
    rng = random.Random(1)
    shared = [rng.randrange(1, 32000) for _ in range(256)]
    prompts = []
    for index in range(num_prompts):
        length = rng.randint(64, 512)
        prefix = shared[: min(length - 1, 256)] if index % 2 else []
        tokens = prefix + [rng.randrange(1, 32000) for _ in range(length - len(prefix))]
        prompts.append((tokens, rng.randrange(3)))
    total_blocks = sum(-(-len(tokens) // block_size) for tokens, _ in prompts)
    bm = BlockManager(max(total_blocks // 10, 64), block_size)
    allocated = 0
    start = time.perf_counter()
    for index, (tokens, priority) in enumerate(prompts):
        seq = Sequence(f"c{index}", tokens, priority=priority)
        bm.allocate(seq)
        num_new = seq.num_tokens - seq.num_computed_tokens
        assert bm.ensure_slots(seq, num_new)
        allocated += len(seq.block_table) - seq.num_computed_tokens // block_size
        seq.num_computed_tokens = seq.num_tokens
        bm.commit_computed(seq)
        bm.free(seq)
    elapsed = time.perf_counter() - start
    print(
        f"churn    {num_prompts} prompts through {bm.num_blocks} blocks: {allocated} blocks "
        f"allocated, prefix-cache hit rate {bm.prefix_hits / max(bm.prefix_queries, 1):.2f}, "
        f"{elapsed * 1e6 / max(allocated, 1):6.2f} us per allocated block (hashing included)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--churn", type=int, default=20000)
    args = parser.parse_args()
    scheduler = build(args.seqs, args.block_size, max_tokens=args.steps)
    prefill: list[tuple[float, float, int]] = []
    decode: list[tuple[float, float, int]] = []
    while scheduler.has_unfinished():
        start = time.perf_counter()
        output = scheduler.schedule()
        scheduled = time.perf_counter()
        sampled = {item.seq.request_id: 7 for item in output.scheduled if item.needs_sample}
        before_post = time.perf_counter()
        scheduler.postprocess(output, sampled)
        end = time.perf_counter()
        is_decode = all(not item.is_prefill for item in output.scheduled)
        sample = (scheduled - start, end - before_post, len(output.scheduled))
        (decode if is_decode else prefill).append(sample)
    bm = scheduler.block_manager
    print(
        f"{args.seqs} sequences, block size {args.block_size}, {bm.num_blocks} blocks, "
        f"prefix-cache hit rate {bm.prefix_hits / max(bm.prefix_queries, 1):.2f}"
    )
    summarize("prefill", prefill)
    summarize("decode", decode)
    bench_eviction_churn(args.churn, args.block_size)


if __name__ == "__main__":
    main()
