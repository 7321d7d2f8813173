"""The P/D planner: a pure function from what Prometheus shows and what the cluster runs to the
replicas each role should have. No I/O, no clock: `now` and the previous state come in, the new
state goes out with the decision."""

from __future__ import annotations

import math
from dataclasses import replace

from pdserve.autoscaler.budget import accelerators, best_split, fits, worst_pressure
from pdserve.autoscaler.config import PlannerConfig, PlannerConfigError
from pdserve.autoscaler.need import (
    RoleNeed,
    decode_need,
    demand,
    latency_ratio,
    learned_slots,
    prefill_need,
    queue_wait,
    ttft_ratio,
    updated_correction,
)
from pdserve.autoscaler.snapshot import MetricsSnapshot, RoleMetrics, known
from pdserve.autoscaler.state import (
    Decision,
    PlannerState,
    Recommendation,
    Replicas,
    RoleReplicas,
)
from pdserve.autoscaler.trend import forecast


def plan(snapshot: MetricsSnapshot | None, replicas: Replicas, cfg: PlannerConfig,
         state: PlannerState, now: float) -> Decision:
    """Decide prefill and decode replicas. `snapshot` is None when Prometheus did not answer."""
    try:
        cfg.validate()
    except PlannerConfigError as err:
        return _hold(replicas, state, "InvalidConfig", f"cannot plan: {err}", limited=str(err))
    current = (cfg.prefill.clamp(replicas.prefill.desired),
               cfg.decode.clamp(replicas.decode.desired))
    if snapshot is None:
        return _hold(replicas, state, "PrometheusUnavailable",
                     "Prometheus did not answer; holding replicas", current=current)
    inputs = _inputs(snapshot)
    if not (snapshot.prefill.has_load_signal() and snapshot.decode.has_load_signal()):
        return _hold_then_decay(replicas, cfg, state, now, state.last_metrics_time,
                                "MetricsMissing", "no load metrics", current, inputs)
    state = replace(state, last_metrics_time=now)
    if snapshot.prefill.is_idle() and snapshot.decode.is_idle():
        return _hold_then_decay(replicas, cfg, state, now, state.last_traffic_time,
                                "NoTraffic", "no traffic", current, inputs)
    state = replace(state, last_traffic_time=now)
    return _plan_for_load(snapshot, replicas, cfg, state, now, current, inputs)


