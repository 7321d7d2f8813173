"""kopf handlers: thin triggers of the one reconcile pass; they write status, never the spec."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from pdserve.api.resource import GROUP, PLURAL, VERSION
from pdserve.controller.kube import Kube
from pdserve.controller.names import LABEL_MANAGED_BY, LABEL_SERVICE, MANAGED_BY
from pdserve.controller.reconcile import reconcile
from pdserve.controller.status import status_changed

RESYNC_SECONDS = 30.0
_LLMS: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": PLURAL}
_CHILDREN = {LABEL_MANAGED_BY: MANAGED_BY}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf's own bookkeeping lives in annotations: the spec belongs to users and GitOps tools.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.peering.standalone = True
    settings.watching.server_timeout = 300


def _kube(memo: Any) -> Kube:
    kube: Kube = memo.kube
    return kube


def _write(patch: kopf.Patch, body: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    previous = body.get("status") or {}
    _announce(body, previous, status)
    if status_changed(previous, status):
        for key, value in status.items():
            patch.status[key] = value


def _announce(body: Mapping[str, Any], previous: Mapping[str, Any],
              status: Mapping[str, Any]) -> None:
    """Events for the transitions people watch for: Degraded and Ready turning True."""
    before = {c["type"]: c for c in previous.get("conditions") or []}
    for condition in status["conditions"]:
        turned_true = (condition["status"] == "True"
                       and before.get(condition["type"], {}).get("status") != "True")
        if turned_true and condition["type"] == "Degraded":
            kopf.warn(cast(kopf.Body, body), reason=condition["reason"],
                      message=condition["message"])
        elif turned_true and condition["type"] == "Ready":
            kopf.info(cast(kopf.Body, body), reason="Ready", message=condition["message"])


@kopf.on.resume(**_LLMS, id="reconcile")
@kopf.on.create(**_LLMS, id="reconcile")
@kopf.on.update(**_LLMS, field="spec", id="reconcile")
def on_spec(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, reason: str,
            **_: Any) -> None:
    _write(patch, body, reconcile(_kube(memo), body, apply=True, trigger=str(reason)))


@kopf.timer(**_LLMS, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS, id="resync")
def resync(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Level-based repair: re-render and re-apply; drifted or deleted children come back."""
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    _write(patch, body, reconcile(_kube(memo), body, apply=True, trigger="timer"))


def _refresh_parent(kube: Kube, child: Mapping[str, Any], *, apply: bool) -> None:
    meta = child.get("metadata") or {}
    service = (meta.get("labels") or {}).get(LABEL_SERVICE)
    namespace = meta.get("namespace")
    if not service or not namespace:
        return
    parent = kube.llmservice(namespace, service)
    if parent is None or parent["metadata"].get("deletionTimestamp"):
        return
    status = reconcile(kube, parent, apply=apply, trigger="child")
    previous = parent.get("status") or {}
    _announce(parent, previous, status)
    if status_changed(previous, status):
        kube.patch_status(namespace, service, status)


@kopf.on.event("apps", "v1", "deployments", labels=_CHILDREN, id="child-deployment")
def on_deployment(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A Deployment's rollout moved (refresh status) or it was deleted (restore it now)."""
    if type is None:  # the initial listing: the resume handlers cover it
        return
    _refresh_parent(_kube(memo), body, apply=type == "DELETED")


def _unschedulable(body: kopf.Body, **_: Any) -> bool:
    return any(c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
               for c in body.get("status", {}).get("conditions") or [])


@kopf.on.event("", "v1", "pods", labels=_CHILDREN, when=_unschedulable, id="child-pod")
def on_unschedulable_pod(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The scheduler gave up on a pod: say so in Degraded without waiting for the timer."""
    if type is None:
        return
    _refresh_parent(_kube(memo), body, apply=False)
