"""An LLMService deleted while its reconcile pass runs (found by e2e/test_operator_fuzz.py, which
deletes LLMServices as soon as they are reconciled): the status write then gets 404, which every
status writer must take as "nothing left to report", not fail with a traceback in the operator's
log."""

import copy

import pytest
from kubernetes.client import ApiException

from pdserve.controller import handlers, metrics
from pdserve.controller.kube import Kube


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
        return False  # Kube.apply_status's answer to a 404, below


@pytest.mark.parametrize("apply", [True, False])
def test_a_pass_over_an_llmservice_deleted_meanwhile_ends_quietly(apply):
    kube = DeletedDuringPass()
    before = metrics.STATUS_PATCHES._value.get()
    handlers.sync(kube, "ns", "chat", apply=apply, trigger="test")
    assert kube.status_writes == 1
    assert metrics.STATUS_PATCHES._value.get() == before, "no status was written"


class Answer:
    def __init__(self, status):
        self.status, self.reason, self.data, self.headers = status, "x", b"{}", {}

    def read(self):
        return self.data

    def getheaders(self):
        return {}


class ApiAnswering:
    """An ApiClient whose every call gets one HTTP status."""

    def __init__(self, status):
        self.status = status

    def param_serialize(self, *args, **kwargs):
        return ("PATCH", "url", {}, None, None)

    def call_api(self, *args, **kwargs):
        return Answer(self.status)


def test_a_status_write_to_a_deleted_llmservice_reports_it_gone():
    assert Kube(ApiAnswering(200)).apply_status("ns", "chat", {}, "m") is True
    assert Kube(ApiAnswering(404)).apply_status("ns", "chat", {}, "m") is False


def test_other_status_write_errors_still_raise():
    with pytest.raises(ApiException) as raised:
        Kube(ApiAnswering(500)).apply_status("ns", "chat", {}, "m")
    assert raised.value.status == 500
