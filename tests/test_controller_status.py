"""Status computed from child objects (pure): Ready, Progressing, Degraded and friends."""

from pdserve.controller.status import Observation, compute_status, status_changed

NOW = "2026-11-25T12:00:00Z"
LATER = "2026-11-25T12:05:00Z"


def _deployment(role, desired, ready, *, updated=None, generation=1, observed=1, total=None,
                conditions=()):
    return {"metadata": {"name": f"chat-{role}", "generation": generation,
                         "labels": {"pdserve.dev/role": role}},
            "spec": {"replicas": desired},
            "status": {"observedGeneration": observed, "readyReplicas": ready,
                       "availableReplicas": ready,
                       "updatedReplicas": desired if updated is None else updated,
                       "replicas": desired if total is None else total,
                       "conditions": list(conditions)}}


def _seen(deployments, pods=(), previous=None, problem=None, autoscaling=False, applied=True):
    return Observation(name="chat", namespace="team-a", generation=3,
                       autoscaling_enabled=autoscaling,
                       desired={"prefill": 1, "decode": 2, "router": 1},
                       workloads=deployments, pods=pods, previous=previous or {},
                       problem=problem, applied=applied)


def _conditions(status):
    return {c["type"]: c for c in status["conditions"]}


def _all_ready():
    return {"prefill": _deployment("prefill", 1, 1), "decode": _deployment("decode", 2, 2),
            "router": _deployment("router", 1, 1)}


def test_ready_when_every_role_is_fully_ready():
    status = compute_status(_seen(_all_ready()), NOW)
    conditions = _conditions(status)
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Progressing"]["status"] == "False"
    assert conditions["Degraded"]["status"] == "False"
    assert conditions["ScalingLimited"]["reason"] == "AutoscalingDisabled"
    assert "KVTransferHealthy" not in conditions  # the KV health job's (kv_health_job.py)
    assert status["observedGeneration"] == 3
    assert status["decode"] == {"desiredReplicas": 2, "readyReplicas": 2, "summary": "2/2"}
    assert status["endpoint"] == "http://chat-router.team-a.svc:8080"
    for condition in status["conditions"]:
        assert condition["observedGeneration"] == 3 and condition["lastTransitionTime"] == NOW


def test_not_ready_while_a_role_lacks_ready_replicas():
    deployments = {**_all_ready(), "decode": _deployment("decode", 2, 1)}
    conditions = _conditions(compute_status(_seen(deployments), NOW))
    assert conditions["Ready"]["status"] == "False"
    assert "decode 1/2" in conditions["Ready"]["message"]
    assert conditions["Progressing"]["status"] == "True"


def test_zero_replicas_is_not_ready():
    deployments = {**_all_ready(), "prefill": _deployment("prefill", 0, 0)}
    assert _conditions(compute_status(_seen(deployments), NOW))["Ready"]["status"] == "False"


def test_missing_children_are_progressing_not_ready():
    status = compute_status(_seen({}), NOW)
    conditions = _conditions(status)
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Progressing"]["status"] == "True"
    assert status["prefill"]["summary"] == "0/1"


def test_rolling_update_is_progressing():
    deployments = {**_all_ready(),
                   "router": _deployment("router", 1, 1, updated=0, generation=2, total=2)}
    conditions = _conditions(compute_status(_seen(deployments), NOW))
    assert conditions["Progressing"]["status"] == "True"
    assert "router" in conditions["Progressing"]["message"]


def test_unschedulable_pods_degrade_with_the_schedulers_words():
    message = "0/10 nodes are available: 4 Insufficient google.com/tpu, 6 node(s) didn't match"
    pending = {"metadata": {"labels": {"pdserve.dev/role": "prefill"}},
               "status": {"phase": "Pending", "conditions": [
                   {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message}]}}
    deployments = {**_all_ready(), "prefill": _deployment("prefill", 3, 1)}
    degraded = _conditions(compute_status(_seen(deployments, [pending, pending]), NOW))[
        "Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "Unschedulable"
    assert degraded["message"] == f"prefill: 2 pods unschedulable: {message}"


def test_terminating_pods_do_not_count():
    gone = {"metadata": {"labels": {"pdserve.dev/role": "decode"},
                         "deletionTimestamp": NOW},
            "status": {"conditions": [{"type": "PodScheduled", "status": "False",
                                       "reason": "Unschedulable", "message": "x"}]}}
    degraded = _conditions(compute_status(_seen(_all_ready(), [gone]), NOW))["Degraded"]
    assert degraded["status"] == "False"


def test_invalid_spec_and_replica_failures_degrade():
    problem = ("InvalidSpec", "the spec cannot be served: spec.model: Field required")
    degraded = _conditions(compute_status(_seen({}, problem=problem), NOW))["Degraded"]
    assert degraded["reason"] == "InvalidSpec" and "spec.model" in degraded["message"]
    failing = {**_all_ready(), "decode": _deployment("decode", 2, 2, conditions=[
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
         "message": "exceeded quota: gpu-quota"}])}
    degraded = _conditions(compute_status(_seen(failing), NOW))["Degraded"]
    assert degraded["reason"] == "ReplicaFailure" and "decode: exceeded quota" in degraded[
        "message"]


def test_transition_times_survive_unchanged_conditions():
    first = compute_status(_seen(_all_ready()), NOW)
    degraded_now = {**_all_ready(), "decode": _deployment("decode", 2, 1)}
    second = compute_status(_seen(degraded_now, previous=first), LATER)
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times["Degraded"] == NOW  # still False
    assert times["Ready"] == LATER  # True -> False
    assert not status_changed(second, compute_status(_seen(degraded_now, previous=second),
                                                      LATER))


def test_the_planners_condition_is_left_to_the_planner():
    """Server-side apply merges the writers' conditions by type: the reconciler's share names
    ScalingLimited only while autoscaling is off (then nobody else writes it)."""
    planned = _conditions(compute_status(_seen(_all_ready(), autoscaling=True), LATER))
    assert "ScalingLimited" not in planned and "Ready" in planned
    off = _conditions(compute_status(_seen(_all_ready(), autoscaling=False), LATER))
    assert off["ScalingLimited"]["reason"] == "AutoscalingDisabled"
    previous = {"conditions": [{"type": "ScalingLimited", "status": "True"}]}
    mine = compute_status(_seen(_all_ready(), previous=previous, autoscaling=True), LATER)
    assert not status_changed({**mine, "conditions": [*mine["conditions"],
                                                      *previous["conditions"]]}, mine)


def test_observed_generation_waits_for_a_pass_that_applied_the_generation():
    applied = compute_status(_seen(_all_ready()), NOW)
    assert applied["observedGeneration"] == 3
    refresh = compute_status(_seen(_all_ready(), previous={"observedGeneration": 2},
                                   applied=False), LATER)
    assert refresh["observedGeneration"] == 2
    assert {c["observedGeneration"] for c in refresh["conditions"]} == {2}


