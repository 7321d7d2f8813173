"""Scaling policies compared by the simulator: the real planner, static splits, an HPA-like
queue-length autoscaler per role, and a Dynamo-style proportional budget clamp. All see only
the Observer and pod counts."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from pdserve.autoscaler import MetricsSnapshot, PlannerConfig, PlannerState, plan
from pdserve.planning.sim.cluster import Simulation


@dataclass
class StaticPolicy:
    prefill: int
    decode: int
    interval: float = 3600.0

    @property
    def name(self) -> str:
        return f"static {self.prefill}:{self.decode}"

    def act(self, sim: Simulation, now: float) -> None:
        return None


@dataclass
class PlannerPolicy:
    config: PlannerConfig
    name: str = "planner"
    state: PlannerState = field(default_factory=PlannerState)
    actions_on_nan: int = 0
    reasons: list[tuple[float, str, str]] = field(default_factory=list)

    @property
    def interval(self) -> float:
        return self.config.interval_seconds

    def act(self, sim: Simulation, now: float) -> None:
        snapshot = sim.observer.snapshot(now)
        replicas = sim.replicas()
        decision = plan(snapshot, replicas, self.config, self.state, now)
        self.state = decision.state
        grows = (decision.prefill_replicas > replicas.prefill.desired
                 or decision.decode_replicas > replicas.decode.desired)
        unknown = snapshot is None or not all(
            math.isfinite(v) for v in (snapshot.prefill.token_rate, snapshot.decode.token_rate))
        if grows and unknown:
            self.actions_on_nan += 1
        if decision.changes(replicas):
            self.reasons.append((now, decision.reason, decision.message))
        sim.set_replicas(decision.prefill_replicas, decision.decode_replicas)


@dataclass
class HpaPolicy:
    """Two HorizontalPodAutoscalers on in-flight requests per pod (running + waiting), with the
    Kubernetes defaults: 10% tolerance, 300 s scale-down stabilization, scale-up by at most
    max(4 pods, 100%) per period; plus a cap that keeps the total within the budget."""

    prefill_target: float
    decode_target: float
    budget: int
    bounds: tuple[tuple[int, int], tuple[int, int]]
    accelerators_per_replica: int = 1
    interval: float = 15.0
    stabilization: float = 300.0
    name: str = "hpa (queue length)"
    history: list[tuple[float, int, int]] = field(default_factory=list)

    def _desired(self, in_flight: float, ready: int, current: int, target: float) -> int:
        if not math.isfinite(in_flight) or ready == 0:
            return current
        ratio = in_flight / ready / target
        if abs(ratio - 1.0) <= 0.1:
            return current
        wanted = math.ceil(ready * ratio)
        return min(wanted, max(current + 4, 2 * current))

    def act(self, sim: Simulation, now: float) -> None:
        snapshot = sim.observer.snapshot(now)
        if snapshot is None:
            return
        replicas = sim.replicas()
        raw = []
        for index, (metrics, pods, target) in enumerate((
                (snapshot.prefill, replicas.prefill, self.prefill_target),
                (snapshot.decode, replicas.decode, self.decode_target))):
            in_flight = metrics.running + metrics.waiting
            low, high = self.bounds[index]
            raw.append(max(low, min(high, self._desired(in_flight, pods.ready, pods.desired,
                                                        target))))
        self.history = [h for h in self.history if h[0] >= now - self.stabilization]
        self.history.append((now, raw[0], raw[1]))
        current = (replicas.prefill.desired, replicas.decode.desired)
        final: list[int] = []
        for index in (0, 1):
            if raw[index] < current[index]:
                final.append(max(h[1] if index == 0 else h[2] for h in self.history))
            else:
                final.append(raw[index])
        while sum(final) * self.accelerators_per_replica > self.budget:
            grow = [i for i in (0, 1) if final[i] > max(current[i], self.bounds[i][0])]
            index = max(grow or [0, 1], key=lambda i: final[i])
            if final[index] <= self.bounds[index][0]:
                break
            final[index] -= 1
        sim.set_replicas(final[0], final[1])


@dataclass
class ProportionalClampPolicy:
    """Dynamo's SLA planner as its documentation describes it, as a baseline: every
    `interval` (its default adjustment interval, 180 s) it predicts the next interval's load as
    the last one's (the constant predictor), sizes each role from profiled per-replica
    throughput within the targets (prefill: prompt tokens/s; decode: generated tokens/s at the
    ITL target and the observed context), and, when the sum exceeds the budget, shrinks both
    roles by budget / total (prefill rounded down, at least one, decode takes what is left).
    It sees no queue: a prefill backlog does not change its estimate (the gap issue #10528
    reports). The correction factors from observed latency are left out."""

    prefill_tokens_per_second: float
    decode_tokens_per_second: Callable[[float], float]  # context tokens -> per replica
    budget: int
    max_replicas: int
    accelerators_per_replica: int = 1
    interval: float = 180.0
    name: str = "dynamo-style clamp"

    def desired(self, snapshot: MetricsSnapshot) -> tuple[int, int] | None:
        p, d = snapshot.prefill, snapshot.decode
        rates = (snapshot.arrival_rate, p.token_rate, p.request_rate, d.token_rate,
                 d.request_rate)
        if not all(math.isfinite(v) for v in rates) or p.request_rate <= 0 or d.request_rate <= 0:
            return None
        isl = p.token_rate / p.request_rate
        osl = d.token_rate / d.request_rate
        prefill = math.ceil(snapshot.arrival_rate * isl / self.prefill_tokens_per_second)
        decode = math.ceil(snapshot.arrival_rate * osl
                           / self.decode_tokens_per_second(isl + osl / 2))
        return max(1, prefill), max(1, decode)

    def clamp(self, prefill: int, decode: int) -> tuple[int, int]:
        a = self.accelerators_per_replica
        if (prefill + decode) * a <= self.budget:
            return min(prefill, self.max_replicas), min(decode, self.max_replicas)
        scale = self.budget / ((prefill + decode) * a)
        max_prefill = (self.budget - a) // a  # leaves one decode replica
        prefill = max(1, min(max_prefill, math.floor(prefill * scale)))
        decode = max(1, min(decode, (self.budget - prefill * a) // a))
        return prefill, decode

    def act(self, sim: Simulation, now: float) -> None:
        snapshot = sim.observer.snapshot(now)
        wanted = self.desired(snapshot) if snapshot is not None else None
        if wanted is not None:
            sim.set_replicas(*self.clamp(*wanted))
