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
        self.deployments = {}
        self.refuse_kind = None
        self.events = []

    def llmservice(self, namespace, name):
        return copy.deepcopy(self.service)

    def apply(self, obj):
        if obj["kind"] == self.refuse_kind:
            raise ApiException(status=422, reason="Unprocessable Entity")
        self.applied.append(obj)

    def delete(self, kind, namespace, name):
        self.deleted.append((kind, name))

    def role_deployments(self, namespace, service):
        return self.deployments

    def pods(self, namespace, service):
        return []

    def post_event(self, involved, type_, reason, message, *, component, stamp=None):
        self.events.append((type_, reason))

    def patch_status(self, namespace, name, status):
        self.patches.append(status)
        self.service["status"] = {**self.service.get("status", {}), **status}


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
    ready = {"spec": {"replicas": 1}, "metadata": {"generation": 1},
             "status": {"readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1,
                        "replicas": 1, "observedGeneration": 1}}
    kube.deployments = {role: ready for role in ("prefill", "decode", "router")}
    _sync(kube)
    assert _condition(kube, "Ready")["status"] == "True"
    assert kube.events == [("Normal", "Ready")]


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
