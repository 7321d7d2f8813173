"""KVTransferHealthy from the data plane's counters (pure: figures in, condition out), its
PromQL by the planner's label contract, and the operator's thin job around it."""

from __future__ import annotations

import math

import kopf
import pytest
from promql_names import exported_series, names
from test_controller_sync import MemoryKube

from pdserve.autoscaler.prometheus_source import PrometheusSource, Selector
from pdserve.autoscaler.scrape_labels import LLMSERVICE, NAMESPACE, SOURCES
from pdserve.controller import kv_health, kv_health_job
from pdserve.controller.kv_health import KVFigures, assess
from pdserve.controller.names import KV_HEALTH_FIELD_MANAGER
from pdserve.controller.router_counters import decisions, ready_router_addresses

NAN = math.nan


def figures(handoff=0.0, short=0.0, no_peer=0.0, no_target=0.0, failed=0.0, full=0.0,
            transfers=NAN, failures=NAN, recomputed=NAN, prefill=NAN) -> KVFigures:
    return KVFigures(60, {"handoff": handoff, "short_prompt": short, "no_prefill_peer": no_peer,
                          "no_kv_target": no_target, "prefill_failed": failed,
                          "decode_full": full},
                     transfers=transfers, transfer_failures=failures, recomputed=recomputed,
                     prefill_requests=prefill)


def test_kv_moving_is_true_with_the_share_that_moved():
    verdict = assess(figures(handoff=38.6, short=5, failed=1, transfers=39, failures=1,
                             recomputed=1, prefill=40), "Prometheus")
    assert (verdict.status, verdict.reason) == ("True", "KVMoving")
    assert verdict.message.startswith("39 of 40 long prompts in the last 60s (Prometheus)")
    assert "1 failed handoffs" in verdict.message


def test_failed_handoffs_are_false_naming_the_failing_transfers():
    verdict = assess(figures(handoff=2, failed=30, transfers=2, failures=90, recomputed=30,
                             prefill=92), "Prometheus")
    assert (verdict.status, verdict.reason) == ("False", "KVTransferFailing")
    assert "30 of 32 long prompts" in verdict.message
    assert "KV transfers from prefill to decode fail" in verdict.message
    assert "completed 2 KV transfers and failed 90" in verdict.message


def test_kv_that_never_arrives_counts_as_recomputed():
    # Prefill answered 200 but decode did not hold the transfer (expired): it recomputed.
    verdict = assess(figures(handoff=20, recomputed=15, transfers=20, failures=0), "p")
    assert (verdict.status, verdict.reason) == ("False", "KVTransferFailing")
    assert "15 handed-off KV never arrived" in verdict.message


def test_no_prefill_peer_is_false_and_says_the_prefill_tier_is_idle():
    verdict = assess(figures(no_peer=12, prefill=0), "p")
    assert (verdict.status, verdict.reason) == ("False", "NoPrefillPeer")
    assert "no ready prefill worker serves the decode workers' model" in verdict.message
    assert "the prefill workers answered 0 requests" in verdict.message


def test_decode_without_room_is_false_naming_the_overload():
    verdict = assess(figures(handoff=3, full=9, recomputed=9, transfers=3), "p")
    assert (verdict.status, verdict.reason) == ("False", "DecodeFull")
    assert "9 of 12 long prompts" in verdict.message and "overloaded" in verdict.message


def test_long_prompts_without_a_prefill_tier_are_false():
    verdict = assess(figures(no_target=7, handoff=1), "p")
    assert (verdict.status, verdict.reason) == ("False", "PrefillNotUsed")


def test_most_transfers_failing_is_false_even_when_retries_save_the_requests():
    verdict = assess(figures(handoff=10, transfers=10, failures=14), "p")
    assert (verdict.status, verdict.reason) == ("False", "KVTransferFailing")
    assert "failed 14 KV transfers and completed 10" in verdict.message


def test_a_minority_without_kv_stays_true():
    # One stray failure (a prefill pod killed mid-transfer) never flips the condition.
    assert assess(figures(handoff=6, failed=4, recomputed=4), "p").status == "True"


@pytest.mark.parametrize("given", [figures(), figures(short=9), figures(handoff=NAN),
                                   figures(handoff=0.4)])
