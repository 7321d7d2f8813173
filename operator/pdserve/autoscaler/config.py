"""The planner's settings: targets, bounds, budget, capacity priors and stability knobs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


class PlannerConfigError(ValueError):
    """Settings that cannot be planned with (reported as a status condition, never a crash)."""


@dataclass(frozen=True)
class RoleBounds:
    min_replicas: int
    max_replicas: int
    accelerators_per_replica: int = 1

    def validate(self, role: str) -> None:
        if self.min_replicas < 1:
            raise PlannerConfigError(f"{role}: minReplicas must be at least 1")
        if self.max_replicas < self.min_replicas:
            raise PlannerConfigError(f"{role}: maxReplicas is below minReplicas")
        if self.accelerators_per_replica < 0:
            raise PlannerConfigError(f"{role}: accelerators per replica must be >= 0")

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True)
class CapacityPrior:
    """What one replica sustains within the targets, before observed latency corrects it.

    prefill_tokens_per_second: prompt tokens/s a prefill replica computes with TTFT in target.
    decode_tokens_per_second: generated tokens/s a decode replica produces with ITL in target.
    decode_max_sequences: concurrent sequences a decode replica holds (KV memory, max-num-seqs).
    """

    prefill_tokens_per_second: float
    decode_tokens_per_second: float
    decode_max_sequences: float

    def validate(self) -> None:
        for name, value in vars(self).items():
            if not (value > 0.0 and value < float("inf")):
                raise PlannerConfigError(f"capacity prior {name} must be a positive number")


@dataclass(frozen=True)
class PlannerConfig:
    ttft_target_seconds: float
    itl_target_seconds: float
    prefill: RoleBounds
    decode: RoleBounds
    capacity: CapacityPrior
    accelerator_budget: int | None = None
    # Priority class -> its own TTFT target (spec.router.priorityClasses[].ttftTargetSeconds):
    # the prefill tier is planned for the class furthest above its target, the spec-wide
    # target still binding the router's overall TTFT. Classes without a target are absent.
    class_ttft_targets: Mapping[str, float] = field(default_factory=dict)
    interval_seconds: float = 30.0
    # Plan for replicas this busy so that bursts inside a scrape interval still meet targets.
    target_utilization: float = 0.8
    # ...and for recent short-term peaks of arrivals at this utilization.
    peak_utilization: float = 0.95
    # The peak counts for at most this multiple of the current arrival rate: the peak query
    # looks back minutes, and a higher ratio is mostly load since gone (a declining day, the
    # previous crest of a wave), not a burst to come (chosen on the simulator's tuning traces).
    max_burst_factor: float = 2.0
    # Mean latencies are steered to this fraction of the targets: the targets bind every
    # request, and a mean at the target leaves about half of them over it.
    latency_aim: float = 0.6
    # Relative change of need ignored (no flapping on noise).
    dead_band: float = 0.1
    scale_up_stabilization_seconds: float = 0.0
    scale_down_stabilization_seconds: float = 300.0
    max_step: int = 2
    # Without metrics (or traffic) hold this long, then decay to minimums.
    hold_seconds: float = 300.0
    # Queued prompts are planned to drain within this horizon.
    backlog_drain_seconds: float = 60.0
    kv_high_watermark: float = 0.85
    # Rising demand is extrapolated this far ahead (about pod start-up plus one interval),
    # from the trend over the last `trend_window_seconds`.
    forecast_seconds: float = 90.0
    trend_window_seconds: float = 180.0
    # Prompt (and sequence) length at the 90th percentile over the mean: a prefill's service
    # time in the queue model is a p90 prompt's (a lognormal of sigma 0.5 gives 1.7).
    length_p90_over_mean: float = 1.7
    # Panic mode (Knative KPA style): a role whose need reaches this multiple of its ready
    # replicas, or whose waiting queue grows while its wait exceeds the latency aim, scales up
    # at once (no stabilization, no max step; still within the budget and drain-safe), and
    # nothing scales down until `panic_seconds` after the last such interval.
    panic_threshold: float = 2.0
    panic_seconds: float = 60.0
    # A replica Pending this long is reported as ScalingLimited.
    pending_grace_seconds: float = 60.0

    def validate(self) -> None:
        if not (self.ttft_target_seconds > 0 and self.itl_target_seconds > 0):
            raise PlannerConfigError("latency targets must be positive")
        if not all(0 < t < float("inf") for t in self.class_ttft_targets.values()):
            raise PlannerConfigError("priority class TTFT targets must be positive")
        self.prefill.validate("prefill")
        self.decode.validate("decode")
        self.capacity.validate()
        if self.max_step < 1:
            raise PlannerConfigError("maxStep must be at least 1")
        if not 0.0 < self.latency_aim <= 1.0:
            raise PlannerConfigError("latency aim must be in (0, 1]")
        if not 0.0 < self.peak_utilization <= 1.0:
            raise PlannerConfigError("peak utilization must be in (0, 1]")
        if not (self.length_p90_over_mean >= 1.0 and self.panic_threshold > 1.0
                and self.max_burst_factor >= 1.0):
            raise PlannerConfigError("length p90/mean and burst factor must be >= 1 and panic "
                                     "threshold > 1")
        if not 0.0 < self.target_utilization <= 1.0:
            raise PlannerConfigError("target utilization must be in (0, 1]")
        budget = self.accelerator_budget
        if budget is not None and budget < self.minimum_accelerators():
            raise PlannerConfigError(
                f"acceleratorBudget {self.accelerator_budget} is below the "
                f"{self.minimum_accelerators()} accelerators the minimum replicas need")

    def minimum_accelerators(self) -> int:
        return (self.prefill.min_replicas * self.prefill.accelerators_per_replica
                + self.decode.min_replicas * self.decode.accelerators_per_replica)
