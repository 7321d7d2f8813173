"""Least privilege, proven from the audit log: the (API group, resource[/subresource], verb)
triples the operator's ServiceAccounts used, those RBAC refused them, and those the chart
grants, so that a test can compare them both ways."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Permission = tuple[str, str, str]

# Granted though no request uses them: authorization checks the apiserver makes itself.
CHECKED_NOT_REQUESTED: dict[Permission, str] = {
    ("pdserve.dev", "llmservices/finalizers", "update"):
        "OwnerReferencesPermissionEnforcement checks it when a child with blockOwnerDeletion "
        "is created or updated",
}


def _permission(event: dict[str, Any]) -> Permission | None:
    ref = event.get("objectRef")
    if not ref or "resource" not in ref:
        return None  # a non-resource URL (discovery, /version): open to every account
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return ref.get("apiGroup", ""), resource, event["verb"]


def _by(event: dict[str, Any], accounts: set[str]) -> bool:
    """A request made by one of `accounts` itself (not someone impersonating it)."""
    return event["user"]["username"] in accounts and not event.get("impersonatedUser")


def used(events: Iterable[dict[str, Any]], accounts: set[str]) -> set[Permission]:
    """What the accounts were allowed to do. A server-side apply that created its object
    (a patch answered 201) also needed `create`."""
    found: set[Permission] = set()
    for event in events:
        if not _by(event, accounts):
            continue
        if (event.get("annotations") or {}).get("authorization.k8s.io/decision") != "allow":
            continue
        permission = _permission(event)
        if permission is None:
            continue
        found.add(permission)
        if permission[2] == "patch" and (event.get("responseStatus") or {}).get("code") == 201:
            found.add((permission[0], permission[1], "create"))
    return found


def refused(events: Iterable[dict[str, Any]], accounts: set[str]) -> set[Permission]:
    """What RBAC refused the accounts (a policy's refusal of an allowed request is not one)."""
    return {
        permission
        for event in events
        if _by(event, accounts)
        and (event.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid"
        and (permission := _permission(event)) is not None
    }


def granted(objects: Iterable[dict[str, Any]]) -> set[Permission]:
    """Every triple the Roles and ClusterRoles among `objects` grant (no wildcards expected:
    a `*` is kept as is, and so never counts as used)."""
    return {
        (group, resource, verb)
        for obj in objects
        if obj and obj.get("kind") in ("Role", "ClusterRole")
        for rule in obj.get("rules") or []
        for group in rule.get("apiGroups") or []
        for resource in rule.get("resources") or []
        for verb in rule.get("verbs") or []
    }


def table(permissions: Iterable[Permission]) -> str:
    """One line per resource: `group/resource: verbs`, sorted."""
    verbs: dict[str, set[str]] = {}
    for group, resource, verb in permissions:
        verbs.setdefault(f"{group or 'core'}/{resource}", set()).add(verb)
    return "\n".join(f"{name}: {', '.join(sorted(found))}" for name, found in sorted(verbs.items()))