def test_no_long_prompt_is_unknown(given):
    verdict = assess(given, "p")
    assert (verdict.status, verdict.reason) == ("Unknown", "NoTraffic")


def test_an_aggregated_plan_intends_no_transfer():
    verdict = kv_health.no_transfer_intended(0)
    assert verdict is not None and verdict.status == "True"
    assert verdict.reason == "NoTransferIntended" and "no KV transfer is intended" in (
        verdict.message)
    assert kv_health.no_transfer_intended(1) is None


def test_condition_keeps_its_transition_time_while_its_status_holds():
    verdict = kv_health.Verdict("False", "KVTransferFailing", "m")
    first = kv_health.condition(verdict, None, 3, "T1")
    assert first == {"type": "KVTransferHealthy", "status": "False",
                     "reason": "KVTransferFailing", "message": "m",
                     "lastTransitionTime": "T1", "observedGeneration": 3}
    assert kv_health.condition(verdict, first, 3, "T2")["lastTransitionTime"] == "T1"
    back = kv_health.Verdict("True", "KVMoving", "m")
    assert kv_health.condition(back, first, 3, "T3")["lastTransitionTime"] == "T3"


def test_queries_read_exported_series_by_the_contract_labels():
    series = exported_series()
    for name, promql in kv_health.queries(Selector("team-a", "chat", 60)).items():
        for selector in names(promql).selectors:
            assert selector.metric in series, (name, selector.metric)
            assert selector.labels() <= set(SOURCES), selector
            assert {(NAMESPACE, "=", "team-a"), (LLMSERVICE, "=", "chat")} <= set(
                selector.matchers)
        assert "[60s]" in promql


def test_figures_from_query_results():
    results = {"decisions": [({"reason": "handoff"}, 5.0), ({"reason": "prefill_failed"}, 2.0)],
               "transfers": [({}, 5.0)], "transfer_failures": []}
    found = kv_health.figures_from(results, 60)
    assert found.decided("handoff") == 5 and found.decided("prefill_failed") == 2
    assert found.transfers == 5 and math.isnan(found.transfer_failures)


def test_figures_between_two_reads_of_the_router_pods():
    before = {"r1": {"handoff": 10, "prefill_failed": 1}, "r2": {"handoff": 50}}
    after = {"r1": {"handoff": 14, "prefill_failed": 1}, "r2": {"handoff": 3},  # r2 restarted
             "r3": {"handoff": 99}}  # new since: no baseline
    found = kv_health.figures_between(before, after, 30)
    assert found is not None and found.decided("handoff") == 7
    assert found.decided("prefill_failed") == 0 and found.window_seconds == 30
    assert kv_health.figures_between({}, after, 30) is None


def test_router_counters_from_a_metrics_page():
    page = ('# TYPE pdserve_router_disaggregation_total counter\n'
            'pdserve_router_disaggregation_total{path="prefill_decode",reason="handoff"} 4.0\n'
            'pdserve_router_disaggregation_total{path="fallback",reason="prefill_failed"} 2.0\n'
            'pdserve_router_requests_total{path="/v1/completions",outcome="ok"} 6.0\n')
    assert decisions(page) == {"handoff": 4.0, "prefill_failed": 2.0}
    ready = {"type": "Ready", "status": "True"}
    scheduled = {"type": "PodScheduled", "status": "True"}
    pods = [{"metadata": {"name": name, "labels": {"pdserve.dev/role": role}},
             "status": {"podIP": ip, "conditions": [scheduled, ready] if up else [scheduled]}}
            for name, role, ip, up in [("r1", "router", "10.0.0.1", True),
                                       ("r2", "router", "10.0.0.2", False),
                                       ("p1", "prefill", "10.0.0.3", True)]]
    assert ready_router_addresses(pods) == {"r1": "http://10.0.0.1:8080/metrics"}


# --- the job: thin around the above ----------------------------------------------------------

SPEC = {"model": {"source": {"builtin": "tiny"}},
        "autoscaling": {"prometheusUrl": "http://prometheus:9090"}}


