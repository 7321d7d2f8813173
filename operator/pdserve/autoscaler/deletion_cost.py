"""Drain-safe scale-down: which pods a ReplicaSet should remove first.

Kubernetes deletes the pods with the lowest `controller.kubernetes.io/pod-deletion-cost` first,
so each pod's cost is its in-flight work (running plus waiting requests): idle pods go first and
the busiest last. The loop annotates pods with these values just before lowering replicas."""

from __future__ import annotations

import math
from collections.abc import Mapping

DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
# The annotation is an int32.
MAX_COST = 2**31 - 1
# Requests are weighted so that fractional per-pod averages still order pods.
COST_PER_REQUEST = 100


def deletion_costs(in_flight: Mapping[str, float]) -> dict[str, str]:
    """pod name -> annotation value. Unknown (NaN) or negative work counts as zero."""
    costs: dict[str, str] = {}
    for pod, work in in_flight.items():
        value = work if math.isfinite(work) and work > 0 else 0.0
        costs[pod] = str(min(MAX_COST, round(value * COST_PER_REQUEST)))
    return costs
