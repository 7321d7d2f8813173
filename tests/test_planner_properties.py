"""Properties over many random inputs: finite, within bounds, within budget, step bounded."""

import math
import random

import pytest

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
from pdserve.autoscaler.need import CORRECTION_BOUNDS


def maybe(rng, low, high):
    roll = rng.random()
    if roll < 0.1:
        return math.nan
    if roll < 0.15:
        return 0.0
    if roll < 0.17:
        return math.inf
    return rng.uniform(low, high)


def random_metrics(rng):
    return RoleMetrics(maybe(rng, 0, 1e5), maybe(rng, 0, 100), maybe(rng, 0, 10),
                       maybe(rng, 0, 500), maybe(rng, 0, 500), maybe(rng, 0, 1))


def random_case(rng):
    a_p, a_d = rng.choice([1, 2, 4]), rng.choice([1, 2, 4])
    pre = RoleBounds(rng.randint(1, 3), rng.randint(3, 12), a_p)
    dec = RoleBounds(rng.randint(1, 3), rng.randint(3, 12), a_d)
    minimum = pre.min_replicas * a_p + dec.min_replicas * a_d
    budget = rng.choice([None, minimum, minimum + rng.randint(0, 40)])
    cfg = PlannerConfig(
        ttft_target_seconds=rng.uniform(0.1, 5), itl_target_seconds=rng.uniform(0.01, 0.2),
        prefill=pre, decode=dec,
        capacity=CapacityPrior(rng.uniform(100, 50_000), rng.uniform(50, 5_000),
                               rng.uniform(1, 256)),
        accelerator_budget=budget, max_step=rng.randint(1, 4), dead_band=rng.uniform(0, 0.3),
        scale_down_stabilization_seconds=rng.choice([0, 60, 300]),
        hold_seconds=rng.choice([0, 120]))

    def role(bounds):
        desired = rng.randint(bounds.min_replicas, bounds.max_replicas)
        return RoleReplicas(desired, rng.randint(0, desired), rng.randint(0, 2), rng.randint(0, 2),
                            rng.randint(0, 2), rng.uniform(0, 200))

    reps = Replicas(role(pre), role(dec))
    if budget is not None:  # start within budget, as the loop keeps it
        while (reps.prefill.desired * a_p + reps.decode.desired * a_d > budget):
            p, d = reps.prefill, reps.decode
            if p.desired > pre.min_replicas:
                p = RoleReplicas(p.desired - 1, min(p.ready, p.desired - 1))
            else:
                d = RoleReplicas(d.desired - 1, min(d.ready, d.desired - 1))
            reps = Replicas(p, d)
    snapshot = None if rng.random() < 0.05 else MetricsSnapshot(
        0.0, random_metrics(rng), random_metrics(rng))
    return cfg, reps, snapshot


@pytest.mark.parametrize("seed", range(8))
def test_decisions_are_always_sane(seed):
    rng = random.Random(seed)
    for _ in range(400):
        cfg, reps, snapshot = random_case(rng)
        state = PlannerState(last_metrics_time=rng.choice([None, -500.0]),
                             last_traffic_time=rng.choice([None, -500.0]),
                             prefill_correction=rng.uniform(0.5, 2),
                             decode_correction=rng.uniform(0.5, 2))
        d = plan(snapshot, reps, cfg, state, 0.0)
        for bounds, value, cur in ((cfg.prefill, d.prefill_replicas, reps.prefill.desired),
                                   (cfg.decode, d.decode_replicas, reps.decode.desired)):
            assert isinstance(value, int)
            assert bounds.min_replicas <= value <= bounds.max_replicas
            if d.inputs.get("panic") == "yes":  # up at once; down by max_step at most
                assert value - cur >= -cfg.max_step
            else:
                assert abs(value - cur) <= cfg.max_step
        if cfg.accelerator_budget is not None:
            used = (d.prefill_replicas * cfg.prefill.accelerators_per_replica
                    + d.decode_replicas * cfg.decode.accelerators_per_replica)
            assert used <= cfg.accelerator_budget
        for value in d.inputs.values():
            assert not isinstance(value, float) or math.isfinite(value)
        assert math.isfinite(d.state.prefill_correction)
        assert CORRECTION_BOUNDS[0] <= d.state.decode_correction <= CORRECTION_BOUNDS[1]


@pytest.mark.parametrize("seed", range(4))
def test_never_scales_up_on_unknown_load(seed):
    rng = random.Random(100 + seed)
    for _ in range(300):
        cfg, reps, _ = random_case(rng)
        unknown = MetricsSnapshot(0.0, RoleMetrics(), random_metrics(rng))
        d = plan(unknown, reps, cfg, PlannerState(last_metrics_time=rng.uniform(-900, 0)), 0.0)
        assert d.prefill_replicas <= max(reps.prefill.desired, cfg.prefill.min_replicas)
        assert d.decode_replicas <= max(reps.decode.desired, cfg.decode.min_replicas)