def _plan_for_load(snapshot: MetricsSnapshot, replicas: Replicas, cfg: PlannerConfig,
                   state: PlannerState, now: float, current: tuple[int, int],
                   inputs: dict[str, float | int | str]) -> Decision:
    pre, dec = replicas.prefill, replicas.decode
    ttft = ttft_ratio(snapshot.prefill, snapshot.class_ttft, cfg)
    p_corr = _correction(state.prefill_correction, ttft[0], snapshot.prefill,
                         cfg.capacity.prefill_tokens_per_second, pre, cfg)
    d_corr = _correction(state.decode_correction,
                         latency_ratio(snapshot.decode, cfg.itl_target_seconds * cfg.latency_aim),
                         snapshot.decode, cfg.capacity.decode_tokens_per_second, dec, cfg,
                         scaled_latency=True)
    state = replace(state, prefill_correction=p_corr, decode_correction=d_corr)
    p_demand = demand(snapshot.prefill, snapshot.arrival_rate)
    d_demand = demand(snapshot.decode, snapshot.arrival_rate)
    state = state.remember_demand(now, p_demand, d_demand, cfg.trend_window_seconds)
    p_asked = forecast(p_demand, [(t, p) for t, p, _ in state.demand_history],
                       cfg.forecast_seconds)
    d_asked = forecast(d_demand, [(t, d) for t, _, d in state.demand_history],
                       cfg.forecast_seconds)
    peak_rate = _burst_peak(snapshot, cfg)
    p_peak = demand(snapshot.prefill, peak_rate)
    d_peak = demand(snapshot.decode, peak_rate)
    p_need = prefill_need(snapshot.prefill, p_asked, p_peak, pre.ready, p_corr, cfg, ttft)
    prior_slots = cfg.capacity.decode_max_sequences
    slots = learned_slots(state.decode_slots if state.decode_slots is not None else prior_slots,
                          snapshot.decode, prior_slots, cfg.kv_high_watermark)
    state = replace(state, decode_slots=slots)
    d_need = decode_need(snapshot.decode, d_asked, d_peak,
                         d_asked / d_demand if d_demand > 0 else 1.0,
                         snapshot.prefill.waiting, dec.ready, d_corr, cfg, slots)
    limited: list[str] = []

    raw = (cfg.prefill.clamp(_hysteresis(p_need.replicas, current[0], cfg.dead_band)),
           cfg.decode.clamp(_hysteresis(d_need.replicas, current[1], cfg.dead_band)))
    budget = cfg.accelerator_budget
    if budget is not None and not fits(cfg, *raw, budget):
        split = best_split(cfg, p_need, d_need, budget, current)
        if fits(cfg, *current, budget) and (
                worst_pressure(p_need, d_need, current)
                <= worst_pressure(p_need, d_need, split) * (1.0 + cfg.dead_band)):
            split = current
        raw = split
        limited.append(f"accelerator budget {budget} binds: prefill needs "
                       f"{p_need.replicas:.1f} and decode {d_need.replicas:.1f} replicas")
    for role, need, bounds in (("prefill", p_need, cfg.prefill), ("decode", d_need, cfg.decode)):
        if need.replicas > bounds.max_replicas:
            limited.append(f"{role} needs {need.replicas:.1f} replicas, "
                           f"maxReplicas is {bounds.max_replicas}")

    window = max(cfg.scale_up_stabilization_seconds, cfg.scale_down_stabilization_seconds)
    state = state.remember(Recommendation(now, *raw), window)
    state, panicking = _panic(snapshot, replicas, cfg, state, now, (p_need, d_need), p_corr)
    if panicking:  # up at once to the recommendation, never down but to rebalance the budget
        target = [max(c, r) for r, c in zip(raw, current, strict=True)]
        if not fits(cfg, target[0], target[1], budget):
            target = [max(c - cfg.max_step, r) for r, c in zip(raw, current, strict=True)]
    else:
        target = [_stabilized(state, now, cfg, r, raw[r], current[r]) for r in (0, 1)]
        target = [max(c - cfg.max_step, min(c + cfg.max_step, t))
                  for t, c in zip(target, current, strict=True)]
        # Prefill does not scale down while its demand rises (unless the budget needs the
        # room): a pod removed now is missed a start-up later, TTFT at once (a wave's first
        # rise). Decode is not held: on the wave it gained nothing, and held with prefill it
        # kept the accelerators a mix shift moves (shifting-bursty: 93.4%).
        rising = p_asked > p_demand * (1.0 + cfg.dead_band)
        if rising and target[0] < current[0] and fits(cfg, current[0], target[1], budget):
            target[0] = current[0]
    for index, (name, pods) in enumerate((("prefill", pre), ("decode", dec))):
        if pods.pending > 0:
            target[index] = min(target[index], current[index])
            if pods.pending_seconds >= cfg.pending_grace_seconds:
                limited.append(f"{pods.pending} {name} replica(s) Pending for "
                               f"{pods.pending_seconds:.0f}s (no node fits); not counted as "
                               f"capacity")
    final, deferred = _within_budget(cfg, replicas, current, (target[0], target[1]),
                                     (p_need, d_need))
    inputs.update({
        "prefillNeed": p_need.replicas, "decodeNeed": d_need.replicas,
        "prefillTtftOverAim": ttft[0], "prefillTtftOf": ttft[1],
        "prefillDemand": p_demand, "decodeDemand": d_demand,
        "prefillForecast": p_asked, "decodeForecast": d_asked,
        "prefillCorrection": p_corr, "decodeCorrection": d_corr,
        "prefillReady": pre.ready, "decodeReady": dec.ready,
        "panic": "yes" if panicking else "no", "decodeSlots": slots,
    })
    message = _message(current, final, p_need, d_need, deferred)
    return Decision(final[0], final[1], _reason(current, final), message, state,
                    limited="; ".join(limited) or None, inputs=_finite_inputs(inputs))


