"""What the planner knows about load and latency: the view Prometheus gives, nothing more.

Every float may be NaN: a histogram average is NaN when no request finished in the window, and
a series is absent when no pod exports it. The planner treats NaN as "unknown", never as zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

NAN = float("nan")


def known(value: float) -> bool:
    """True for a finite, non-negative measurement."""
    return math.isfinite(value) and value >= 0.0


@dataclass(frozen=True)
class RoleMetrics:
    """Per-role aggregates over all pods of one role of one LLMService.

    token_rate: prefill = prompt tokens computed per second (prefix-cache hits excluded);
    decode = generated tokens per second. request_rate: requests/s the role completed.
    latency_seconds: prefill = mean time to first token; decode = mean inter-token latency.
    running/waiting: summed over pods. kv_usage: mean 0..1. running_max: the fullest pod's
    running requests (with requests waiting: the sequences a pod holds). kv_sequences: running
    over KV usage, averaged over pods past a usage floor (prometheus_source's
    KV_SEQUENCES_MIN_USAGE): the sequences of the current mix a full KV cache holds.

    Token rates are throughput: a saturated role shows its capacity, not its demand. The
    planner scales them by arrivals (see MetricsSnapshot.arrival_rate).
    """

    token_rate: float = NAN
    request_rate: float = NAN
    latency_seconds: float = NAN
    running: float = NAN
    waiting: float = NAN
    kv_usage: float = NAN
    running_max: float = NAN
    kv_sequences: float = NAN

    def has_load_signal(self) -> bool:
        return known(self.token_rate)

    def is_idle(self) -> bool:
        """Zero measured traffic and nothing in flight (unknown gauges count as zero)."""
        in_flight = sum(v for v in (self.running, self.waiting) if known(v))
        return known(self.token_rate) and self.token_rate == 0.0 and in_flight == 0.0

    def as_inputs(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}TokenRate": self.token_rate,
            f"{prefix}RequestRate": self.request_rate,
            f"{prefix}LatencySeconds": self.latency_seconds,
            f"{prefix}Running": self.running,
            f"{prefix}Waiting": self.waiting,
            f"{prefix}KvUsage": self.kv_usage,
        }


@dataclass(frozen=True)
class MetricsSnapshot:
    """One evaluation of the planner's queries, taken at `time` (seconds, any epoch).
    arrival_rate: requests/s arriving at the router, whether or not they are served yet.
    peak_arrival_rate: the highest short-window (about 30 s) arrival rate of the last few
    minutes: bursts shorter than a pod's start-up can only be met by capacity already there.
    class_ttft: mean time to first token at the router per priority class (the same statistic
    as prefill.latency_seconds), for the classes that served requests in the window."""

    time: float
    prefill: RoleMetrics = field(default_factory=RoleMetrics)
    decode: RoleMetrics = field(default_factory=RoleMetrics)
    arrival_rate: float = NAN
    peak_arrival_rate: float = NAN
    class_ttft: Mapping[str, float] = field(default_factory=dict)
