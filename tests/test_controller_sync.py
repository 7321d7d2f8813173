"""One reconcile pass end to end against an in-memory stand-in of the API (pure logic only;
the real apiserver is exercised by e2e/test_operator_*.py)."""

import copy

from kubernetes.client import ApiException

from pdserve.controller import handlers


class MemoryKube:
    """Just the calls the reconciler makes, on dicts."""

    def __init__(self, service):
        self.service = service
        self.applied = []
        self.deleted = []
        self.patches = []
        self.found = []  # (kind, workload)
        self.refuse_kind = None
        self.events = []
        self.created = {}  # name -> object, created once
        self.status_by_manager = {}

    def create_if_absent(self, obj):
        if obj["kind"] == self.refuse_kind:
            raise ApiException(status=403, reason="Forbidden")
        self.created.setdefault(obj["metadata"]["name"], obj)

    def llmservice(self, namespace, name):
        return copy.deepcopy(self.service)

    def apply(self, obj):
        if obj["kind"] == self.refuse_kind:
            raise ApiException(status=422, reason="Unprocessable Entity")
        self.applied.append(obj)

    def delete(self, kind, namespace, name):
        self.deleted.append((kind, name))

    def workloads(self, namespace, service):
        return self.found

    def pods(self, namespace, service):
        return []

    def post_event(self, involved, type_, reason, message, *, component, stamp=None):
        self.events.append((type_, reason))

    def apply_status(self, namespace, name, status, field_manager):
        """Server-side apply as the apiserver does it for status: each manager's last applied
        share, merged; conditions by type."""
        self.patches.append(status)
        self.status_by_manager[field_manager] = copy.deepcopy(dict(status))
        merged, conditions = {}, {}
        for share in self.status_by_manager.values():
            for key, value in share.items():
                if key == "conditions":
                    conditions.update({c["type"]: c for c in value})
                else:
                    merged[key] = value
        self.service["status"] = {**merged, "conditions": list(conditions.values())}
        return True


def _service(spec):
    return {"apiVersion": "pdserve.dev/v1alpha1", "kind": "LLMService",
            "metadata": {"name": "chat", "namespace": "ns", "uid": "u1", "generation": 2},
            "spec": spec}


def _sync(kube):
    handlers.sync(kube, "ns", "chat", apply=True, trigger="test")


def _condition(kube, kind):
    return next(c for c in kube.service["status"]["conditions"] if c["type"] == kind)


def test_applies_children_and_writes_status_once():
    kube = MemoryKube(_service({"model": {"source": {"builtin": "tiny"}}}))
    _sync(kube)
    assert len(kube.applied) == 12 and len(kube.patches) == 1
    assert kube.service["status"]["observedGeneration"] == 2
    assert _condition(kube, "Ready")["status"] == "False"
    _sync(kube)
    assert len(kube.patches) == 1, "an unchanged status is not written again"
    kube.found = [("Deployment", _ready(role)) for role in ("prefill", "decode", "router")]
    _sync(kube)
    assert _condition(kube, "Ready")["status"] == "True"
    assert kube.events == [("Normal", "Ready")]


def _ready(role, kind_spec=None):
    return {"spec": {"replicas": 1, **(kind_spec or {})},
            "metadata": {"name": f"chat-{role}", "generation": 1,
                         "labels": {"pdserve.dev/role": role}},
            "status": {"readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1,
                       "replicas": 1, "observedGeneration": 1}}


def test_a_multi_node_role_runs_as_a_leaderworkerset_and_its_old_deployment_goes():
    spec = {"model": {"source": {"builtin": "tiny"}},
            "decode": {"accelerator": {"kind": "nvidia-h100", "count": 8, "nodes": 2}}}
    kube = MemoryKube(_service(spec))
    kube.found = [("Deployment", _ready(role)) for role in ("prefill", "decode", "router")]
    _sync(kube)
    kinds = {(obj["kind"], obj["metadata"]["name"]) for obj in kube.applied}
    assert ("LeaderWorkerSet", "chat-decode") in kinds
    assert ("Deployment", "chat-decode") not in kinds
    assert ("NetworkPolicy", "chat-decode-workers-ranks") in kinds
    assert ("Deployment", "chat-decode") in kube.deleted
    # The LeaderWorkerSet's groups, not the old Deployment, are what status reports.
    assert kube.service["status"]["decode"]["readyReplicas"] == 0
    kube.found = [("Deployment", _ready("prefill")), ("Deployment", _ready("router")),
                  ("LeaderWorkerSet", _ready("decode", {"leaderWorkerTemplate": {"size": 2}}))]
    _sync(kube)
    assert kube.service["status"]["decode"]["readyReplicas"] == 1
    assert _condition(kube, "Ready")["status"] == "True"
    # Back to one node a replica: the LeaderWorkerSet and its ranks policy are removed.
    kube.service["spec"] = {"model": {"source": {"builtin": "tiny"}}}
    kube.deleted.clear()
    _sync(kube)
    assert ("LeaderWorkerSet", "chat-decode") in kube.deleted
    assert ("NetworkPolicy", "chat-decode-workers-ranks") in kube.deleted


def test_the_kv_auth_secret_is_created_once_and_a_refusal_degrades():
    tiny = {"model": {"source": {"builtin": "tiny"}}}
    kube = MemoryKube(_service(tiny))
    _sync(kube)
    first = kube.created["chat-kv-auth"]["stringData"]["secret"]
    _sync(kube)
    assert kube.created["chat-kv-auth"]["stringData"]["secret"] == first and len(first) == 64
    refused = MemoryKube(_service(tiny))
    refused.refuse_kind = "Secret"
    _sync(refused)
    assert "Secret chat-kv-auth: 403" in _condition(refused, "Degraded")["message"]
    assert not refused.applied  # no pod may wait on a Secret that is not there


