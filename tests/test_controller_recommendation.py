"""The operator's recommendation job against stand-ins of the API and of Prometheus: it writes
status.recommendation, posts an Event only for a saving of at least 20%, and never the spec."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import kopf
import pytest

from pdserve.autoscaler.prometheus_source import Selector
from pdserve.controller.names import RECOMMENDER_FIELD_MANAGER
from pdserve.controller.recommendation import CHEAPER_REASON, recommend_configuration

PROMETHEUS = "http://prometheus:9090"
# 4 req/s of 2,000 prompt and 200 generated tokens: one tpu-v6e pod ($2.70/hour) serves it.
SERVING = {"arrival_rate": 4.0, "peak_arrival_rate": 6.0, "decode_request_rate": 4.0,
           "decode_prompt_rate": 8000.0, "decode_generation_rate": 800.0,
           "worker_cache_hit_rate": 0.0}
SPEC = {
    "model": {"source": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"}},
    "prefill": {"accelerator": {"kind": "nvidia-l4", "count": 1}},
    "decode": {"accelerator": {"kind": "tpu-v5e", "topology": "1x1", "count": 1}},
    "autoscaling": {"enabled": True, "prometheusUrl": PROMETHEUS,
                    "slo": {"ttftMilliseconds": 1000, "tpotMilliseconds": 50}},
}


class ServedWorkload:
    """The planner's Prometheus inputs, as the source the job keeps in its memo returns them."""

    def values(self, selector: Selector) -> dict[str, float]:
        assert (selector.namespace, selector.llmservice) == ("team", "chat")
        return dict(SERVING)


class StatusOnlyKube:
    """Only the two writes the job may make: any other call (an apply, a patch of the spec)
    fails the test with an AttributeError."""

    def __init__(self) -> None:
        self.statuses: list[tuple[str, Mapping[str, Any]]] = []
        self.events: list[tuple[str, str, str]] = []

    def apply_status(self, namespace: str, name: str, status: Mapping[str, Any],
                     field_manager: str) -> bool:
        self.statuses.append((field_manager, copy.deepcopy(dict(status))))
        return True

    def post_event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str,
                   *, component: str, stamp: str | None = None) -> None:
        self.events.append((type_, reason, message))


def _run(prefill_replicas: int, decode_replicas: int) -> tuple[StatusOnlyKube, dict[str, Any]]:
    body = {"apiVersion": "pdserve.dev/v1alpha1", "kind": "LLMService",
            "metadata": {"name": "chat", "namespace": "team", "uid": "u1"},
            "spec": copy.deepcopy(SPEC),
            "status": {"prefill": {"desiredReplicas": prefill_replicas},
                       "decode": {"desiredReplicas": decode_replicas}}}
    unchanged = copy.deepcopy(body)
    kube = StatusOnlyKube()
    memo = kopf.Memo(kube=kube, planner_source=(PROMETHEUS, ServedWorkload()))
    recommend_configuration(body=body, spec=body["spec"], name="chat", namespace="team",
                            memo=memo)
    assert body == unchanged, "the job changes nothing of the object it reads"
    assert len(kube.statuses) == 1
    manager, status = kube.statuses[0]
    assert manager == RECOMMENDER_FIELD_MANAGER and set(status) == {"recommendation"}
    recommendation: dict[str, Any] = status["recommendation"]
    assert recommendation["costPerHour"] == pytest.approx(2.70)
    return kube, recommendation


def test_a_saving_of_at_least_20_percent_posts_an_event() -> None:
    # 1 L4 + 3 v5e: $0.85 + 3 x $1.20 = $4.45/hour.
    kube, recommendation = _run(prefill_replicas=1, decode_replicas=3)
    assert recommendation["currentCostPerHour"] == pytest.approx(4.45)
    assert recommendation["saving"] == pytest.approx(1 - 2.70 / 4.45, abs=1e-4)
    assert kube.events == [("Normal", CHEAPER_REASON, recommendation["message"])]


def test_a_smaller_saving_is_recorded_without_an_event() -> None:
    # 1 L4 + 2 v5e: $3.25/hour, a 17% saving.
    kube, recommendation = _run(prefill_replicas=1, decode_replicas=2)
    assert recommendation["currentCostPerHour"] == pytest.approx(3.25)
    assert 0 < recommendation["saving"] < 0.2
    assert kube.events == []
