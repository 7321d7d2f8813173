"""kopf handlers: thin triggers of the one reconcile pass; they write status, never the spec."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import kopf

from pdserve.api.resource import GROUP, PLURAL, VERSION
from pdserve.controller import metrics, periodic
from pdserve.controller.kube import Kube
from pdserve.controller.names import FIELD_MANAGER, LABEL_MANAGED_BY, LABEL_SERVICE, MANAGED_BY
from pdserve.controller.reconcile import reconcile
from pdserve.controller.status import status_changed

RESYNC_SECONDS = 30.0
CHILD_DEBOUNCE_SECONDS = 1.0
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
    settings.execution.max_workers = 16


def _kube(memo: Any) -> Kube:
    kube: Kube = memo.kube
    return kube


class _Turn:
    """One LLMService's turn to reconcile: a lock, and how many passes wait for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting = 0


_TURNS: dict[tuple[str, str], _Turn] = {}
_TURNS_GUARD = threading.Lock()


def sync(kube: Kube, namespace: str, name: str, *, apply: bool, trigger: str) -> None:
    """Reconcile one LLMService and write its status. Serialized per object, and on a fresh
    read, so that concurrent triggers (spec change, timer, child events) never write an older
    observation over a newer one. A status-only refresh is dropped when a pass is already
    waiting: that pass reads the newer state anyway."""
    with _TURNS_GUARD:
        turn = _TURNS.setdefault((namespace, name), _Turn())
        if turn.waiting and not apply:
            return
        turn.waiting += 1
    with turn.lock:
        with _TURNS_GUARD:
            turn.waiting -= 1
        current = kube.llmservice(namespace, name)
        if current is None or current["metadata"].get("deletionTimestamp"):
            return
        status = reconcile(kube, current, apply=apply, trigger=trigger)
        previous = current.get("status") or {}
        _announce(kube, current, previous, status)
        # False: deleted during the pass, no status left to write.
        if status_changed(previous, status) and kube.apply_status(namespace, name, status,
                                                                   FIELD_MANAGER):
            metrics.STATUS_PATCHES.inc()


def _announce(kube: Kube, body: Mapping[str, Any], previous: Mapping[str, Any],
              status: Mapping[str, Any]) -> None:
    """Events for the transitions people watch for: Degraded and Ready turning True."""
    before = {c["type"]: c for c in previous.get("conditions") or []}
    for condition in status["conditions"]:
        turned_true = (condition["status"] == "True"
                       and before.get(condition["type"], {}).get("status") != "True")
        if turned_true and condition["type"] == "Degraded":
            kube.post_event(body, "Warning", condition["reason"], condition["message"],
                            component=FIELD_MANAGER)
        elif turned_true and condition["type"] == "Ready":
            kube.post_event(body, "Normal", "Ready", condition["message"],
                            component=FIELD_MANAGER)


@kopf.on.resume(**_LLMS, id="reconcile")
@kopf.on.create(**_LLMS, id="reconcile")
@kopf.on.update(**_LLMS, field="spec", id="reconcile")
def on_spec(name: str, namespace: str | None, memo: Any, reason: str, **_: Any) -> None:
    if namespace:
        sync(_kube(memo), namespace, name, apply=True, trigger=str(reason))


@periodic.job("resync", RESYNC_SECONDS, spread=True)
def resync(name: str, namespace: str, memo: Any, **_: Any) -> None:
    """Level-based repair: re-render and re-apply; drifted or deleted children come back."""
    sync(_kube(memo), namespace, name, apply=True, trigger="timer")


_PENDING: set[tuple[str, str]] = set()
_log = logging.getLogger(__name__)


def _parent(child: Mapping[str, Any]) -> tuple[str, str] | None:
    meta = child.get("metadata") or {}
    service = (meta.get("labels") or {}).get(LABEL_SERVICE)
    return (meta["namespace"], service) if service and meta.get("namespace") else None


def _refresh_soon(kube: Kube, namespace: str, name: str) -> None:
    """One status refresh for a burst of child events (a new Deployment alone sends several)."""
    with _TURNS_GUARD:
        if (namespace, name) in _PENDING:
            return
        _PENDING.add((namespace, name))

    def refresh() -> None:
        with _TURNS_GUARD:
            _PENDING.discard((namespace, name))
        try:
            sync(kube, namespace, name, apply=False, trigger="child")
        except Exception:  # the resync loop retries; a refresh thread must not die loudly
            _log.exception("status refresh of %s/%s failed", namespace, name)

    timer = threading.Timer(CHILD_DEBOUNCE_SECONDS, refresh)
    timer.daemon = True
    timer.start()


@kopf.on.event("apps", "v1", "deployments", labels=_CHILDREN, id="child-deployment")
def on_deployment(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A Deployment's rollout moved (refresh status) or it was deleted (restore it now).
    Hand edits of a child's spec are put back by the resync loop."""
    parent = _parent(body)
    if type is None or parent is None:  # the initial listing: the resume handlers cover it
        return
    if type == "DELETED":
        sync(_kube(memo), *parent, apply=True, trigger="child")
    else:
        _refresh_soon(_kube(memo), *parent)


def _unschedulable(body: kopf.Body, **_: Any) -> bool:
    return any(c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
               for c in body.get("status", {}).get("conditions") or [])


@kopf.on.event("", "v1", "pods", labels=_CHILDREN, when=_unschedulable, id="child-pod")
def on_unschedulable_pod(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The scheduler gave up on a pod: say so in Degraded without waiting for the timer."""
    parent = _parent(body)
    if type is not None and parent is not None:
        _refresh_soon(_kube(memo), *parent)
