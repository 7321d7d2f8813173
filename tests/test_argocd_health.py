"""The Argo CD health check of manifests/argocd, run by a real Lua 5.1 interpreter.

Argo CD runs health checks in gopher-lua, a Lua 5.1 implementation, so the test uses lupa's
embedded Lua 5.1 and feeds it the same object shape Argo CD does (the resource as a table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

ROOT = Path(__file__).resolve().parents[1]
ARGOCD = ROOT / "manifests" / "argocd"
HEALTH_KEY = "resource.customizations.health.pdserve.dev_LLMService"


def health_script() -> str:
    config_map = yaml.safe_load((ARGOCD / "health-check.yaml").read_text())
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == "argocd-cm"
    script: str = config_map["data"][HEALTH_KEY]
    return script


def assess(obj: dict[str, Any]) -> tuple[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval(f"function(obj)\n{health_script()}\nend")
    result = check(lua.table_from(obj, recursive=True))
    return str(result["status"]), str(result["message"])


def service(generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "pdserve.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": "chat", "namespace": "default", "generation": generation},
        "spec": {"model": {"name": "tiny"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def condition(type_: str, status: str, message: str = "", reason: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "message": message, "reason": reason}


READY = condition("Ready", "True", "all roles have ready replicas", "AllRolesReady")
NOT_READY = condition("Ready", "False", "decode: 0/1 ready", "RolesNotReady")
PROGRESSING = condition("Progressing", "True", "rolling out prefill", "RollingOut")
TPU_SHORTAGE = condition(
    "Degraded", "True", "prefill: needs 4 google.com/tpu, no node fits", "Unschedulable"
)
NOT_DEGRADED = condition("Degraded", "False", "", "AsExpected")


@pytest.mark.parametrize(
    ("obj", "expected_status", "message_part"),
    [
        pytest.param(service(), "Progressing", "operator", id="no-status-yet"),
        pytest.param(service(status={}), "Progressing", "generation 1", id="empty-status"),
        pytest.param(
            service(status={"observedGeneration": 1, "conditions": [READY, NOT_DEGRADED]}),
            "Healthy",
            "all roles have ready replicas",
            id="ready",
        ),
        pytest.param(
            service(status={"observedGeneration": 1, "conditions": [NOT_READY, TPU_SHORTAGE]}),
            "Degraded",
            "google.com/tpu",
            id="tpu-shortage",
        ),
        pytest.param(
            service(status={"observedGeneration": 1, "conditions": [READY, TPU_SHORTAGE]}),
            "Degraded",
            "no node fits",
            id="degraded-wins-over-ready",
        ),
        pytest.param(
            service(
                status={
                    "observedGeneration": 1,
                    "conditions": [NOT_READY, PROGRESSING, NOT_DEGRADED],
                }
            ),
            "Progressing",
            "rolling out prefill",
            id="rolling-out",
        ),
        pytest.param(
            service(status={"observedGeneration": 1, "conditions": [NOT_READY]}),
            "Progressing",
            "decode: 0/1 ready",
            id="not-ready-yet",
        ),
        pytest.param(
            service(
                generation=3, status={"observedGeneration": 2, "conditions": [READY, NOT_DEGRADED]}
            ),
            "Progressing",
            "generation 3",
            id="stale-ready-is-not-healthy",
        ),
        pytest.param(
            service(generation=3, status={"observedGeneration": 2, "conditions": [TPU_SHORTAGE]}),
            "Progressing",
            "generation 3",
            id="stale-degraded-is-not-degraded",
        ),
        pytest.param(
            service(
                status={
                    "observedGeneration": 1,
                    "conditions": [condition("Ready", "True", "", "AllReady")],
                }
            ),
            "Healthy",
            "AllReady",
            id="reason-when-no-message",
        ),
        pytest.param(
            service(
                status={
                    "observedGeneration": 1,
                    "conditions": [
                        condition("Ready", "Unknown"),
                        condition("ScalingLimited", "True"),
                    ],
                }
            ),
            "Progressing",
            "",
            id="unknown-ready",
        ),
    ],
)
@pytest.mark.timeout(30)
def test_health_of_llmservice(obj: dict[str, Any], expected_status: str, message_part: str) -> None:
    status, message = assess(obj)
    assert status == expected_status
    assert message_part in message


@pytest.mark.timeout(30)
def test_health_returns_only_argocd_statuses() -> None:
    script = health_script()
    for word in ("Healthy", "Degraded", "Progressing"):
        assert f'"{word}"' in script
    assert "Suspended" not in script and "Missing" not in script


def deployment(replicas: int, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas,
            "availableReplicas": ready,
        },
    }


UNSCHEDULABLE_POD = {
    "metadata": {"labels": {"pdserve.dev/role": "prefill"}},
    "status": {
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/10 nodes are available: 4 Insufficient google.com/tpu.",
            }
        ]
    },
}


@pytest.mark.parametrize(
    ("ready", "pods", "expected"),
    [
        pytest.param(1, [], "Healthy", id="all-ready"),
        pytest.param(0, [], "Progressing", id="starting"),
        pytest.param(0, [UNSCHEDULABLE_POD], "Degraded", id="no-tpu-fits"),
    ],
)
@pytest.mark.timeout(30)
def test_health_of_the_status_the_operator_writes(
    ready: int, pods: list[dict[str, Any]], expected: str
) -> None:
    """The controller's own status computation, judged by the health check."""
    from pdserve.controller.status import Observation, compute_status

    seen = Observation(
        name="chat",
        namespace="default",
        generation=1,
        autoscaling_enabled=False,
        desired={"prefill": 1, "decode": 1, "router": 1},
        workloads={
            "prefill": deployment(1, ready),
            "decode": deployment(1, 1),
            "router": deployment(1, 1),
        },
        pods=pods,
    )
    status = compute_status(seen, "2026-01-01T00:00:00Z")
    health, message = assess(service(status=status))
    assert health == expected, message
    if expected == "Degraded":
        assert "google.com/tpu" in message
