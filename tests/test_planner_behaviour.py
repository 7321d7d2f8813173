"""The planner's specified behaviours, one scenario each."""

import math

from pdserve.autoscaler import (
    CapacityPrior,
    MetricsSnapshot,
    PlannerConfig,
    PlannerState,
    Replicas,
    RoleBounds,
    RoleMetrics,
    RoleReplicas,
    plan,
)
from pdserve.autoscaler.deletion_cost import deletion_costs
from pdserve.autoscaler.state import Recommendation

NAN = math.nan


def config(budget=None, **overrides):
    values = dict(
        ttft_target_seconds=1.0, itl_target_seconds=0.05,
        prefill=RoleBounds(1, 10), decode=RoleBounds(1, 10),
        capacity=CapacityPrior(prefill_tokens_per_second=10_000, decode_tokens_per_second=1_000,
                               decode_max_sequences=64),
        accelerator_budget=budget, scale_down_stabilization_seconds=120, hold_seconds=300,
    )
    values.update(overrides)
    return PlannerConfig(**values)


def replicas(p, d, **decode_extra):
    return Replicas(RoleReplicas(p, p), RoleReplicas(d, d, **decode_extra))


def load(prefill_rate, decode_rate, ttft=0.5, itl=0.025, running=10.0):
    return RoleMetrics(prefill_rate, 1.0, ttft, 0.0, 0.0, NAN), RoleMetrics(
        decode_rate, 1.0, itl, running, 0.0, 0.3)


def snap(t, pre_rate, dec_rate, **kw):
    pre, dec = load(pre_rate, dec_rate, **kw)
    return MetricsSnapshot(t, pre, dec)


def test_scales_each_role_to_its_load():
    # 40k prompt tok/s at 10k per replica and 80% utilization -> 5; 2.4k tok/s decode -> 3.
    d = plan(snap(0, 40_000, 2_400), replicas(2, 2), config(max_step=10), PlannerState(), 0)
    assert (d.prefill_replicas, d.decode_replicas) == (5, 3)
    assert d.reason == "ScaleUp"
    assert d.inputs["prefillNeed"] == 5.0


def test_step_is_bounded():
    d = plan(snap(0, 90_000, 200), replicas(1, 1), config(max_step=2, panic_threshold=100),
             PlannerState(), 0)
    assert d.prefill_replicas == 3


def test_panic_scales_up_at_once_and_never_down_while_it_lasts():
    # Needing 9x the ready prefill replicas is a burst: no max step (KPA's panic mode).
    d = plan(snap(0, 90_000, 200), replicas(1, 1), config(max_step=2), PlannerState(), 0)
    assert d.prefill_replicas == 10 and d.inputs["panic"] == "yes"
    # The load is gone 30 s later, but the panic window (60 s) holds the replicas.
    d2 = plan(snap(30, 1_000, 200), replicas(10, 1), config(max_step=2), d.state, 30)
    assert d2.prefill_replicas == 10 and d2.inputs["panic"] == "yes"
    d3 = plan(snap(90, 1_000, 200), replicas(10, 1), config(max_step=2), d2.state, 90)
    assert d3.inputs["panic"] == "no"


def test_panic_stays_within_the_budget():
    d = plan(snap(0, 90_000, 200), replicas(1, 1), config(budget=6, max_step=2),
             PlannerState(), 0)
    assert d.prefill_replicas + d.decode_replicas <= 6 and d.prefill_replicas == 5


def test_growing_prefill_queue_starts_panic():
    # 1,000 prompts of 2,000 tokens wait: 50 s of the 4 replicas' work, far past the TTFT aim.
    pre = RoleMetrics(20_000, 10.0, 0.5, 2.0, 1_000.0, NAN)
    dec = RoleMetrics(400, 1.0, 0.025, 10.0, 0.0, 0.3)
    d = plan(MetricsSnapshot(0, pre, dec), replicas(4, 5), config(max_step=1), PlannerState(), 0)
    assert d.inputs["panic"] == "yes"
    assert d.prefill_replicas > 5  # the queue's drain, past max_step


