"""An LLMService deleted while its reconcile pass runs (found by e2e/test_operator_fuzz.py, which
deletes LLMServices as soon as they are reconciled): the status write then gets 404, which the
pass must take as "nothing left to report", not fail with a traceback in the operator's log."""

import copy

import pytest
from kubernetes.client import ApiException

from pdserve.controller import handlers, metrics


class DeletedDuringPass:
    """Reads find the LLMService; by the time its status is written it is gone."""

    def __init__(self, status_error=404):
        self.service = {
            "apiVersion": "pdserve.dev/v1alpha1", "kind": "LLMService",
            "metadata": {"name": "chat", "namespace": "ns", "uid": "u1", "generation": 1},
            "spec": {"model": {"source": {"builtin": "tiny"}}},
        }
        self.status_error = status_error
        self.status_writes = 0

    def llmservice(self, namespace, name):
        return copy.deepcopy(self.service)

    def create_if_absent(self, obj):
        pass

    def apply(self, obj):
        pass

    def delete(self, kind, namespace, name):
        pass

    def workloads(self, namespace, service):
        return []

    def pods(self, namespace, service):
        return []

    def post_event(self, involved, type_, reason, message, *, component, stamp=None):
        pass

    def apply_status(self, namespace, name, status, field_manager):
        self.status_writes += 1
        raise ApiException(status=self.status_error, reason="Not Found")


@pytest.mark.parametrize("apply", [True, False])
def test_a_pass_over_an_llmservice_deleted_meanwhile_ends_quietly(apply):
    kube = DeletedDuringPass()
    before = metrics.STATUS_PATCHES._value.get()
    handlers.sync(kube, "ns", "chat", apply=apply, trigger="test")
    assert kube.status_writes == 1
    assert metrics.STATUS_PATCHES._value.get() == before, "no status was written"


def test_other_status_write_errors_still_fail_the_pass():
    with pytest.raises(ApiException) as raised:
        handlers.sync(DeletedDuringPass(status_error=500), "ns", "chat", apply=True,
                      trigger="test")
    assert raised.value.status == 500
