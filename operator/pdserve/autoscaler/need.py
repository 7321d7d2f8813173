"""How many replicas each role needs: load over corrected per-replica capacity, raised when the
observed latency misses its target. Results are fractional replicas, always finite and >= 0."""

from __future__ import annotations

import math
from collections.abc import Mapping
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


def ttft_ratio(metrics: RoleMetrics, class_ttft: Mapping[str, float],
               cfg: PlannerConfig) -> tuple[float, str]:
    """(TTFT over its aim, whose TTFT) for the figure furthest above its own target: the
    overall TTFT against the spec's target, or a priority class's against the class's target
    (a high class can miss a tight target while the overall mean looks fine). Classes without
    a target or without samples are ignored; NaN when nothing is known."""
    found = [(latency_ratio(metrics, cfg.ttft_target_seconds * cfg.latency_aim), "TTFT")]
    found += [(class_ttft[name] / (target * cfg.latency_aim), f"class {name} TTFT")
              for name, target in sorted(cfg.class_ttft_targets.items())
              if known(class_ttft.get(name, math.nan))]
    return max((f for f in found if math.isfinite(f[0])), key=lambda f: f[0],
               default=(math.nan, "TTFT"))


def updated_correction(correction: float, ratio: float, utilization: float,
                       cfg: PlannerConfig, steady: bool = True,
                       scaled_latency: bool = False) -> float:
    """Nudge the capacity correction when latency contradicts the capacity model.

    Missing the target while the model says the replicas are not busy: capacity was
    overestimated. Comfortably within target while the model says they are busier than planned:
    underestimated. Bounded, multiplicative, one small step per interval. Only a `steady` role
    (no pod starting or leaving) may lower it: a backlog left from before a scale-up looks like
    a capacity error but is not; comfortable latency under load is evidence either way.

    `scaled_latency` (decode): comfortable is judged on the latency scaled to the planned
    utilization (latency / utilization x target_utilization), so the evidence counts at any
    load: the planner keeps replicas at or below the planned utilization, where the plain rule
    never fires, and ITL grows with the batch from a floor (a step reads the weights once), so
    below it the scaling over-estimates. Above it the scaling is optimistic; a miss lowers the
    correction again and the latency floor still scales up. On the simulator's tuning traces
    and its 30%-wrong priors this was cheaper at equal or better attainment
    (bench/results/planner.md)."""
    if not (math.isfinite(ratio) and math.isfinite(utilization)):
        return correction
    low, high = CORRECTION_BOUNDS
    target = cfg.target_utilization
    if steady and ratio > 1.0 + cfg.dead_band and utilization < target:
        return max(low, correction / CORRECTION_STEP)
    if scaled_latency and utilization > 0.0:
        comfortable = ratio * target / utilization < COMFORTABLE_RATIO
    else:
        comfortable = ratio < COMFORTABLE_RATIO and utilization > target
    return min(high, correction * CORRECTION_STEP) if comfortable else correction


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


def _mean_prompt(metrics: RoleMetrics) -> float | None:
    """Prompt tokens per request (prefill's token rate over its request rate); None without
    completed requests."""
    if not (known(metrics.request_rate) and metrics.request_rate > 0):
        return None
    return _finite(metrics.token_rate) / metrics.request_rate


def queue_wait(metrics: RoleMetrics, ready: int, per_replica: float) -> float:
    """Seconds the prompts waiting now take to be reached: queued tokens over the ready
    replicas' rate (the gauge is fresh where the mean TTFT trails a rate window)."""
    waiting, mean_prompt = _finite(metrics.waiting), _mean_prompt(metrics)
    if waiting <= 0 or mean_prompt is None:
        return 0.0
    if ready <= 0 or per_replica <= 0:
        return math.inf
    return waiting * mean_prompt / (ready * per_replica)


