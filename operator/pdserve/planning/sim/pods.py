"""Simulated worker pods: a prefill pod (FIFO, batched by a token budget, prefix cache per
session) and a decode pod (continuous batching, KV reserved at admission).

A decode pod advances in "macro steps": between two changes of its batch every step costs the
same, so the simulation jumps straight to the next finishing sequence instead of ticking every
token. Counters and gauges mirror the worker's /metrics."""

from __future__ import annotations

import heapq
import math
from collections import deque

from pdserve.planning.perf import ReplicaPerf
from pdserve.planning.sim.traces import Request


class Pod:
    def __init__(self, pod_id: int, role: str, created: float, accelerators: int) -> None:
        self.id = pod_id
        self.name = f"{role}-{pod_id}"
        self.role = role
        self.state = "pending"  # pending -> starting -> ready -> draining -> gone
        self.created = created
        self.accelerators = accelerators
        self.drain_started = math.nan
        # /metrics counters
        self.prompt_tokens = 0.0
        self.requests = 0.0
        self.generation_tokens = 0.0

    def holds_accelerators(self) -> bool:
        return self.state in ("starting", "ready", "draining")

    def in_flight(self) -> int:
        raise NotImplementedError

    def gauges(self) -> tuple[float, float, float]:
        """(running, waiting, kv usage) as the worker exports them."""
        raise NotImplementedError


class PrefillPod(Pod):
    def __init__(self, pod_id: int, created: float, perf: ReplicaPerf) -> None:
        super().__init__(pod_id, "prefill", created, perf.accelerators_per_replica)
        self.perf = perf
        self.queue: deque[Request] = deque()
        self.queued_tokens = 0
        self.batch: list[Request] = []
        self.cache: dict[int, int] = {}  # session -> prompt tokens whose KV this pod keeps

    def new_tokens(self, request: Request) -> int:
        cached = min(self.cache.get(request.session, 0), request.shared_prefix)
        return request.prompt - cached

    def enqueue(self, request: Request) -> None:
        self.queue.append(request)
        self.queued_tokens += self.new_tokens(request)

    def take_batch(self) -> float:
        """Start the next batch; returns its duration (0 when there is nothing to do)."""
        if self.batch or not self.queue:
            return 0.0
        tokens, pairs = 0, 0.0
        while self.queue:
            new = self.new_tokens(self.queue[0])
            if self.batch and tokens + new > self.perf.max_batched_tokens:
                break
            request = self.queue.popleft()
            self.queued_tokens -= new
            self.batch.append(request)
            tokens += new
            pairs += new * (request.prompt - new / 2)
        self.prompt_tokens += tokens
        self.requests += len(self.batch)
        return self.perf.prefill_seconds(tokens, pairs)

    def finish_batch(self) -> list[Request]:
        done, self.batch = self.batch, []
        for request in done:
            if request.session >= 0:
                self.cache[request.session] = request.prompt
        return done

    def in_flight(self) -> int:
        return len(self.queue) + len(self.batch)

    def gauges(self) -> tuple[float, float, float]:
        return float(len(self.batch)), float(len(self.queue)), math.nan


class DecodePod(Pod):
    def __init__(self, pod_id: int, created: float, perf: ReplicaPerf) -> None:
        super().__init__(pod_id, "decode", created, perf.accelerators_per_replica)
        self.perf = perf
        self.kv_capacity = perf.kv_capacity_tokens()
        self.kv_reserved = 0
        self.running: dict[int, Request] = {}
        self.finish_heap: list[tuple[int, int]] = []  # (finish step, request id)
        self.join_offset: dict[int, int] = {}  # id -> context at join minus step at join
        self.waiting: deque[Request] = deque()
        self.steps = 0
        self.anchor = 0.0  # time at which `steps` steps were complete
        self.step_seconds = 0.0
        self.context_base = 0
        self.version = 0

    def sync(self, now: float) -> None:
        """Account for the whole steps completed since the anchor."""
        if not self.running:
            self.anchor = now
            return
        done = math.floor((now - self.anchor) / self.step_seconds + 1e-9)
        if done > 0:
            self.steps += done
            self.anchor += done * self.step_seconds
            self.generation_tokens += done * len(self.running)

    def _fits(self, request: Request) -> bool:
        return (len(self.running) < self.perf.max_num_seqs
                and self.kv_reserved + request.prompt + request.output <= self.kv_capacity)

    def admit(self, request: Request) -> None:
        self.waiting.append(request)
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        while self.waiting and (self._fits(self.waiting[0]) or not self.running):
            request = self.waiting.popleft()
            self.kv_reserved += request.prompt + request.output
            self.running[request.id] = request
            offset = request.prompt + 1 - self.steps
            self.join_offset[request.id] = offset
            self.context_base += offset
            heapq.heappush(self.finish_heap, (self.steps + request.output - 1, request.id))

    def pop_finished(self) -> list[Request]:
        done = []
        while self.finish_heap and self.finish_heap[0][0] <= self.steps:
            _, request_id = heapq.heappop(self.finish_heap)
            request = self.running.pop(request_id)
            self.kv_reserved -= request.prompt + request.output
            self.context_base -= self.join_offset.pop(request_id)
            done.append(request)
        self._admit_waiting()
        return done

    def next_event_time(self) -> float | None:
        """Recompute the step time for the current batch; when the next sequence finishes."""
        if not self.running:
            return None
        batch = len(self.running)
        self.step_seconds = self.perf.decode_step_seconds(
            batch, self.context_base + batch * self.steps)
        return self.anchor + (self.finish_heap[0][0] - self.steps) * self.step_seconds

    def abort_all(self) -> list[Request]:
        lost = list(self.running.values()) + list(self.waiting)
        self.running.clear()
        self.waiting.clear()
        self.finish_heap.clear()
        return lost

    def in_flight(self) -> int:
        return len(self.running) + len(self.waiting)

    def load(self) -> int:
        return len(self.running) + len(self.waiting)

    def gauges(self) -> tuple[float, float, float]:
        usage = self.kv_reserved / self.kv_capacity if self.kv_capacity else math.nan
        return float(len(self.running)), float(len(self.waiting)), usage
