"""Per-run figures: joint attainment, goodput per accelerator, accelerator-hours, scaling
actions and reversals, recovery after a load step, and the safety counters."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pdserve.planning.sim.cluster import Simulation
from pdserve.planning.sim.traces import Request

RECOVERY_BIN = 30.0
RECOVERY_HOLD_BINS = 4


@dataclass(frozen=True)
class RunReport:
    policy: str
    trace: str
    offered: int
    attainment: float
    p90_ratio: float
    p99_ratio: float
    goodput_per_accelerator: float  # requests meeting both targets per accelerator-second
    goodput: float  # requests meeting both targets per second of the trace
    accelerator_hours: float
    actions: int
    reversals: int
    recovery_seconds: float  # NaN without a load step, inf if never recovered
    aborted: int
    over_budget_accelerator_seconds: float
    actions_on_nan: int
    peak_allocated: int


def slo_ratio(request: Request, ttft_target: float, itl_target: float) -> float:
    """max(TTFT / target, TPOT / target); inf when the request never finished."""
    if request.aborted or math.isnan(request.finish):
        return math.inf
    ratio = (request.first_token - request.arrival) / ttft_target
    if request.output > 1:
        tpot = (request.finish - request.first_token) / (request.output - 1)
        ratio = max(ratio, tpot / itl_target)
    return ratio


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _reversals(sim: Simulation) -> tuple[int, int]:
    actions = reversals = 0
    for role in ("prefill", "decode"):
        last = 0
        for action in (a for a in sim.actions if a.role == role):
            actions += 1
            direction = 1 if action.after > action.before else -1
            if last and direction != last:
                reversals += 1
            last = direction
    return actions, reversals


def recovery_seconds(requests: list[Request], ratios: list[float], step_time: float | None,
                     end: float) -> float:
    """Seconds after the load step until per-bin attainment is >= 90% and stays there."""
    if step_time is None:
        return math.nan
    bins: dict[int, list[bool]] = {}
    for request, ratio in zip(requests, ratios, strict=True):
        if request.arrival >= step_time:
            bins.setdefault(int((request.arrival - step_time) // RECOVERY_BIN), []).append(
                ratio <= 1.0)
    count = int((end - step_time) // RECOVERY_BIN)
    good = [bool(bins.get(i)) and sum(bins[i]) >= 0.9 * len(bins[i]) for i in range(count)]
    for i in range(count):
        if all(good[i:i + RECOVERY_HOLD_BINS]) and i + RECOVERY_HOLD_BINS <= count:
            return i * RECOVERY_BIN
    return math.inf


def report(sim: Simulation, policy_name: str, actions_on_nan: int = 0) -> RunReport:
    cfg = sim.cfg
    requests = sim.trace.requests
    ratios = [slo_ratio(r, cfg.ttft_target, cfg.itl_target) for r in requests]
    good = sum(1 for x in ratios if x <= 1.0)
    ordered = sorted(ratios)
    step = next((t for t, label in sim.trace.marks if label == "step"), None)
    actions, reversals = _reversals(sim)
    return RunReport(
        policy=policy_name, trace=sim.trace.name, offered=len(requests),
        attainment=good / len(requests) if requests else math.nan,
        p90_ratio=_percentile(ordered, 0.9), p99_ratio=_percentile(ordered, 0.99),
        goodput_per_accelerator=good / sim.accelerator_seconds if sim.accelerator_seconds else 0,
        goodput=good / sim.trace.duration if sim.trace.duration else 0.0,
        accelerator_hours=sim.accelerator_seconds / 3600,
        actions=actions, reversals=reversals,
        recovery_seconds=recovery_seconds(requests, ratios, step, sim.trace.duration),
        aborted=sim.aborted, over_budget_accelerator_seconds=sim.over_budget_seconds,
        actions_on_nan=actions_on_nan, peak_allocated=sim.peak_allocated)