def _service(prefill_replicas=1):
    return {"metadata": {"name": "chat", "namespace": "team-a", "generation": 2, "uid": "u"},
            "spec": SPEC, "status": {"prefill": {"desiredReplicas": prefill_replicas}}}


def _prometheus(by_query):
    def query(promql):
        for key, value in by_query.items():
            if key in promql:
                return value
        return []
    return PrometheusSource("http://prometheus:9090", query=query)


def _run(kube, memo, service):
    memo["kv_health_due"] = 0.0  # due now
    kv_health_job.kv_transfer_health(body=service, spec=service["spec"], name="chat",
                                     namespace="team-a", uid="u", memo=memo)
    return kube.status_by_manager[KV_HEALTH_FIELD_MANAGER]["conditions"]


def test_job_applies_only_its_condition_and_posts_an_event_per_change_of_cause():
    service = _service()
    kube = MemoryKube(service)
    broken = {"pdserve_router_disaggregation_total": [
        {"metric": {"reason": "prefill_failed"}, "value": [0, "20"]}]}
    moving = {"pdserve_router_disaggregation_total": [
        {"metric": {"reason": "handoff"}, "value": [0, "20"]}]}
    memo = kopf.Memo(kube=kube, kv_health_interval_seconds=5,
                     planner_source=("http://prometheus:9090", _prometheus(broken)))
    [condition] = _run(kube, memo, service)
    assert (condition["status"], condition["reason"]) == ("False", "KVTransferFailing")
    assert "Prometheus http://prometheus:9090" in condition["message"]
    writes = len(kube.patches)
    _run(kube, memo, service)
    assert kube.events == [("Warning", "KVTransferFailing")]  # once per change
    assert len(kube.patches) == writes  # the same condition is not written again
    memo["planner_source"] = ("http://prometheus:9090", _prometheus(moving))
    [condition] = _run(kube, memo, service)
    assert condition["status"] == "True"
    assert kube.events[-1] == ("Normal", "KVMoving")
    memo["planner_source"] = ("http://prometheus:9090", _prometheus({
        "pdserve_router_disaggregation_total": [
            {"metric": {"reason": "no_prefill_peer"}, "value": [0, "20"]}]}))
    _run(kube, memo, service)
    memo["planner_source"] = ("http://prometheus:9090", _prometheus(broken))
    _run(kube, memo, service)  # still False, another cause
    assert kube.events[-2:] == [("Warning", "NoPrefillPeer"), ("Warning", "KVTransferFailing")]


def test_job_says_no_transfer_is_intended_for_an_aggregated_plan():
    service = _service(prefill_replicas=0)
    kube = MemoryKube(service)
    [condition] = _run(kube, kopf.Memo(kube=kube), service)
    assert (condition["status"], condition["reason"]) == ("True", "NoTransferIntended")


def test_job_without_prometheus_reads_the_routers_and_waits_for_a_second_read():
    service = {**_service(), "spec": {"model": {"source": {"builtin": "tiny"}}}}
    kube = MemoryKube(service)  # no router pods
    [condition] = _run(kube, kopf.Memo(kube=kube), service)
    assert (condition["status"], condition["reason"]) == ("Unknown", "NotReported")
    assert "names no Prometheus" in condition["message"]


def test_job_reports_an_unreachable_prometheus():
    service = _service()
    kube = MemoryKube(service)

    def down(promql):
        raise ConnectionError("refused")
    memo = kopf.Memo(kube=kube,
                     planner_source=("http://prometheus:9090", PrometheusSource("x", query=down)))
    [condition] = _run(kube, memo, service)
    assert (condition["status"], condition["reason"]) == ("Unknown", "PrometheusUnavailable")
    assert "refused" in condition["message"]


def test_prompts_the_conditional_disaggregation_kept_on_decode_are_no_traffic_but_said():
    given = KVFigures(60, {"handoff": 0.0, "short_prompt": 2.0, "local_cheaper": 7.0},
                      transfers=NAN, transfer_failures=NAN, recomputed=NAN, prefill_requests=NAN)
    verdict = assess(given, "p")
    assert (verdict.status, verdict.reason) == ("Unknown", "NoTraffic")
    assert "2 short ones and 7 that the conditional disaggregation kept on decode" in (
        verdict.message)
