"""The simulated deployment: an event loop, the router, pod lifecycle on a node pool, and the
accounting the report needs. Policies act only through `set_replicas`, and see only the
Observer (Prometheus) and the pod counts Kubernetes would show."""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pdserve.autoscaler import Replicas, RoleReplicas
from pdserve.autoscaler.deletion_cost import deletion_costs
from pdserve.planning.perf import ReplicaPerf
from pdserve.planning.sim.observer import Observer, ObserverConfig
from pdserve.planning.sim.pods import DecodePod, Pod, PrefillPod
from pdserve.planning.sim.traces import Request, Trace

ROLES = ("prefill", "decode")


class Policy(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def interval(self) -> float: ...

    def act(self, sim: Simulation, now: float) -> None: ...


@dataclass(frozen=True)
class SimConfig:
    perf: ReplicaPerf
    budget: int
    ttft_target: float
    itl_target: float
    # The node pool may be larger than the budget (a shared pool); the budget is policy.
    pool_accelerators: int
    observer: ObserverConfig = field(default_factory=ObserverConfig)
    drain_grace: float = 120.0
    tail: float = 300.0
    seed: int = 0
    # The prefill pods' own shape (another kind or chip count: a plan's mixed candidates);
    # None: `perf` serves both roles.
    prefill_perf: ReplicaPerf | None = None

    def role_perf(self, role: str) -> ReplicaPerf:
        if role == "prefill" and self.prefill_perf is not None:
            return self.prefill_perf
        return self.perf

    def kv_transfer_seconds(self, tokens: int) -> float:
        """The handoff of a prompt's KV from its prefill pod to a decode pod, over the
        slower of the two pods' links."""
        if self.prefill_perf is None:
            return self.perf.kv_transfer_seconds(tokens)
        link = min(self.prefill_perf.kv_link_bandwidth, self.perf.kv_link_bandwidth)
        return tokens * self.prefill_perf.kv_bytes_per_token / link


@dataclass
class Action:
    time: float
    role: str
    before: int
    after: int


class Simulation:
    def __init__(self, trace: Trace, cfg: SimConfig, policy: Policy,
                 initial: tuple[int, int], warm: bool) -> None:
        self.trace, self.cfg, self.policy = trace, cfg, policy
        self.observer = Observer(cfg.observer, cfg.seed)
        self.events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.counter = itertools.count()
        self.now = 0.0
        self.pods: list[Pod] = []
        self.pod_ids = itertools.count()
        self.desired = {"prefill": 0, "decode": 0}
        self.actions: list[Action] = []
        self.waiting_prefill: deque[Request] = deque()
        self.waiting_decode: deque[Request] = deque()
        self.affinity: dict[int, PrefillPod] = {}
        self.router_counters = [0.0, 0.0, 0.0, 0.0, 0.0]  # ttft sum/count, itl sum/count, arrivals
        self.accelerator_seconds = 0.0
        self.over_budget_seconds = 0.0
        self.peak_allocated = 0
        self.aborted = 0
        self.last_account = 0.0
        self.timeline: list[tuple[float, int, int, int, int]] = []
        for role, count in zip(ROLES, initial, strict=True):
            self.desired[role] = count
            for _ in range(count):
                pod = self._new_pod(role)
                if warm:
                    pod.state = "ready"
        self._schedule_pending()

    # --- event loop -------------------------------------------------------------------------
    def push(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self.events, (when, next(self.counter), fn, args))

    def run(self) -> Simulation:
        requests = self.trace.requests
        if requests:
            self.push(requests[0].arrival, self._arrive, 0)
        self.push(0.0, self._scrape)
        self.push(self.policy.interval, self._policy_tick)
        end = self.trace.duration + self.cfg.tail
        while self.events:
            when, _, fn, args = heapq.heappop(self.events)
            if when > end:
                break
            self.now = when
            fn(*args)
        self._account(min(end, self.now))
        return self

    def _arrive(self, index: int) -> None:
        requests = self.trace.requests
        if index + 1 < len(requests):
            self.push(requests[index + 1].arrival, self._arrive, index + 1)
        self.router_counters[4] += 1
        self._route_prefill(requests[index])

    def _scrape(self) -> None:
        self.observer.scrape(self.now, self.pods, tuple(self.router_counters))
        self.timeline.append((self.now, *self._role_counts()))
        self.pods = [p for p in self.pods if p.state != "gone"]
        if self.now < self.trace.duration + self.cfg.tail:
            self.push(self.now + self.cfg.observer.scrape_interval, self._scrape)

    def _policy_tick(self) -> None:
        self.policy.act(self, self.now)
        if self.now < self.trace.duration:
            self.push(self.now + self.policy.interval, self._policy_tick)

    # --- router -----------------------------------------------------------------------------
    def _ready(self, role: str) -> list[Pod]:
        return [p for p in self.pods if p.role == role and p.state == "ready"]

    def _route_prefill(self, request: Request) -> None:
        ready = [p for p in self._ready("prefill") if isinstance(p, PrefillPod)]
        if not ready:
            self.waiting_prefill.append(request)
            return
        pod = min(ready, key=lambda p: p.queued_tokens)
        sticky = self.affinity.get(request.session)
        if (sticky is not None and sticky.state == "ready"
                and sticky.queued_tokens <= pod.queued_tokens + sticky.perf.max_batched_tokens):
            pod = sticky
        if request.session >= 0:
            self.affinity[request.session] = pod
        pod.enqueue(request)
        self._start_prefill(pod)

    def _start_prefill(self, pod: PrefillPod) -> None:
        seconds = pod.take_batch()
        if seconds > 0:
            self.push(self.now + seconds, self._prefill_done, pod)

    def _prefill_done(self, pod: PrefillPod) -> None:
        if pod.state == "gone":
            return
        for request in pod.finish_batch():
            request.first_token = self.now
            self.router_counters[0] += self.now - request.arrival
            self.router_counters[1] += 1
            if request.output <= 1:
                request.finish = self.now
            else:
                self.push(self.now + self.cfg.kv_transfer_seconds(request.prompt),
                          self._route_decode, request)
        self._start_prefill(pod)
        self._maybe_gone(pod)

    def _route_decode(self, request: Request) -> None:
        ready = [p for p in self._ready("decode") if isinstance(p, DecodePod)]
        if not ready:
            self.waiting_decode.append(request)
            return
        pod = min(ready, key=lambda p: p.load())
        pod.sync(self.now)
        pod.admit(request)
        self._reschedule_decode(pod)

    def _reschedule_decode(self, pod: DecodePod) -> None:
        pod.version += 1
        when = pod.next_event_time()
        if when is not None:
            self.push(when, self._decode_event, pod, pod.version)

    def _decode_event(self, pod: DecodePod, version: int) -> None:
        if version != pod.version or pod.state == "gone":
            return
        pod.sync(self.now)
        for request in pod.pop_finished():
            request.finish = self.now
            self.router_counters[2] += self.now - request.first_token
            self.router_counters[3] += request.output - 1
            pod.requests += 1
        self._reschedule_decode(pod)
        self._maybe_gone(pod)

    # --- pods and the node pool ---------------------------------------------------------------
    def _new_pod(self, role: str) -> Pod:
        pod: Pod
        if role == "prefill":
            pod = PrefillPod(next(self.pod_ids), self.now, self.cfg.role_perf(role))
        else:
            pod = DecodePod(next(self.pod_ids), self.now, self.cfg.perf)
        self.pods.append(pod)
        return pod

    def allocated(self) -> int:
        return sum(p.accelerators for p in self.pods if p.holds_accelerators())

    def _account(self, until: float) -> None:
        until = min(until, self.trace.duration)
        if until > self.last_account:
            allocated = self.allocated()
            span = until - self.last_account
            self.accelerator_seconds += allocated * span
            self.over_budget_seconds += max(0, allocated - self.cfg.budget) * span
            self.last_account = until

    def _allocation_changes(self) -> None:
        self._account(self.now)

    def _schedule_pending(self) -> None:
        self._allocation_changes()
        for pod in self.pods:
            if pod.state == "pending" and (
                    self.allocated() + pod.accelerators <= self.cfg.pool_accelerators):
                pod.state = "starting"
                self.push(self.now + self.cfg.role_perf(pod.role).startup_seconds,
                          self._pod_ready, pod)
        self.peak_allocated = max(self.peak_allocated, self.allocated())

    def _pod_ready(self, pod: Pod) -> None:
        if pod.state != "starting":
            return
        pod.state = "ready"
        queued, self.waiting_prefill = self.waiting_prefill, deque()
        for request in queued:
            self._route_prefill(request)
        queued, self.waiting_decode = self.waiting_decode, deque()
        for request in queued:
            self._route_decode(request)

    def set_replicas(self, prefill: int, decode: int) -> None:
        in_flight = self.observer.pod_in_flight(self.now)
        for role, count in zip(ROLES, (prefill, decode), strict=True):
            if count != self.desired[role]:
                self.actions.append(Action(self.now, role, self.desired[role], count))
                self.desired[role] = count
            self._reconcile(role, in_flight)
        self._schedule_pending()

    def _reconcile(self, role: str, in_flight: dict[str, float]) -> None:
        live = [p for p in self.pods if p.role == role and p.state in
                ("pending", "starting", "ready")]
        for _ in range(self.desired[role] - len(live)):
            self._new_pod(role)
        excess = len(live) - self.desired[role]
        if excess <= 0:
            return
        costs = deletion_costs({p.name: in_flight.get(p.name, 0.0) for p in live})
        order = {"pending": 0, "starting": 1, "ready": 2}
        # The ReplicaSet removes unscheduled, then not-ready, then lowest-cost pods first.
        victims = sorted(live, key=lambda p: (order[p.state], int(costs[p.name]), -p.created))
        for pod in victims[:excess]:
            self._allocation_changes()
            if pod.state == "ready":
                pod.state = "draining"
                pod.drain_started = self.now
                self.push(self.now + self.cfg.drain_grace, self._drain_deadline, pod)
                self._maybe_gone(pod)
            else:
                pod.state = "gone"

    def _maybe_gone(self, pod: Pod) -> None:
        if pod.state == "draining" and pod.in_flight() == 0:
            self._allocation_changes()
            pod.state = "gone"
            self._schedule_pending()

    def _drain_deadline(self, pod: Pod) -> None:
        if pod.state != "draining":
            return
        lost: list[Request] = []
        if isinstance(pod, DecodePod):
            lost = pod.abort_all()
        elif isinstance(pod, PrefillPod):
            lost = list(pod.queue) + pod.batch
            pod.queue.clear()
            pod.batch = []
        for request in lost:
            request.aborted = True
        self.aborted += len(lost)
        self._allocation_changes()
        pod.state = "gone"
        self._schedule_pending()

    # --- views for policies -----------------------------------------------------------------
    def _role_counts(self) -> tuple[int, int, int, int]:
        """(prefill allocated, decode allocated, prefill ready, decode ready) accelerators/pods."""
        alloc = {r: sum(p.accelerators for p in self.pods if p.role == r and
                        p.holds_accelerators()) for r in ROLES}
        ready = {r: sum(1 for p in self.pods if p.role == r and p.state == "ready") for r in ROLES}
        return alloc["prefill"], alloc["decode"], ready["prefill"], ready["decode"]

    def replicas(self) -> Replicas:
        """What the operator reads from the Deployments and their pods."""
        def role(name: str) -> RoleReplicas:
            pods = [p for p in self.pods if p.role == name]
            pending = [p for p in pods if p.state == "pending"]
            return RoleReplicas(
                desired=self.desired[name],
                ready=sum(1 for p in pods if p.state == "ready"),
                starting=sum(1 for p in pods if p.state == "starting"),
                pending=len(pending),
                terminating=sum(1 for p in pods if p.state == "draining"),
                pending_seconds=max((self.now - p.created for p in pending), default=0.0))
        return Replicas(role("prefill"), role("decode"))


def unfinished(trace: Trace) -> int:
    return sum(1 for r in trace.requests if math.isnan(r.finish))
