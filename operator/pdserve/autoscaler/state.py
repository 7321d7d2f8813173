"""Replica counts seen in the cluster, the planner's memory between intervals, and its output."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class RoleReplicas:
    """Pods of one role. Only `ready` pods are capacity; starting and terminating pods hold
    accelerators; pending (unschedulable) pods hold none and are not capacity."""

    desired: int
    ready: int
    starting: int = 0
    pending: int = 0
    terminating: int = 0
    pending_seconds: float = 0.0


@dataclass(frozen=True)
class Replicas:
    prefill: RoleReplicas
    decode: RoleReplicas


@dataclass(frozen=True)
class Recommendation:
    time: float
    prefill: int
    decode: int


@dataclass(frozen=True)
class PlannerState:
    """What the planner remembers: recent raw recommendations (for the stabilization windows),
    when it last saw metrics and traffic, and the learned capacity corrections."""

    recommendations: tuple[Recommendation, ...] = ()
    last_metrics_time: float | None = None
    last_traffic_time: float | None = None
    prefill_correction: float = 1.0
    decode_correction: float = 1.0
    # (time, prefill demand, decode demand) in tokens/s, for the trend.
    demand_history: tuple[tuple[float, float, float], ...] = ()
    # Panic mode lasts until this time; waiting queues (prefill, decode) last interval.
    panic_until: float | None = None
    # Sequences one decode replica holds, learned (None: the prior's).
    decode_slots: float | None = None
    last_waiting: tuple[float, float] = (0.0, 0.0)

    def remember_demand(self, now: float, prefill: float, decode: float,
                        keep_seconds: float) -> PlannerState:
        kept = tuple(h for h in self.demand_history if h[0] >= now - keep_seconds)
        return replace(self, demand_history=(*kept, (now, prefill, decode)))

    def remember(self, rec: Recommendation, keep_seconds: float) -> PlannerState:
        kept = tuple(r for r in self.recommendations if r.time >= rec.time - keep_seconds)
        return replace(self, recommendations=(*kept, rec))

    def to_dict(self) -> dict[str, Any]:
        return {
            "recommendations": [[r.time, r.prefill, r.decode] for r in self.recommendations],
            "lastMetricsTime": self.last_metrics_time,
            "lastTrafficTime": self.last_traffic_time,
            "prefillCorrection": self.prefill_correction,
            "decodeCorrection": self.decode_correction,
            "demandHistory": [list(h) for h in self.demand_history],
            "panicUntil": self.panic_until,
            "lastWaiting": list(self.last_waiting),
            "decodeSlots": self.decode_slots,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlannerState:
        recs = tuple(Recommendation(float(t), int(p), int(d))
                     for t, p, d in data.get("recommendations", []))
        return cls(
            recommendations=recs,
            last_metrics_time=data.get("lastMetricsTime"),
            last_traffic_time=data.get("lastTrafficTime"),
            prefill_correction=float(data.get("prefillCorrection", 1.0)),
            decode_correction=float(data.get("decodeCorrection", 1.0)),
            demand_history=tuple((float(t), float(p), float(d))
                                 for t, p, d in data.get("demandHistory", [])),
            panic_until=_optional(data.get("panicUntil")),
            last_waiting=_pair(data.get("lastWaiting")),
            decode_slots=_optional(data.get("decodeSlots")),
        )


def _optional(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _pair(value: Any) -> tuple[float, float]:
    try:
        first, second = (float(v) for v in value)
    except (TypeError, ValueError):
        return 0.0, 0.0
    return first, second


@dataclass(frozen=True)
class Decision:
    """The planner's answer. `reason` is one CamelCase word (Events, conditions); `message`
    says why in a sentence; `limited` is the ScalingLimited message, or None."""

    prefill_replicas: int
    decode_replicas: int
    reason: str
    message: str
    state: PlannerState
    limited: str | None = None
    inputs: dict[str, float | int | str] = field(default_factory=dict)

    def changes(self, replicas: Replicas) -> bool:
        return (self.prefill_replicas != replicas.prefill.desired
                or self.decode_replicas != replicas.decode.desired)
