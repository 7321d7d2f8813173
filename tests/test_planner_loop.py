"""The loop's pure parts: spec -> planner settings, pods -> replica counts, decision -> status,
and the PromQL mapping (with a stand-in query function: pure logic, no Prometheus here)."""

import math
from datetime import UTC, datetime, timedelta

from pdserve.api.spec import LLMServiceSpec
from pdserve.autoscaler import PlannerState
from pdserve.autoscaler.prometheus_source import (
    PrometheusSource,
    PrometheusUnavailable,
    Selector,
    class_ttft_query,
    queries,
)
from pdserve.autoscaler.state import Decision
from pdserve.controller.planner_inputs import (
    autoscaling_status,
    limited_condition,
    planner_config,
    pod_phase,
    replicas_from_cluster,
    scaling_limited,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def spec(router=None, **autoscaling):
    values = {"enabled": True, "prometheusUrl": "http://prom:9090", "acceleratorBudget": 6,
              "prefill": {"minReplicas": 1, "maxReplicas": 4},
              "decode": {"minReplicas": 1, "maxReplicas": 5},
              "slo": {"ttftMilliseconds": 1500, "tpotMilliseconds": 80}}
    values.update(autoscaling)
    return LLMServiceSpec.model_validate({"model": {"source": {"builtin": "tiny"}},
                                          "autoscaling": values, "router": router or {}})


def pod(role, *, ready=False, scheduled=True, deleting=False, age=0):
    conditions = [{"type": "PodScheduled", "status": "True" if scheduled else "False"}]
    if ready:
        conditions.append({"type": "Ready", "status": "True"})
    meta = {"labels": {"pdserve.dev/role": role},
            "creationTimestamp": (NOW - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-25T12:00:00Z"
    return {"metadata": meta, "status": {"conditions": conditions}}


def test_spec_maps_to_planner_settings():
    cfg = planner_config(spec(maxStep=3, intervalSeconds=20))
    assert cfg.ttft_target_seconds == 1.5 and cfg.itl_target_seconds == 0.08
    assert (cfg.prefill.max_replicas, cfg.decode.max_replicas) == (4, 5)
    assert cfg.accelerator_budget == 6 and cfg.max_step == 3 and cfg.interval_seconds == 20
    assert cfg.class_ttft_targets == {}
    cfg.validate()


def test_priority_class_targets_reach_the_planner():
    parsed = spec({"priorityClasses": [{"name": "gold", "priority": 0, "ttftTargetSeconds": 0.5},
                                       {"name": "batch", "priority": 10}]})
    # A class without a target is left out: it is planned by the spec-wide target only.
    assert planner_config(parsed).class_ttft_targets == {"gold": 0.5}


def test_pods_are_classified_like_the_planner_needs():
    pods = [pod("prefill", ready=True), pod("prefill"), pod("decode", ready=True),
            pod("decode", scheduled=False, age=90), pod("decode", ready=True, deleting=True)]
    assert [pod_phase(p) for p in pods] == ["ready", "starting", "ready", "pending",
                                             "terminating"]
    deployments = {"prefill": {"spec": {"replicas": 2}}, "decode": {"spec": {"replicas": 2}}}
    reps = replicas_from_cluster(deployments, pods, "pdserve.dev/role", NOW)
    assert (reps.prefill.desired, reps.prefill.ready, reps.prefill.starting) == (2, 1, 1)
    assert (reps.decode.pending, reps.decode.terminating) == (1, 1)
    assert reps.decode.pending_seconds == 90


def decision(reason="ScaleUp", limited=None):
    return Decision(2, 3, reason, "decode 2->3", PlannerState(), limited,
                    {"decodeNeed": 2.6, "arrivalRate": 4.0})


def test_status_and_condition_say_what_happened():
    status = autoscaling_status(decision(), "2026-11-25T12:00:00Z")
    assert status["prefillReplicas"] == 2 and status["decodeReplicas"] == 3
    assert status["reason"].startswith("ScaleUp") and status["inputs"]["decodeNeed"] == 2.6
    assert limited_condition(decision()) == (False, "WithinLimits", "")
    assert limited_condition(decision(limited="budget binds"))[0] is True
    held = limited_condition(decision("PrometheusUnavailable"), "connection refused")
    assert held[:2] == (True, "PrometheusUnavailable") and "connection refused" in held[2]


def test_scaling_limited_keeps_its_transition_time_while_its_status_holds():
    before = {"type": "ScalingLimited", "status": "True", "lastTransitionTime": "T0"}
    after = scaling_limited(before, True, "ScalingLimited", "x", 4, "T1")
    assert after["lastTransitionTime"] == "T0" and after["observedGeneration"] == 4
    assert scaling_limited(before, False, "WithinLimits", "", 4, "T2")["lastTransitionTime"] \
        == "T2"
    assert scaling_limited(None, False, "WithinLimits", "", None, "T3") == {
        "type": "ScalingLimited", "status": "False", "reason": "WithinLimits", "message": "",
        "lastTransitionTime": "T3"}


def test_queries_select_by_namespace_llmservice_and_role():
    for promql in queries(Selector("ns", "svc")).values():
        assert 'namespace="ns"' in promql and 'llmservice="svc"' in promql


def test_snapshot_maps_results_and_keeps_nan():
    answers = {"prefill_prompt_rate": "1000", "prefill_cache_hit_rate": "200",
               "router_ttft": "NaN", "prefill_ttft": "0.4", "decode_generation_rate": "50"}
    promql = {v: k for k, v in queries(Selector("ns", "svc")).items()}
    by_class = [{"metric": {"priority_class": "gold"}, "value": [0, "0.3"]},
                {"metric": {"priority_class": "batch"}, "value": [0, "NaN"]}]

    def query(text):
        if text == class_ttft_query(Selector("ns", "svc")):
            return by_class
        value = answers.get(promql[text])
        return [] if value is None else [{"metric": {}, "value": [0, value]}]

    snap = PrometheusSource("http://unused", query=query).snapshot(Selector("ns", "svc"), 1.0)
    assert snap.prefill.token_rate == 800.0
    assert snap.prefill.latency_seconds == 0.4  # router TTFT NaN: falls back to prefill's
    assert snap.decode.token_rate == 50.0
    assert math.isnan(snap.decode.latency_seconds) and math.isnan(snap.arrival_rate)
    assert snap.class_ttft["gold"] == 0.3 and math.isnan(snap.class_ttft["batch"])


def test_unreachable_prometheus_is_an_outage_not_a_crash():
    source = PrometheusSource("http://127.0.0.1:9", timeout_seconds=1)
    try:
        source.snapshot(Selector("ns", "svc"), 0.0)
    except PrometheusUnavailable as exc:
        assert "Connection" in str(exc) or "connect" in str(exc).lower()
    else:
        raise AssertionError("expected PrometheusUnavailable")