def test_decode_slots_are_learned_from_full_replicas():
    # The fullest pod runs 20 sequences while others wait: its KV holds 20, not the prior's 64.
    dec = RoleMetrics(1_000, 1.0, 0.025, 40.0, 30.0, 0.9, running_max=20.0)
    pre = RoleMetrics(8_000, 1.0, 0.5, 0.0, 0.0, NAN)
    d = plan(MetricsSnapshot(0, pre, dec), replicas(2, 2), config(max_step=10), PlannerState(), 0)
    assert d.state.decode_slots == 20.0
    assert d.decode_replicas >= 5  # 70 sequences over 20 slots at the KV watermark


def test_latency_miss_adds_replicas_even_when_capacity_model_says_enough():
    d = plan(snap(0, 8_000, 400, ttft=3.0), replicas(4, 1), config(), PlannerState(), 0)
    assert d.prefill_replicas > 4
    assert "TTFT" in d.message


def test_capacity_correction_learns_from_latency():
    state = PlannerState()
    for t in range(0, 300, 30):
        d = plan(snap(t, 8_000, 400, ttft=3.0), replicas(4, 1), config(), state, t)
        state = d.state
    assert state.prefill_correction < 1.0


def test_dead_band_ignores_small_changes():
    cfg = config(scale_down_stabilization_seconds=0)
    # Need 2.1 replicas (16.8k / 8k) with 2 running: within 10%, hold.
    d = plan(snap(0, 16_800, 800), replicas(2, 1), cfg, PlannerState(), 0)
    assert d.prefill_replicas == 2 and d.reason == "Hold"


def test_scale_down_waits_for_stabilization_window():
    cfg = config(scale_down_stabilization_seconds=120, max_step=10)
    state = PlannerState()
    d = plan(snap(0, 40_000, 800), replicas(5, 1), cfg, state, 0)
    state = d.state
    prefill = []
    for t in range(30, 300, 30):
        d = plan(snap(t, 8_000, 800), replicas(d.prefill_replicas, 1), cfg, state, t)
        state = d.state
        prefill.append(d.prefill_replicas)
    assert prefill[0] == 5 and prefill[2] == 5  # within 120 s of the busy recommendation
    assert prefill[-1] == 2  # need 1.0 keeps a 10% dead band: ceil(1.0 / 0.9)


def test_budget_split_minimises_worst_pressure():
    # Both roles want 5 but only 6 accelerators exist: 3 + 3 keeps the worst pressure lowest.
    cfg = config(budget=6, max_step=10)
    d = plan(snap(0, 40_000, 4_000), replicas(1, 1), cfg, PlannerState(), 0)
    assert (d.prefill_replicas, d.decode_replicas) == (3, 3)
    assert d.limited and "budget 6 binds" in d.limited


def test_budget_shifts_toward_the_pressed_role():
    cfg = config(budget=8, max_step=10, scale_down_stabilization_seconds=0)
    # Story-heavy load: decode needs ~7.5, prefill ~0.5. From 4+4 the planner shrinks prefill
    # first; decode grows only after the prefill pods have drained.
    first = plan(snap(0, 4_000, 6_000), replicas(4, 4), cfg, PlannerState(), 0)
    assert first.prefill_replicas < 4 and first.decode_replicas == 4
    assert "draining" in first.message
    drained = Replicas(RoleReplicas(first.prefill_replicas, first.prefill_replicas),
                       RoleReplicas(4, 4))
    second = plan(snap(30, 4_000, 6_000), drained, cfg, first.state, 30)
    assert second.decode_replicas > 4
    assert second.prefill_replicas + second.decode_replicas <= 8


def test_draining_pods_count_against_the_budget():
    cfg = config(budget=6, max_step=10)
    reps = Replicas(RoleReplicas(2, 2, terminating=2), RoleReplicas(2, 2))
    d = plan(snap(0, 1_000, 5_000), reps, cfg, PlannerState(), 0)
    assert d.decode_replicas == 2  # 2 + 2 + 2 draining already use all 6


def test_prometheus_outage_holds_and_says_so():
    d = plan(None, replicas(3, 4), config(), PlannerState(), 0)
    assert (d.prefill_replicas, d.decode_replicas, d.reason) == (3, 4, "PrometheusUnavailable")