def _burst_peak(snapshot: MetricsSnapshot, cfg: PlannerConfig) -> float:
    """The arrival peak to plan for: the recent short-term peak, at most `max_burst_factor`
    times the current arrivals (NaN stays unknown).

    Together with the prefill hold on a rising trend (a pod started after the ramp began comes
    a start-up late) this replaces what a stale peak gave by accident: on a wave (Dynamo issue
    #10528's 1 <-> 24 req/s) the uncapped peak kept the previous crest's replicas through the
    trough, ready for the next rise, but also kept a declining day's and a faded mix's."""
    peak, arrivals = snapshot.peak_arrival_rate, snapshot.arrival_rate
    if known(peak) and known(arrivals):
        return min(peak, arrivals * cfg.max_burst_factor)
    return peak


def _panic(snapshot: MetricsSnapshot, replicas: Replicas, cfg: PlannerConfig,
           state: PlannerState, now: float, needs: tuple[RoleNeed, RoleNeed],
           p_corr: float) -> tuple[PlannerState, bool]:
    """Knative-KPA-style panic: a role needing `panic_threshold` times its ready replicas, or a
    waiting queue that grew since the last interval while it is already long (prefill: its
    wait exceeds the TTFT aim; decode: sequences wait for slots), starts or extends a panic
    window of `panic_seconds`."""
    p_wait = snapshot.prefill.waiting if known(snapshot.prefill.waiting) else 0.0
    d_wait = snapshot.decode.waiting if known(snapshot.decode.waiting) else 0.0
    last_p, last_d = state.last_waiting
    ready = (replicas.prefill.ready, replicas.decode.ready)
    burst = any(need.replicas >= cfg.panic_threshold * max(r, 1)
                for need, r in zip(needs, ready, strict=True))
    per_replica = cfg.capacity.prefill_tokens_per_second * p_corr
    aim = cfg.ttft_target_seconds * cfg.latency_aim
    prefill_backlog = p_wait > last_p and queue_wait(snapshot.prefill, ready[0],
                                                     per_replica) > aim
    decode_backlog = d_wait > last_d and d_wait >= max(1.0, ready[1])
    state = replace(state, last_waiting=(p_wait, d_wait))
    if burst or prefill_backlog or decode_backlog:
        state = replace(state, panic_until=now + cfg.panic_seconds)
    return state, state.panic_until is not None and now < state.panic_until


def _within_budget(cfg: PlannerConfig, replicas: Replicas, current: tuple[int, int],
                   target: tuple[int, int], needs: tuple[RoleNeed, RoleNeed]
                   ) -> tuple[tuple[int, int], bool]:
    """Limit growth so that every allocated accelerator (kept, new, and draining pods, including
    those this decision starts draining) stays within the budget. Returns (split, deferred)."""
    budget = cfg.accelerator_budget
    if budget is None:
        return target, False
    draining = accelerators(cfg, replicas.prefill.terminating, replicas.decode.terminating)
    split = list(target)
    deferred = False

    def peak() -> int:
        return accelerators(cfg, max(split[0], current[0]), max(split[1], current[1])) + draining

    while peak() > budget and (split[0] > current[0] or split[1] > current[1]):
        growing = [r for r in (0, 1) if split[r] > current[r]]
        role = min(growing, key=lambda r: needs[r].pressure(split[r]))
        split[role] -= 1
        deferred = True
    bounds = (cfg.prefill, cfg.decode)
    while accelerators(cfg, *split) > budget:  # the budget was lowered below what runs now
        shrinkable = [r for r in (0, 1) if split[r] > bounds[r].min_replicas]
        if not shrinkable:
            break
        role = min(shrinkable, key=lambda r: needs[r].pressure(split[r] - 1))
        split[role] -= 1
    return (split[0], split[1]), deferred


def _stabilized(state: PlannerState, now: float, cfg: PlannerConfig, role: int, raw: int,
                current: int) -> int:
    """HPA-style windows: scale up to the lowest, down to the highest recommendation seen in the
    window, so a single noisy interval neither adds nor removes replicas."""
    def recent(seconds: float) -> list[int]:
        return [(r.prefill, r.decode)[role] for r in state.recommendations
                if r.time >= now - seconds]

    if raw > current:
        return max(current, min(recent(cfg.scale_up_stabilization_seconds) or [raw]))
    if raw < current:
        return min(current, max(recent(cfg.scale_down_stabilization_seconds) or [raw]))
    return current


