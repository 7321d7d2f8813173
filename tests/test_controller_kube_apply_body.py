"""Server-side apply bodies with characters beyond U+FFFF (found by e2e/test_operator_fuzz.py:
e.g. an emoji in a model URI or a node selector value). json.dumps escapes them as UTF-16
surrogate pairs, which the apiserver's YAML parser refuses for application/apply-patch+yaml
("found invalid Unicode character escape code"), so every child of such an LLMService failed to
apply. The body must read back, as YAML, to exactly what was meant."""

import json

import pytest
import yaml
from kubernetes import client

from pdserve.controller.kube import Kube, apply_patch_body

VALUES = [
    "hf://org/model-\U0001f600",
    "\U0001f600\U00010348 and \u00e9\u4e2d",
    "a literal \\ud83d\\ude00 stays text",
    "\\\U0001f600 after a backslash",
    "plain ascii",
]


@pytest.mark.parametrize("value", VALUES)
def test_an_apply_body_reads_back_as_yaml_to_the_same_object(value):
    obj = {"metadata": {"name": "chat", "labels": {"x": value}}, "args": [value, 1, None]}
    body = apply_patch_body(obj)
    assert json.loads(body) == obj  # still JSON
    assert yaml.safe_load(body.decode()) == obj  # and YAML that means the same


def test_the_unfixed_encoding_did_not_read_back():
    obj = {"uri": "hf://org/model-\U0001f600"}
    assert yaml.safe_load(json.dumps(obj)) != obj


class Recording(client.ApiClient):
    def __init__(self):
        super().__init__(client.Configuration(host="https://apiserver"))
        self.bodies = []

    def call_api(self, method, url, header_params=None, body=None, post_params=None,
                 _request_timeout=None):
        self.bodies.append((header_params["Content-Type"], body))

        class Response:
            status = 200

            def read(self):
                return b"{}"

        return Response()


def test_apply_and_status_apply_send_the_readable_body():
    api = Recording()
    kube = Kube(api)
    child = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "chat-engine", "namespace": "ns"},
             "data": {"path": "/models/\U0001f600"}}
    kube.apply(child)
    kube.apply_status("ns", "chat", {"conditions": [{"type": "Degraded",
                                                     "message": "uri \U0001f600"}]}, "me")
    for content_type, body in api.bodies:
        assert content_type == "application/apply-patch+yaml"
        assert isinstance(body, bytes)
        assert "\U0001f600" in yaml.safe_load(body.decode()).__repr__()
    assert yaml.safe_load(api.bodies[0][1].decode()) == child
