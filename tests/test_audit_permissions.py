"""What e2e/rbac_audit.py derives from audit events and rendered roles (pure; the e2e test
reads the local apiserver's real log)."""

from __future__ import annotations

from typing import Any

from e2e import rbac_audit

OPERATOR = "system:serviceaccount:pdserve-system:pdserve-operator"


def event(verb: str, resource: str, *, subresource: str = "", group: str = "apps",
          code: int = 200, decision: str = "allow", user: str = OPERATOR,
          impersonated: bool = False) -> dict[str, Any]:
    ref = {"apiGroup": group, "resource": resource, "namespace": "a", "name": "b"}
    if subresource:
        ref["subresource"] = subresource
    found: dict[str, Any] = {
        "verb": verb, "objectRef": ref, "user": {"username": user},
        "responseStatus": {"code": code},
        "annotations": {"authorization.k8s.io/decision": decision},
    }
    if impersonated:
        found["impersonatedUser"] = {"username": user}
        found["user"] = {"username": "admin"}
    return found


def test_an_apply_that_created_its_object_also_used_create() -> None:
    used = rbac_audit.used([event("patch", "deployments", code=201),
                            event("patch", "services", group="", code=200)], {OPERATOR})
    assert used == {("apps", "deployments", "patch"), ("apps", "deployments", "create"),
                    ("", "services", "patch")}


def test_subresources_are_their_own_permission() -> None:
    used = rbac_audit.used([event("patch", "deployments", subresource="scale")], {OPERATOR})
    assert used == {("apps", "deployments/scale", "patch")}


def test_others_impersonation_and_refusals_are_not_uses() -> None:
    events = [event("get", "deployments", user="system:serviceaccount:x:other"),
              event("patch", "pods", group="", impersonated=True),
              event("create", "pods", group="", code=403, decision="forbid"),
              {"verb": "get", "user": {"username": OPERATOR},
               "annotations": {"authorization.k8s.io/decision": "allow"}}]  # /version
    assert rbac_audit.used(events, {OPERATOR}) == set()
    assert rbac_audit.refused(events, {OPERATOR}) == {("", "pods", "create")}


def test_roles_expand_into_triples() -> None:
    role = {"kind": "ClusterRole", "rules": [
        {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"],
         "verbs": ["get", "patch"]}]}
    binding = {"kind": "ClusterRoleBinding", "roleRef": {"name": "x"}}
    assert rbac_audit.granted([role, binding, None]) == {  # type: ignore[list-item]
        ("apps", "deployments", "get"), ("apps", "deployments", "patch"),
        ("apps", "deployments/scale", "get"), ("apps", "deployments/scale", "patch")}
    assert rbac_audit.table(rbac_audit.granted([role])) == (
        "apps/deployments: get, patch\napps/deployments/scale: get, patch")