def test_invalid_spec_degrades_without_applying():
    kube = MemoryKube(_service({"model": {"source": {"builtin": "tiny", "path": "/m"}}}))
    _sync(kube)
    assert kube.applied == []
    degraded = _condition(kube, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "InvalidSpec"
    assert "exactly one model source" in degraded["message"]
    assert kube.events == [("Warning", "InvalidSpec")]


def test_refused_children_degrade_with_the_apiservers_answer():
    kube = MemoryKube(_service({"model": {"source": {"builtin": "tiny"}}}))
    kube.refuse_kind = "NetworkPolicy"
    _sync(kube)
    degraded = _condition(kube, "Degraded")
    assert degraded["reason"] == "ApplyFailed"
    assert "NetworkPolicy chat-prefill-workers: 422" in degraded["message"]


def test_disabled_network_policies_are_removed():
    kube = MemoryKube(_service({"model": {"source": {"builtin": "tiny"}},
                                "networkPolicy": {"enabled": False}}))
    _sync(kube)
    assert ("NetworkPolicy", "chat-decode-workers") in kube.deleted
    assert not [c for c in kube.applied if c["kind"] == "NetworkPolicy"]


def test_a_deleted_llmservice_is_left_alone():
    kube = MemoryKube(None)
    _sync(kube)
    assert kube.applied == [] and kube.patches == []


async def test_periodic_jobs_run_per_indexed_service_and_stop_for_deleted_ones():
    import asyncio
    from types import SimpleNamespace

    from pdserve.controller import periodic

    calls = []
    jobs = [periodic.Job("every", 0.2, lambda spec: True,
                         lambda **kw: calls.append(("every", kw["namespace"], kw["name"])), True),
            periodic.Job("enabled", 0.2, lambda spec: spec.get("on", False),
                         lambda **kw: calls.append(("enabled", kw["name"])), False)]
    body = {"metadata": {"uid": "u"}, "spec": {}}
    index = {("a", "one"): [{**body, "spec": {"on": True}}], ("b", "two"): [body]}
    task = asyncio.create_task(periodic.run_forever(index, SimpleNamespace(kube=None), jobs,
                                                    tick=0.02))
    await asyncio.sleep(1.0)
    assert calls.count(("every", "b", "two")) >= 2 and ("enabled", "two") not in calls
    assert calls.count(("enabled", "one")) >= 2
    del index[("b", "two")]
    calls.clear()
    await asyncio.sleep(0.6)
    task.cancel()
    assert calls.count(("every", "a", "one")) >= 2 and ("every", "b", "two") not in calls


def test_no_kopf_timer_or_daemon_is_registered():
    """They make kopf put a finalizer on LLMServices: deleting one, or its namespace, would
    hang while the operator is down."""
    import kopf

    import pdserve.controller.autoscaling
    import pdserve.controller.kv_health_job
    import pdserve.controller.recommendation

    registry = kopf.get_default_registry()
    assert not list(registry._spawning.get_all_handlers())
    assert not any(getattr(h, "requires_finalizer", False)
                   for h in registry._changing.get_all_handlers())
    assert {job.id for job in pdserve.controller.periodic.JOBS} == {
        "resync", "autoscaling", "recommendation", "kv-transfer-health"}


AUTOSCALED = {"model": {"source": {"builtin": "tiny"}}, "autoscaling": {
    "enabled": True, "prometheusUrl": "http://prometheus:9090",
    "prefill": {"minReplicas": 1, "maxReplicas": 4}, "decode": {"minReplicas": 1,
                                                                  "maxReplicas": 4},
    "acceleratorBudget": 8}}


def _applied_replicas(kube, role):
    [deployment] = [o for o in kube.applied
                    if o["kind"] == "Deployment" and o["metadata"]["name"] == f"chat-{role}"]
    return deployment["spec"].get("replicas")


def test_replicas_have_one_writer_once_the_planner_has_scaled():
    kube = MemoryKube(_service(AUTOSCALED))
    kube.apply_status("ns", "chat", {"autoscaling": {"prefillReplicas": 2, "decodeReplicas": 3}},
                      "pdserve-planner")
    _sync(kube)  # before the planner scaled anything: the decision is rendered
    assert (_applied_replicas(kube, "prefill"), _applied_replicas(kube, "decode")) == (2, 3)
    decode = _ready("decode")
    decode["metadata"]["managedFields"] = [
        {"manager": "pdserve-operator", "operation": "Apply", "fieldsV1": {"f:spec": {
            "f:template": {}}}},
        {"manager": "pdserve-planner", "operation": "Update", "subresource": "scale",
         "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
    kube.found = [("Deployment", _ready("prefill")), ("Deployment", decode)]
    kube.applied.clear()
    _sync(kube)
    assert _applied_replicas(kube, "decode") is None  # the planner's alone
    assert _applied_replicas(kube, "prefill") == 2
    kube.service["spec"]["autoscaling"]["enabled"] = False
    kube.applied.clear()
    _sync(kube)  # autoscaling off: the spec's replicas again, the reconciler's
    assert _applied_replicas(kube, "decode") == 1


def test_applied_status_leaves_out_nulls():
    from pdserve.controller.kube import _without_nulls

    assert _without_nulls({"a": None, "b": {"c": None, "d": [{"e": None, "f": 1}]},
                           "inputs": {}, "empty": {"x": None}}) == {"b": {"d": [{"f": 1}]}}
