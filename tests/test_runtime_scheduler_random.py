"""Randomized property test of the scheduler and block manager together."""

from __future__ import annotations

import random

import pytest
from runtime_fake_model import EOS, VOCAB, FakeModel, next_token

from pdserve.runtime.engine.block_hashes import compute_block_hashes
from pdserve.runtime.engine.block_manager import BlockManager
from pdserve.runtime.engine.sampling_params import SamplingParams
from pdserve.runtime.engine.scheduler import Scheduler
from pdserve.runtime.engine.sequence import Sequence


class RandomWorkload:
    """Random adds, aborts, stop-string finishes, KV transfers (some never completing), steps."""

    def __init__(self, seed: int):
        self.rng = rng = random.Random(seed)
        self.bm = BlockManager(
            num_blocks=rng.choice([4, 8, 16, 48]),
            block_size=rng.choice([1, 2, 4]),
            enable_prefix_caching=rng.random() < 0.8,
        )
        self.sched = Scheduler(
            self.bm,
            max_num_seqs=rng.randint(1, 6),
            max_num_batched_tokens=rng.randint(1, 24),
            max_model_len=rng.choice([8, 24, 64]),
            eos_token_ids=[EOS],
        )
        self.model = FakeModel(self.bm)
        self.prefixes = [[rng.randint(1, VOCAB - 1) for _ in range(40)] for _ in range(3)]
        self.next_id = 0
        self.now = 0.0
        self.failing: dict[str, float] = {}  # reserved transfers that fail, and when
        self.finished: dict[str, Sequence] = {}

    def new_seq(self, max_len: int) -> Sequence:
        rng = self.rng
        length = rng.randint(1, max_len)
        shared = rng.randint(0, length)
        tokens = rng.choice(self.prefixes)[:shared]
        tokens += [rng.randint(0, VOCAB - 1) for _ in range(length - len(tokens))]
        params = SamplingParams(max_tokens=rng.randint(1, 12))
        if rng.random() < 0.5:
            params.stop_token_ids = [rng.randint(1, VOCAB - 1) for _ in range(5)]
        self.next_id += 1
        seq = Sequence(f"r{self.next_id}", tokens, params, priority=rng.randint(0, 3))
        seq.retain_kv_on_finish = rng.random() < 0.1
        return seq

    def holders(self) -> list[list[int]]:
        seqs = [*self.sched.running, *self.sched.waiting, *self.sched.retained.values()]
        seqs += [r.seq for r in self.bm.reservations.values()]
        return [s.block_table for s in seqs]

    def transfer_in(self) -> None:
        """A decode worker receiving a prompt's KV: reserve, maybe write it and admit."""
        max_len = min(self.sched.max_model_len, self.bm.num_blocks * self.bm.block_size)
        seq = self.new_seq(max_len)
        seq.output_token_ids.append(next_token(seq.prompt_token_ids))
        if seq.num_tokens > self.sched.max_model_len:
            return
        reservation = self.bm.reserve(seq)
        if reservation is None:
            return
        if self.rng.random() < 0.3:  # a transfer that fails, now or after a few operations
            self.failing[seq.request_id] = self.now + self.rng.randint(0, 5)
            return
        size = self.bm.block_size
        for index, block_id in enumerate(seq.block_table):
            for offset in range(size):
                pos = index * size + offset
                if index >= reservation.num_cached_blocks and pos < seq.num_prompt_tokens:
                    self.model.slots[(block_id, offset)] = seq.prompt_token_ids[pos]
        self.bm.complete_reservation(seq.request_id)
        self.sched.add(seq)

    def step(self) -> None:
        output = self.sched.schedule()
        assert output.num_batched_tokens <= self.sched.max_num_batched_tokens
        assert self.sched.num_running <= self.sched.max_num_seqs
        ids = [item.seq.request_id for item in output.scheduled]
        assert len(ids) == len(set(ids))
        assert all(item.num_new_tokens > 0 for item in output.scheduled)
        done = self.sched.postprocess(output, self.model.run(output))
        self.finished.update((s.request_id, s) for s in done)

    def operate(self) -> None:
        rng, sched = self.rng, self.sched
        roll = rng.random()
        if roll < 0.2:
            seq = self.new_seq(sched.max_model_len + 4)
            try:
                sched.add(seq)
            except ValueError as error:
                assert "maximum context length" in str(error) or "KV cache has only" in str(error)
        elif roll < 0.27 and self.next_id:
            live = [s.request_id for s in (*sched.running, *sched.waiting)]
            if live and rng.random() < 0.7:
                aborted = sched.abort(rng.choice(live))
            else:  # finished, retained, reserved or unknown
                aborted = sched.abort(f"r{rng.randint(1, self.next_id)}")
            if aborted is not None:
                assert aborted.block_table == [] and aborted.is_finished
                self.finished.setdefault(aborted.request_id, aborted)
        elif roll < 0.3 and sched.running:
            stopped = sched.finish(rng.choice(sched.running).request_id, "stop")
            assert stopped is not None
            self.finished[stopped.request_id] = stopped
        elif roll < 0.36:
            self.transfer_in()
        elif roll < 0.4 and sched.retained:
            sched.release(rng.choice(list(sched.retained)))
        else:
            self.step()
        self.now += 1
        self.cancel_failed(self.now)
        self.bm.check_consistency(self.holders())

    def cancel_failed(self, now: float) -> None:
        """What the decode worker's transfer table does when a transfer fails."""
        for request_id, at in list(self.failing.items()):
            if at <= now:
                del self.failing[request_id]
                self.bm.cancel_reservation(request_id)

    def drain(self) -> None:
        self.cancel_failed(float("inf"))
        for _ in range(20_000):
            for request_id in list(self.sched.retained):  # their KV transfers are done
                self.sched.release(request_id)
            if not self.sched.has_unfinished():
                break
            self.step()
            self.bm.check_consistency(self.holders())
        assert not self.sched.has_unfinished(), "livelock: requests never finish"
        self.bm.check_consistency([])
        assert self.bm.num_free_blocks == self.bm.num_blocks  # free or cached-evictable


@pytest.mark.parametrize("seed", range(12))
def test_random_operations_keep_invariants_and_outputs(seed: int) -> None:
    workload = RandomWorkload(seed)
    for _ in range(1500):
        workload.operate()
    workload.drain()
    assert workload.finished
    for seq in workload.finished.values():
        assert seq.finish_reason in ("stop", "length", "abort")
        # Chunking, preemption and prefix reuse never change what a request generates.
        for index, token in enumerate(seq.output_token_ids[1:], start=1):
            context = seq.prompt_token_ids + seq.output_token_ids[:index]
            assert token == next_token(context), seq.request_id
        assert seq.num_tokens <= workload.sched.max_model_len + 1
        # The per-sequence hash cache agrees with hashing the tokens from scratch.
        expected = compute_block_hashes(seq.token_ids, workload.bm.block_size)
        assert seq.block_hashes == expected[: len(seq.block_hashes)]
