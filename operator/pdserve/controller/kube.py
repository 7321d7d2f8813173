"""The operator's few calls to the Kubernetes API: server-side apply, reads, status patches."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from pdserve.api.resource import GROUP, KIND, PLURAL, VERSION
from pdserve.controller.names import FIELD_MANAGER, children_selector

# Collection path of every kind the operator touches, under a namespace.
_COLLECTIONS: dict[str, str] = {
    "ConfigMap": "/api/v1/namespaces/{namespace}/configmaps",
    "Secret": "/api/v1/namespaces/{namespace}/secrets",
    "Service": "/api/v1/namespaces/{namespace}/services",
    "Pod": "/api/v1/namespaces/{namespace}/pods",
    "Deployment": "/apis/apps/v1/namespaces/{namespace}/deployments",
    "LeaderWorkerSet": "/apis/leaderworkerset.x-k8s.io/v1/namespaces/{namespace}/leaderworkersets",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies",
    "LLMService": f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}",
}
REQUEST_TIMEOUT_S = 30
APPLY_PATCH = "application/apply-patch+yaml"
# A UTF-16 surrogate pair escape (not one preceded by an odd number of backslashes, which
# would make it literal text) in json.dumps's output.
_SURROGATE_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def apply_patch_body(body: Any) -> bytes:
    """An apply-patch+yaml body: JSON (which is YAML), with each character beyond U+FFFF
    written as itself in UTF-8. json.dumps escapes those as a surrogate pair (\\ud83d\\ude00),
    which the apiserver's YAML parser refuses ("found invalid Unicode character escape code"),
    so any such character in a spec failed every child's apply."""
    def joined(match: re.Match[str]) -> str:
        high, low = int(match.group(2), 16), int(match.group(3), 16)
        return match.group(1) + chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))

    return _SURROGATE_PAIR.sub(joined, json.dumps(body)).encode()


def _without_nulls(value: Any) -> Any:
    """An applied configuration says "none" by leaving a field out: the apiserver refuses
    nulls where the schema wants an object, and server-side apply turns an empty object into
    one; the field this manager owned is then removed."""
    if isinstance(value, Mapping):
        kept = {key: _without_nulls(item) for key, item in value.items() if item is not None}
        return {key: item for key, item in kept.items() if item != {}}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


class Kube:
    """A thin wrapper over one ApiClient (safe to share between handler threads)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def _call(self, method: str, kind: str, namespace: str, name: str = "", *,
              query: list[tuple[str, str]] | None = None, body: Any = None,
              content_type: str | None = None) -> dict[str, Any]:
        path = _COLLECTIONS[kind].format(namespace=namespace) + (f"/{name}" if name else "")
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if content_type == APPLY_PATCH and body is not None:
            body = apply_patch_body(body)
        request = self.api.param_serialize(
            method, path, query_params=query or [], header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request, _request_timeout=REQUEST_TIMEOUT_S)
        raw = response.read()  # type: ignore[no-untyped-call]
        text = raw.decode() if isinstance(raw, bytes) else str(raw or "")
        if not 200 <= response.status <= 299:
            raise client.ApiException.from_response(http_resp=response, body=text, data=None)
        decoded = json.loads(text) if text else {}
        return decoded if isinstance(decoded, dict) else {}

    def apply(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply under the operator's one field manager, taking over conflicts."""
        meta = obj["metadata"]
        self._call("PATCH", obj["kind"], meta["namespace"], meta["name"],
                   query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                   body=dict(obj), content_type="application/apply-patch+yaml")

    def create_if_absent(self, obj: Mapping[str, Any]) -> None:
        """Create an object once; one that exists already is left as it is (never read)."""
        try:
            self._call("POST", obj["kind"], obj["metadata"]["namespace"], body=dict(obj))
        except client.ApiException as exc:
            if exc.status != 409:
                raise

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete a child; one already gone is fine."""
        try:
            self._call("DELETE", kind, namespace, name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def _children(self, kind: str, namespace: str, service: str) -> list[dict[str, Any]]:
        found = self._call("GET", kind, namespace,
                           query=[("labelSelector", children_selector(service))])
        items: list[dict[str, Any]] = found.get("items") or []
        return items

    def workloads(self, namespace: str, service: str) -> list[tuple[str, dict[str, Any]]]:
        """(kind, object) of the LLMService's Deployments and LeaderWorkerSets (none of the
        latter where the LeaderWorkerSet API is not installed)."""
        found = [("Deployment", obj) for obj in self._children("Deployment", namespace, service)]
        try:
            found += [("LeaderWorkerSet", obj)
                      for obj in self._children("LeaderWorkerSet", namespace, service)]
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        return found

    def scale(self, kind: str, namespace: str, name: str, replicas: int,
              field_manager: str) -> None:
        """Set a workload's replicas through its scale subresource."""
        self._call("PATCH", kind, namespace, f"{name}/scale",
                   query=[("fieldManager", field_manager)],
                   body={"spec": {"replicas": replicas}},
                   content_type="application/merge-patch+json")

    def pods(self, namespace: str, service: str) -> list[dict[str, Any]]:
        return self._children("Pod", namespace, service)

    def llmservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", "LLMService", namespace, name)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def apply_status(self, namespace: str, name: str, status: Mapping[str, Any],
                     field_manager: str) -> bool:
        """Server-side apply of one writer's share of the status subresource (never the spec):
        what this manager applied before and leaves out now is removed, other managers' fields
        are kept; conditions merge by type. False when the LLMService is gone (deleted while
        its writer worked: no status is left to write)."""
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                "metadata": {"name": name, "namespace": namespace},
                "status": _without_nulls(status)}
        try:
            self._call("PATCH", "LLMService", namespace, f"{name}/status",
                       query=[("fieldManager", field_manager), ("force", "true")], body=body,
                       content_type="application/apply-patch+yaml")
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def post_event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str, *,
                   component: str, stamp: str | None = None) -> None:
        """Post an Event about an LLMService. Direct, not kopf.event: it is called from threads
        outside kopf's context too. An Event is informative: a refusal is not an error."""
        meta = involved["metadata"]
        stamp = stamp or datetime.now(UTC).isoformat()
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}-"),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind="LLMService", name=meta["name"],
                namespace=meta["namespace"], uid=meta.get("uid")),
            reason=reason, message=message[:1024], type=type_, first_timestamp=stamp,
            last_timestamp=stamp, count=1, source=client.V1EventSource(component=component),
            reporting_component=component)
        with contextlib.suppress(client.ApiException):
            client.CoreV1Api(self.api).create_namespaced_event(meta["namespace"], event)