def test_missing_metrics_hold_then_decay():
    cfg = config(hold_seconds=300, max_step=1)
    missing = MetricsSnapshot(0)
    state = PlannerState(last_metrics_time=0.0)
    d = plan(missing, replicas(3, 4), cfg, state, 100)
    assert (d.prefill_replicas, d.decode_replicas, d.reason) == (3, 4, "MetricsMissing")
    d = plan(missing, replicas(3, 4), cfg, d.state, 400)
    assert (d.prefill_replicas, d.decode_replicas) == (2, 3)
    assert "decaying" in d.message


def test_zero_traffic_never_nan_and_decays_to_minimums():
    cfg = config(hold_seconds=60, max_step=1)
    idle = MetricsSnapshot(0, RoleMetrics(0.0, 0.0, NAN, 0.0, 0.0, 0.0),
                           RoleMetrics(0.0, 0.0, NAN, 0.0, 0.0, 0.0))
    state, reps = PlannerState(last_traffic_time=0.0), (3, 3)
    seen = []
    for t in range(0, 600, 30):
        d = plan(idle, replicas(*reps), cfg, state, t)
        state, reps = d.state, (d.prefill_replicas, d.decode_replicas)
        seen.append(reps)
        assert all(math.isfinite(v) for v in d.inputs.values() if isinstance(v, float))
    assert seen[0] == (3, 3) and seen[-1] == (1, 1)


def test_pending_replicas_are_not_capacity_and_limit_scaling():
    cfg = config(max_step=10)
    reps = Replicas(RoleReplicas(2, 2), RoleReplicas(5, 3, pending=2, pending_seconds=120))
    d = plan(snap(0, 8_000, 6_000, itl=0.08), reps, cfg, PlannerState(), 0)
    assert d.decode_replicas == 5  # no growth while pods cannot be scheduled
    assert d.limited and "Pending" in d.limited


def test_invalid_budget_is_a_condition_not_a_crash():
    d = plan(snap(0, 1, 1), replicas(1, 1), config(budget=1), PlannerState(), 0)
    assert d.reason == "InvalidConfig" and d.limited


def test_state_round_trips_through_status_json():
    state = PlannerState((Recommendation(1.0, 2, 3),), 5.0, None, 0.9, 1.1)
    assert PlannerState.from_dict(state.to_dict()) == state


def test_deletion_cost_orders_pods_by_in_flight_work():
    costs = deletion_costs({"idle": 0.0, "busy": 7.0, "unknown": NAN, "neg": -1.0})
    assert costs == {"idle": "0", "busy": "700", "unknown": "0", "neg": "0"}


def test_saturated_role_is_sized_by_arrivals_not_throughput():
    # Prefill serves 20k tok/s at 10 req/s (2k tokens each) but 30 req/s arrive: demand is 60k.
    pre = RoleMetrics(20_000, 10.0, 0.5, 4.0, 0.0, NAN)
    dec = RoleMetrics(500, 10.0, 0.025, 10.0, 0.0, 0.2)
    d = plan(MetricsSnapshot(0, pre, dec, arrival_rate=30.0), replicas(2, 1),
             config(max_step=10), PlannerState(), 0)
    assert d.prefill_replicas == 8  # 60k / (10k x 0.8) = 7.5


def test_backlog_while_pods_start_is_not_taken_for_a_capacity_error():
    # TTFT far over target while new prefill pods start: no lowering of the capacity estimate.
    starting = Replicas(RoleReplicas(6, 2, starting=4), RoleReplicas(1, 1))
    d = plan(snap(0, 8_000, 400, ttft=3.0), starting, config(), PlannerState(), 0)
    assert d.state.prefill_correction == 1.0


def test_decode_slots_are_not_learned_from_sequences_waiting_for_their_kv():
    # Sequences wait on a decode pod whose KV is nearly empty: their KV is still arriving (the
    # handoff), so the fullest pod's 2 running says nothing about room.
    dec = RoleMetrics(1_000, 1.0, 0.025, 3.0, 4.0, 0.01, running_max=2.0)
    pre = RoleMetrics(8_000, 1.0, 0.5, 0.0, 0.0, NAN)
    d = plan(MetricsSnapshot(0, pre, dec), replicas(2, 2), config(max_step=10), PlannerState(), 0)
    assert d.state.decode_slots == config().capacity.decode_max_sequences