def _hysteresis(need: float, current: int, dead_band: float) -> int:
    if need > current * (1.0 + dead_band):
        return math.ceil(need - 1e-9)
    down = math.ceil(need / (1.0 - dead_band) - 1e-9) if dead_band < 1.0 else current
    return down if down < current else current


def _hold_then_decay(replicas: Replicas, cfg: PlannerConfig, state: PlannerState, now: float,
                     since: float | None, reason: str, what: str, current: tuple[int, int],
                     inputs: dict[str, float | int | str]) -> Decision:
    if since is None:
        if reason == "MetricsMissing":
            state = replace(state, last_metrics_time=now)
        else:
            state = replace(state, last_traffic_time=now)
        since = now
    quiet = now - since
    if quiet < cfg.hold_seconds:
        return _hold(replicas, state, reason, f"{what} for {quiet:.0f}s; holding replicas",
                     current=current, inputs=inputs)
    final = (max(cfg.prefill.min_replicas, current[0] - cfg.max_step),
             max(cfg.decode.min_replicas, current[1] - cfg.max_step))
    verb = "decaying to minimums" if final != current else "at minimums"
    return Decision(final[0], final[1], reason, f"{what} for {quiet:.0f}s; {verb}", state,
                    inputs=_finite_inputs(inputs))


def _hold(replicas: Replicas, state: PlannerState, reason: str, message: str,
          current: tuple[int, int] | None = None, limited: str | None = None,
          inputs: dict[str, float | int | str] | None = None) -> Decision:
    p, d = current or (replicas.prefill.desired, replicas.decode.desired)
    return Decision(p, d, reason, message, state, limited=limited,
                    inputs=_finite_inputs(inputs or {}))


def _reason(current: tuple[int, int], final: tuple[int, int]) -> str:
    ups = [f > c for f, c in zip(final, current, strict=True)]
    downs = [f < c for f, c in zip(final, current, strict=True)]
    if any(ups) and any(downs):
        return "Rebalance"
    if any(ups):
        return "ScaleUp"
    if any(downs):
        return "ScaleDown"
    return "Hold"


def _message(current: tuple[int, int], final: tuple[int, int], p_need: RoleNeed,
             d_need: RoleNeed, deferred: bool) -> str:
    parts = [f"{name} {c}->{f} (needs {need.replicas:.1f}: {need.signal})"
             for name, c, f, need in (("prefill", current[0], final[0], p_need),
                                      ("decode", current[1], final[1], d_need))]
    if deferred:
        parts.append("growth waits for draining pods to free accelerators")
    return "; ".join(parts)


def _steady(pods: RoleReplicas) -> bool:
    """Latency only says something about capacity when every wanted pod serves and none is
    starting or leaving (a backlog left from a scale-up is not a capacity error)."""
    return (pods.ready == pods.desired and pods.starting == 0 and pods.pending == 0
            and pods.terminating == 0)


def _correction(previous: float, ratio: float, metrics: RoleMetrics, prior_rate: float,
                pods: RoleReplicas, cfg: PlannerConfig, scaled_latency: bool = False) -> float:
    """One role's capacity correction after this interval from its latency over its aim
    (prefill: the binding TTFT, a priority class's included; decode: ITL, see
    updated_correction's scaled_latency)."""
    return updated_correction(
        previous, ratio,
        _utilization(metrics.token_rate, pods.ready, prior_rate * previous),
        cfg, _steady(pods), scaled_latency)


def _utilization(rate: float, ready: int, per_replica: float) -> float:
    if ready <= 0 or not known(rate):
        return math.nan
    return rate / (ready * per_replica)


def _inputs(snapshot: MetricsSnapshot) -> dict[str, float | int | str]:
    values: dict[str, float | int | str] = {}
    values.update(snapshot.prefill.as_inputs("prefill"))
    values.update(snapshot.decode.as_inputs("decode"))
    values["arrivalRate"] = snapshot.arrival_rate
    values["peakArrivalRate"] = snapshot.peak_arrival_rate
    return values


def _finite_inputs(inputs: dict[str, float | int | str]) -> dict[str, float | int | str]:
    """Status and Events carry JSON, which has no NaN: unknown values are left out."""
    out: dict[str, float | int | str] = {}
    for key, value in inputs.items():
        if isinstance(value, float):
            if math.isfinite(value):
                out[key] = round(value, 4)
        else:
            out[key] = value
    return out

