"""Continuous batching with chunked prefill, priorities and preemption (pure Python).

Each engine step is `schedule() -> run the model -> postprocess()`:

1. running decodes first, one token each, most urgent first (urgency = smaller priority, then
   earlier arrival), so a long prompt never stalls them;
2. then prefill chunks under what is left of the per-step token budget
   (`max_num_batched_tokens`), in urgency order across running requests still prefilling and
   waiting requests, admitted while `max_num_seqs` and the KV blocks allow (head of line: a
   waiting request that does not fit stops admission, less urgent ones do not overtake it).

When a running request needs a KV block and none is free, the least urgent running request is
preempted: its blocks are freed and it goes back to waiting, to be recomputed later over
prompt + output so far (full blocks it had computed usually come back from the prefix cache).
A waiting request with a strictly smaller priority number may likewise preempt the least urgent
running request to get a sequence slot or blocks. A request that alone needs more blocks than
the whole cache holds finishes with "length" instead of preempting itself forever.

`postprocess` advances `num_computed_tokens`, appends the sampled token for every request whose
chunk reached the end of its known tokens, and finishes requests on EOS / stop_token_ids
("stop"), max_tokens or max_model_len ("length"). Always call it after `schedule()`, even when
nothing ran: it also returns the requests that `schedule()` finished.
A request with `retain_kv_on_finish` (prefill-only, disaggregated) keeps its blocks after
finishing until `release(request_id)`.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from pdserve.runtime.engine.block_manager import BlockManager
from pdserve.runtime.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSeq:
    """Compute tokens [start, start + num_new_tokens) of `seq` this step."""

    seq: Sequence
    num_new_tokens: int
    start: int = field(init=False)
    needs_sample: bool = field(init=False)  # the chunk ends at the last known token
    is_prefill: bool = field(init=False)  # not a one-token decode of the last known token

    def __post_init__(self) -> None:
        # Fixed at scheduling time: postprocess() appends tokens to the sequence afterwards.
        self.start = self.seq.num_computed_tokens
        self.needs_sample = self.end == self.seq.num_tokens
        self.is_prefill = self.start < self.seq.num_tokens - 1

    @property
    def end(self) -> int:
        return self.start + self.num_new_tokens

    @property
    def token_ids(self) -> list[int]:
        return self.seq.token_slice(self.start, self.end)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)  # finished while scheduling

    @property
    def num_batched_tokens(self) -> int:
        return sum(item.num_new_tokens for item in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass
class _StepPlan:
    budget: int
    scheduled: dict[str, ScheduledSeq] = field(default_factory=dict)
    output: SchedulerOutput = field(default_factory=SchedulerOutput)

    def add(self, seq: Sequence, num_new_tokens: int) -> None:
        self.scheduled[seq.request_id] = ScheduledSeq(seq, num_new_tokens)
        self.budget -= num_new_tokens


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        eos_token_ids: Iterable[int] = (),
    ):
        for name, value in (
            ("max_num_seqs", max_num_seqs),
            ("max_num_batched_tokens", max_num_batched_tokens),
            ("max_model_len", max_model_len),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.waiting: list[Sequence] = []  # kept sorted by urgency
        self.running: list[Sequence] = []
        self.retained: dict[str, Sequence] = {}  # finished, KV kept until release()
        self._unfinished: dict[str, Sequence] = {}  # waiting + running, by request id

    # ---- queue state --------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a request; ValueError with a clear message when it can never run.

        A sequence may arrive holding blocks (KV transferred in via the block manager's
        reservation): it then skips the prefix match and computes only its remaining tokens.
        """
        num_prompt = seq.num_prompt_tokens
        if num_prompt == 0:
            raise ValueError("the prompt is empty: at least one token is needed")
        if num_prompt > self.max_model_len:
            raise ValueError(
                f"the prompt has {num_prompt} tokens but the maximum context length is "
                f"{self.max_model_len} tokens"
            )
        needed = self.block_manager.num_blocks_for(num_prompt)
        if needed > self.block_manager.num_blocks:
            raise ValueError(
                f"the prompt needs {needed} KV blocks of {self.block_manager.block_size} tokens "
                f"but the KV cache has only {self.block_manager.num_blocks} blocks"
            )
        if seq.request_id in self._unfinished or seq.request_id in self.retained:
            raise ValueError(f"request id {seq.request_id!r} is already in use")
        seq.params.validate()
        self._unfinished[seq.request_id] = seq
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting, seq, key=lambda s: s.urgency)

    def abort(self, request_id: str) -> Sequence | None:
        """Finish a request with "abort" wherever it is and free its blocks."""
        if request_id in self._unfinished:
            return self.finish(request_id, "abort")
        seq = self.retained.get(request_id)
        if seq is not None:  # a finished prefill-only request still holding its KV
            self.release(request_id)
            return seq
        seq = self.block_manager.cancel_reservation(request_id)
        if seq is not None:
            seq.status = SequenceStatus.FINISHED
            seq.finish_reason = "abort"
        return seq

    def finish(self, request_id: str, reason: str) -> Sequence | None:
        """Finish a waiting or running request for a reason decided outside (e.g. stop strings)."""
        seq = self._unfinished.get(request_id)
        if seq is None:
            return None
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self._finish(seq, reason)
        return seq

    def release(self, request_id: str) -> bool:
        """Free the blocks a finished prefill-only request kept for its KV transfer."""
        seq = self.retained.pop(request_id, None)
        if seq is None:
            return False
        self.block_manager.free(seq)
        return True

    # ---- one step -------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        plan = _StepPlan(budget=self.max_num_batched_tokens)
        self.running.sort(key=lambda s: s.urgency)
        for seq in list(self.running):  # decodes
            if plan.budget <= 0:
                break
            running = seq.status is SequenceStatus.RUNNING
            if (
                running
                and seq.num_computed_tokens == seq.num_tokens - 1
                and self._make_room(seq, 1, plan)
            ):
                plan.add(seq, 1)
        # Prefill chunks: admitted requests still prefilling and waiting ones, most urgent first.
        prefilling = deque(s for s in self.running if s.request_id not in plan.scheduled)
        admitting = True
        while plan.budget > 0:
            head = self.waiting[0] if admitting and self.waiting else None
            if head is not None and (not prefilling or head.urgency < prefilling[0].urgency):
                admitting = self._admit_next(head, plan)
                continue
            if not prefilling:
                break
            seq = prefilling.popleft()
            if seq.status is SequenceStatus.RUNNING and seq.request_id not in plan.scheduled:
                num_new = min(seq.num_tokens - seq.num_computed_tokens, plan.budget)
                if self._make_room(seq, num_new, plan):
                    plan.add(seq, num_new)
        plan.output.scheduled = list(plan.scheduled.values())
        return plan.output

    def postprocess(self, output: SchedulerOutput, sampled: dict[str, int]) -> list[Sequence]:
        """Apply the step's results; returns the requests finished by this step."""
        finished = list(output.finished)
        for item in output.scheduled:
            seq = item.seq
            if seq.status is not SequenceStatus.RUNNING:
                continue  # aborted or finished since schedule()
            seq.num_computed_tokens = item.end
            self.block_manager.commit_computed(seq)
            if not item.needs_sample:
                continue
            if seq.request_id not in sampled:
                raise KeyError(f"no sampled token for request {seq.request_id}")
            token = sampled[seq.request_id]
            seq.output_token_ids.append(token)
            reason = self._stop_reason(seq, token)
            if reason is not None:
                self.running.remove(seq)
                self._finish(seq, reason)
                finished.append(seq)
        return finished

    # ---- internals ------------------------------------------------------------------------

    def _admit_next(self, seq: Sequence, plan: _StepPlan) -> bool:
        """Admit `seq`, the most urgent waiting request, or make room for it.

        False when it has to wait: then no less urgent request may overtake it this step.
        """
        if seq in plan.output.preempted:
            return False  # not back in the same step it was pushed out of
        if len(self.running) >= self.max_num_seqs:
            return self._evict_for_admission(seq, plan)
        bm = self.block_manager
        if seq.block_table:  # prompt KV transferred in
            num_new = min(seq.num_tokens - seq.num_computed_tokens, plan.budget)
            fits = bm.ensure_slots(seq, num_new)
        else:
            matched = bm.num_matched_tokens(seq)
            # A chunk never needs more blocks than the cache has, or it could never fit.
            capacity = bm.num_blocks * bm.block_size - matched
            num_new = min(seq.num_tokens - matched, plan.budget, capacity)
            fits = num_new > 0 and bm.can_allocate(seq, num_new)
            if fits:
                bm.allocate(seq)
                fits = bm.ensure_slots(seq, num_new)
                assert fits, "can_allocate() promised room"
        if not fits:
            if self._evict_for_admission(seq, plan):
                return True
            if bm.num_blocks_for(seq.num_tokens) > bm.num_blocks:
                self.waiting.pop(0)  # its context outgrew the whole cache (after preemption)
                self._finish(seq, "length")
                plan.output.finished.append(seq)
                return True
            return False
        self.waiting.pop(0)
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        plan.add(seq, num_new)
        return True

    def _make_room(self, seq: Sequence, num_new: int, plan: _StepPlan) -> bool:
        """Get blocks for `num_new` tokens of running `seq`, evicting less urgent holders.

        False when `seq` itself was preempted or finished instead.
        """
        bm = self.block_manager
        while not bm.ensure_slots(seq, num_new):
            victim = max([*self.running, *self._waiting_holders()], key=lambda s: s.urgency)
            if victim is not seq:
                self._evict(victim, plan)
                continue
            if bm.num_blocks_for(seq.num_kv_tokens + num_new) > bm.num_blocks:
                self.running.remove(seq)
                self._finish(seq, "length")  # alone it would not fit: never preempt it forever
                plan.output.finished.append(seq)
            else:  # blocks held outside running requests (transfers): wait for them
                self._preempt(seq, plan)
            return False
        return True

    def _evict_for_admission(self, seq: Sequence, plan: _StepPlan) -> bool:
        """Free the blocks (or the slot) of the least urgent holder less urgent than `seq`.

        Running requests only yield to a strictly smaller priority number, so equal priorities
        never thrash; waiting requests holding transferred KV stand behind `seq` in the queue.
        """
        candidates = [s for s in self.running if s.priority > seq.priority]
        if len(self.running) < self.max_num_seqs:
            candidates += [s for s in self._waiting_holders() if s is not seq]
        if not candidates:
            return False
        self._evict(max(candidates, key=lambda s: s.urgency), plan)
        return True

    def _waiting_holders(self) -> list[Sequence]:
        """Waiting requests that hold blocks: their prompt KV was transferred in."""
        return [s for s in self.waiting if s.block_table]

    def _evict(self, victim: Sequence, plan: _StepPlan) -> None:
        if victim.status is SequenceStatus.RUNNING:
            self._preempt(victim, plan)
            return
        self.block_manager.free(victim)  # it will prefill locally instead
        victim.num_preemptions += 1
        plan.output.preempted.append(victim)

    def _preempt(self, seq: Sequence, plan: _StepPlan) -> None:
        self.running.remove(seq)
        item = plan.scheduled.pop(seq.request_id, None)
        if item is not None:
            plan.budget += item.num_new_tokens
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        bisect.insort(self.waiting, seq, key=lambda s: s.urgency)
        plan.output.preempted.append(seq)

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        params = seq.params
        if token in params.stop_token_ids or (
            not params.ignore_eos and token in self.eos_token_ids
        ):
            return "stop"
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str) -> None:
        del self._unfinished[seq.request_id]
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if seq.retain_kv_on_finish and seq.block_table and reason in ("stop", "length"):
            self.retained[seq.request_id] = seq
        else:
            self.block_manager.free(seq)
