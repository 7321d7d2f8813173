"""How many replicas each role needs: load over corrected per-replica capacity, raised when the
observed latency misses its target. Results are fractional replicas, always finite and >= 0."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pdserve.autoscaler.config import PlannerConfig
from pdserve.autoscaler.snapshot import RoleMetrics, known

# Learned capacity corrections stay within these factors of the prior (priors per accelerator
# kind do not know the model size).
CORRECTION_BOUNDS = (0.1, 10.0)
CORRECTION_STEP = 1.1
# Latency below this fraction of its target means the replicas are not the bottleneck.
COMFORTABLE_RATIO = 0.6
# One interval raises a role by at most this factor for a latency miss alone.
MAX_LATENCY_GROWTH = 1.5


@dataclass(frozen=True)
class RoleNeed:
    replicas: float
    latency_ratio: float
    signal: str

    def pressure(self, replicas: int) -> float:
        """Need per provisioned replica: above 1 the role is expected to miss its target."""
        return self.replicas / max(replicas, 1)


def latency_ratio(metrics: RoleMetrics, target_seconds: float) -> float:
    return metrics.latency_seconds / target_seconds if known(metrics.latency_seconds) else math.nan


def updated_correction(correction: float, ratio: float, utilization: float,
                       cfg: PlannerConfig, steady: bool = True) -> float:
    """Nudge the capacity correction when latency contradicts the capacity model.

    Missing the target while the model says the replicas are not busy: capacity was
    overestimated. Comfortably within target while the model says they are busier than planned:
    underestimated. Bounded, multiplicative, one small step per interval. Only a `steady` role
    (no pod starting or leaving) may lower it: a backlog left from before a scale-up looks like
    a capacity error but is not; comfortable latency under load is evidence either way."""
    if not (math.isfinite(ratio) and math.isfinite(utilization)):
        return correction
    low, high = CORRECTION_BOUNDS
    if steady and ratio > 1.0 + cfg.dead_band and utilization < cfg.target_utilization:
        return max(low, correction / CORRECTION_STEP)
    if ratio < COMFORTABLE_RATIO and utilization > cfg.target_utilization:
        return min(high, correction * CORRECTION_STEP)
    return correction


def _latency_floor(ratio: float, ready: int, cfg: PlannerConfig) -> float:
    if math.isfinite(ratio) and ratio > 1.0 + cfg.dead_band and ready > 0:
        return ready * min(ratio, MAX_LATENCY_GROWTH)
    return 0.0


def _finite(value: float) -> float:
    return value if known(value) else 0.0


def demand(metrics: RoleMetrics, arrival_rate: float) -> float:
    """Tokens/s the role is asked for: measured throughput, or arrivals times tokens per served
    request when that is higher (a saturated role serves less than it is asked)."""
    served = _finite(metrics.token_rate)
    if known(arrival_rate) and known(metrics.request_rate) and metrics.request_rate > 0:
        return max(served, arrival_rate * served / metrics.request_rate)
    return served


def prefill_need(metrics: RoleMetrics, asked: float, peak: float, ready: int,
                 correction: float, cfg: PlannerConfig) -> RoleNeed:
    """`asked`: prompt tokens/s to plan for (demand, or its forecast); `peak`: the recent
    short-term peak of demand, planned at `peak_utilization`."""
    per_replica = cfg.capacity.prefill_tokens_per_second * correction
    capacity = per_replica * cfg.target_utilization
    asked = max(asked, peak * cfg.target_utilization / cfg.peak_utilization)
    waiting = _finite(metrics.waiting)
    if waiting > 0 and known(metrics.request_rate) and metrics.request_rate > 0:
        mean_prompt = _finite(metrics.token_rate) / metrics.request_rate
        asked += waiting * mean_prompt / cfg.backlog_drain_seconds
    by_tokens = asked / capacity
    ratio = latency_ratio(metrics, cfg.ttft_target_seconds * cfg.latency_aim)
    floor = _latency_floor(ratio, ready, cfg)
    if floor > by_tokens:
        return RoleNeed(floor, ratio, f"TTFT {ratio:.2f}x aim")
    return RoleNeed(by_tokens, ratio, f"{asked:.0f} prompt tok/s")


def decode_need(metrics: RoleMetrics, asked: float, peak: float, growth: float,
                incoming: float, ready: int, correction: float, cfg: PlannerConfig) -> RoleNeed:
    """`asked`: generated tokens/s to plan for; `peak`: its recent short-term peak (planned at
    `peak_utilization`); `growth`: forecast over current demand, applied to the concurrent
    sequences too; `incoming`: requests queued in prefill, which will want decode slots next
    (a drained prefill backlog floods decode)."""
    u = cfg.target_utilization
    capacity = cfg.capacity.decode_tokens_per_second * correction * u
    asked = max(asked, peak * u / cfg.peak_utilization)
    by_tokens = asked / capacity
    in_decode = _finite(metrics.running) + _finite(metrics.waiting)
    sequences = in_decode * growth + _finite(incoming)
    by_sequences = sequences / (cfg.capacity.decode_max_sequences * u)
    by_kv = ready * _finite(metrics.kv_usage) / cfg.kv_high_watermark
    ratio = latency_ratio(metrics, cfg.itl_target_seconds * cfg.latency_aim)
    floor = _latency_floor(ratio, ready, cfg)
    candidates = [
        (by_tokens, f"{asked:.0f} generated tok/s"),
        (by_sequences, f"{sequences:.0f} sequences"),
        (by_kv, f"KV usage {_finite(metrics.kv_usage):.2f}"),
        (floor, f"ITL {ratio:.2f}x aim"),
    ]
    replicas, signal = max(candidates, key=lambda c: c[0])
    return RoleNeed(replicas, ratio, signal)
