"""The planner under bursts and waves: the arrival peak counts for at most `max_burst_factor`
times the current arrivals, prefill does not scale down while its demand is rising, and decode
learns a capacity the prior underestimates from comfortable ITL at any load."""

import pytest

from pdserve.autoscaler import (
    CapacityPrior,
    MetricsSnapshot,
    PlannerConfig,
    PlannerConfigError,
    PlannerState,
    Replicas,
    RoleBounds,
    RoleMetrics,
    RoleReplicas,
    plan,
)
from pdserve.autoscaler.need import updated_correction


def config(**overrides):
    values = dict(
        ttft_target_seconds=1.0, itl_target_seconds=0.05,
        prefill=RoleBounds(1, 20), decode=RoleBounds(1, 20),
        capacity=CapacityPrior(prefill_tokens_per_second=10_000, decode_tokens_per_second=1_000,
                               decode_max_sequences=64),
        target_utilization=0.5, peak_utilization=0.5, max_step=20, panic_threshold=100.0,
    )
    values.update(overrides)
    return PlannerConfig(**values)


def snapshot(t, prompt_rate, arrivals=10.0, peak=float("nan")):
    """`prompt_rate` prompt tok/s over `arrivals` req/s (all served)."""
    return MetricsSnapshot(t, RoleMetrics(prompt_rate, arrivals, 0.2, 0.0, 0.0),
                           RoleMetrics(500, arrivals, 0.01, 10.0, 0.0, 0.1),
                           arrival_rate=arrivals, peak_arrival_rate=peak)


def both(p, d=2):
    return Replicas(RoleReplicas(p, p), RoleReplicas(d, d))


def prefill_need(peak):
    return plan(snapshot(0, 20_000, peak=peak), both(4), config(), PlannerState(),
                0).inputs["prefillNeed"]


def test_the_peak_counts_up_to_the_burst_factor():
    # 2,000 tokens a request at 10 req/s; 5,000 tok/s a replica at 50%: 4 replicas by load.
    assert prefill_need(float("nan")) == 4.0
    assert prefill_need(15.0) == 6.0  # a 1.5x burst is planned for
    # A peak of 5x the arrivals is mostly load since gone: planned as a 2x burst.
    assert prefill_need(50.0) == prefill_need(20.0) == 8.0


def test_a_burst_factor_below_one_is_refused():
    with pytest.raises(PlannerConfigError):
        config(max_burst_factor=0.9).validate()


def remembered(prompt_rates):
    """The planner's memory of prompt tok/s at t=0, 30 and 60."""
    state = PlannerState()
    for t, rate in zip((0, 30, 60), prompt_rates, strict=True):
        state = state.remember_demand(t, rate, 500, 180.0)
    return state


def run(prompt_rates):
    """Plan 12 prefill replicas at t=90 after `prompt_rates`: the load asks for 4."""
    return plan(snapshot(90, 20_000), both(12), config(), remembered(prompt_rates), 90)


def test_prefill_does_not_scale_down_on_a_rising_trend():
    # Rising 5k tok/s every 30 s: the forecast (35k tok/s in 90 s) asks for 7 of the 12, but a
    # pod removed now would be missed a start-up later.
    rising = run((5_000, 10_000, 15_000))
    assert rising.inputs["prefillNeed"] == pytest.approx(7.0)
    assert rising.prefill_replicas == 12
    # Flat: the same load scales down to what it needs (4, over the 10% dead band).
    assert run((20_000, 20_000, 20_000)).prefill_replicas == 5


def test_the_hold_gives_way_to_a_binding_budget():
    # Decode needs 12 of a 14-accelerator budget: prefill shrinks on a rising trend too.
    busy = MetricsSnapshot(90, RoleMetrics(20_000, 10.0, 0.2, 0.0, 0.0),
                           RoleMetrics(6_000, 10.0, 0.01, 10.0, 0.0, 0.1), arrival_rate=10.0)
    decision = plan(busy, both(8, 6), config(accelerator_budget=14),
                    remembered((5_000, 10_000, 15_000)), 90)
    assert decision.prefill_replicas < 8
    assert decision.prefill_replicas + decision.decode_replicas <= 14


@pytest.mark.parametrize(("ratio", "utilization", "scaled", "grows"), [
    (0.3, 0.4, True, True),    # 0.3 x 0.5 / 0.4 = 0.375: comfortable at the planned load
    (0.3, 0.4, False, False),  # the plain rule waits for load above the plan
    (0.6, 0.4, True, False),   # 0.75 scaled: not comfortable
    (0.3, 0.0, True, False),   # no load: no evidence
])
def test_decode_learns_from_comfortable_itl_scaled_to_the_planned_load(ratio, utilization,
                                                                       scaled, grows):
    corrected = updated_correction(1.0, ratio, utilization, config(), scaled_latency=scaled)
    assert (corrected > 1.0) is grows