def prefill_utilization(metrics: RoleMetrics, per_replica: float, cfg: PlannerConfig) -> float:
    """The busiest a prefill replica may run with TTFT = queue wait + prefill time within the
    aim: a p90 prompt's prefill time S leaves slack = aim - S for the wait, and an M/D/1 queue
    waits S * rho / (2 (1 - rho)); between `target_utilization` (a prompt too long for the aim
    is not helped by more replicas) and `peak_utilization`."""
    mean_prompt = _mean_prompt(metrics)
    if mean_prompt is None or per_replica <= 0:
        return cfg.peak_utilization
    p90_prompt = mean_prompt * cfg.length_p90_over_mean
    service = p90_prompt / per_replica
    slack = cfg.ttft_target_seconds * cfg.latency_aim - service
    if service <= 0:
        return cfg.peak_utilization
    x = max(0.0, slack) / service
    return max(cfg.target_utilization, min(cfg.peak_utilization, 2 * x / (1 + 2 * x)))


def prefill_need(metrics: RoleMetrics, asked: float, peak: float, ready: int,
                 correction: float, cfg: PlannerConfig, ttft: tuple[float, str]) -> RoleNeed:
    """`asked`: prompt tokens/s to plan for (demand, or its forecast); `peak`: the recent
    short-term peak of demand, times the burst factor, planned at the utilization the queue
    model allows (TTFT = queue wait + prefill time of a p90 prompt); `ttft`: the binding
    TTFT over its aim and whose it is (ttft_ratio)."""
    per_replica = cfg.capacity.prefill_tokens_per_second * correction
    capacity = per_replica * cfg.target_utilization
    rho = prefill_utilization(metrics, per_replica, cfg)
    asked = max(asked, peak * cfg.target_utilization / rho)
    waiting, mean_prompt = _finite(metrics.waiting), _mean_prompt(metrics)
    if waiting > 0 and mean_prompt is not None:
        asked += waiting * mean_prompt / cfg.backlog_drain_seconds
    by_tokens = asked / capacity
    ratio, whose = ttft
    floor = _latency_floor(ratio, ready, cfg)
    if floor > by_tokens:
        return RoleNeed(floor, ratio, f"{whose} {ratio:.2f}x aim")
    return RoleNeed(by_tokens, ratio, f"{asked:.0f} prompt tok/s")


def learned_slots(previous: float, metrics: RoleMetrics, prior: float, kv_full: float) -> float:
    """Sequences one decode replica holds (the prior at most): what a full KV cache holds of
    the current mix (running over KV usage), and no more than the fullest replica runs while
    sequences wait for room (KV usage at `kv_full` or above: a decode worker's queue also holds
    sequences whose KV is still arriving, which say nothing about room); without either, the
    last estimate, raised whenever a replica runs more than it."""
    fullest = _finite(metrics.running_max)
    estimates = [metrics.kv_sequences] if known(metrics.kv_sequences) and (
        metrics.kv_sequences > 0) else []
    if _finite(metrics.waiting) >= 1.0 and fullest > 0 and _finite(metrics.kv_usage) >= kv_full:
        estimates.append(fullest)
    if estimates:
        return max(1.0, min(prior, *estimates))
    return min(prior, max(previous, fullest))


def decode_need(metrics: RoleMetrics, asked: float, peak: float, growth: float,
                incoming: float, ready: int, correction: float, cfg: PlannerConfig,
                slots: float | None = None) -> RoleNeed:
    """`asked`: generated tokens/s to plan for; `peak`: its recent short-term peak (planned at
    `peak_utilization`); `growth`: forecast over current demand, applied to the concurrent
    sequences too; `incoming`: requests queued in prefill, which will want decode slots next
    (a drained prefill backlog floods decode); `slots`: sequences a replica holds (learned),
    which scale its generated tokens/s down from the prior's when fewer."""
    u = cfg.target_utilization
    prior_slots = cfg.capacity.decode_max_sequences
    slots = prior_slots if slots is None else max(1.0, min(prior_slots, slots))
    capacity = cfg.capacity.decode_tokens_per_second * correction * u * slots / prior_slots
    # No queue in decode until its slots fill: a peak costs step time, which the prior holds
    # below the ITL target at full capacity.
    asked = max(asked, peak * u)
    by_tokens = asked / capacity
    in_decode = _finite(metrics.running) + _finite(metrics.waiting)
    sequences = in_decode * growth + _finite(incoming)
    # Learned slots are a hard limit (KV full), filled up to the KV watermark.
    by_sequences = sequences / (slots * (u if slots >= prior_slots else cfg.kv_high_watermark))
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
