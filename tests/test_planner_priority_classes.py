"""The planner scales prefill for the tightest priority class: the class whose router TTFT is
furthest above its own target binds, the spec-wide target still binds the overall figure, and
classes without a target or without samples are ignored. The per-class query selects by the
same scrape labels as the overall one."""

import math

import pytest
from promql_names import names

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
from pdserve.autoscaler.need import ttft_ratio
from pdserve.autoscaler.prometheus_source import (
    PRIORITY_CLASS,
    Selector,
    class_ttft_query,
    queries,
)
from pdserve.autoscaler.scrape_labels import SOURCES
from pdserve.router.metrics import RouterMetrics, StreamTimer

NAN = math.nan


def config(**overrides):
    values = dict(
        ttft_target_seconds=2.0, itl_target_seconds=0.05,
        prefill=RoleBounds(1, 10), decode=RoleBounds(1, 10),
        capacity=CapacityPrior(prefill_tokens_per_second=10_000, decode_tokens_per_second=1_000,
                               decode_max_sequences=64),
        latency_aim=0.5, class_ttft_targets={"gold": 0.4, "silver": 1.0},
    )
    values.update(overrides)
    return PlannerConfig(**values)


def snapshot(overall_ttft, class_ttft):
    # 32k prompt tok/s at 10k per replica and 80% utilization: 4 replicas by load alone.
    return MetricsSnapshot(0.0, RoleMetrics(32_000, 10.0, overall_ttft, 0.0, 0.0),
                           RoleMetrics(500, 10.0, 0.02, 10.0, 0.0, 0.3), class_ttft=class_ttft)


def test_the_class_furthest_above_its_target_binds():
    cfg = config()
    # Aims: overall 1.0 s, gold 0.2 s, silver 0.5 s.
    ratio, whose = ttft_ratio(snapshot(0.8, {}).prefill, {"gold": 0.3, "silver": 0.9}, cfg)
    assert (ratio, whose) == (pytest.approx(1.8), "class silver TTFT")
    ratio, whose = ttft_ratio(snapshot(0.8, {}).prefill, {"gold": 0.5, "silver": 0.9}, cfg)
    assert (ratio, whose) == (pytest.approx(2.5), "class gold TTFT")


def test_the_spec_wide_target_still_binds_the_overall_figure():
    ratio, whose = ttft_ratio(snapshot(3.0, {}).prefill, {"gold": 0.1}, config())
    assert (ratio, whose) == (pytest.approx(3.0), "TTFT")


def test_classes_without_a_target_or_without_samples_are_ignored():
    cfg = config()
    observed = {"bronze": 60.0, "gold": NAN, "silver": -1.0}  # bronze has no target
    assert ttft_ratio(snapshot(0.5, {}).prefill, observed, cfg) == (pytest.approx(0.5), "TTFT")
    ratio, whose = ttft_ratio(snapshot(NAN, {}).prefill, observed, cfg)
    assert math.isnan(ratio) and whose == "TTFT"


def test_a_missed_class_target_scales_prefill_where_the_overall_figure_would_not():
    ready = Replicas(RoleReplicas(4, 4), RoleReplicas(2, 2))
    calm = plan(snapshot(0.4, {"gold": 0.1}), ready, config(), PlannerState(), 0.0)
    assert calm.prefill_replicas == 4  # within every aim: no latency floor
    missed = plan(snapshot(0.4, {"gold": 0.3}), ready, config(), PlannerState(), 0.0)
    # gold at 1.5x its aim: the latency floor raises prefill by 1.5x (4 -> 6).
    assert missed.prefill_replicas == 6
    assert "class gold TTFT 1.50x aim" in missed.message
    assert missed.inputs["prefillTtftOf"] == "class gold TTFT"
    assert missed.inputs["prefillTtftOverAim"] == 1.5
    # Without class targets the same observation plans like the calm one.
    blind = plan(snapshot(0.4, {"gold": 0.3}), ready, config(class_ttft_targets={}),
                 PlannerState(), 0.0)
    assert blind.prefill_replicas == 4


def test_a_class_target_must_be_positive():
    with pytest.raises(PlannerConfigError):
        config(class_ttft_targets={"gold": 0.0}).validate()
    decision = plan(snapshot(0.4, {}), Replicas(RoleReplicas(2, 2), RoleReplicas(2, 2)),
                    config(class_ttft_targets={"gold": -1.0}), PlannerState(), 0.0)
    assert decision.reason == "InvalidConfig"


def test_the_class_query_is_the_overall_statistic_per_class_on_the_contract_labels():
    router = RouterMetrics("model")
    timer = StreamTimer(router, 0.0, priority_class="gold")
    timer.feed(b"data: {}\n\n")  # the first token of a gold request, as the router sees it
    exported = {s.name: s.labels for family in router.registry.collect() for s in family.samples}
    sel = Selector("ns", "svc")
    overall, per_class = names(queries(sel)["router_ttft"]), names(class_ttft_query(sel))
    for selector in per_class.selectors:
        assert exported[selector.metric][PRIORITY_CLASS] == "gold", selector.metric
    assert {s.matchers for s in per_class.selectors} == {s.matchers for s in overall.selectors}
    assert per_class.functions == overall.functions
    assert {label for s in per_class.selectors for label in s.labels()} <= set(SOURCES)
    assert per_class.grouping == {PRIORITY_CLASS}
