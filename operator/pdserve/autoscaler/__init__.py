"""pdserve.autoscaler: Prometheus queries -> pure planner -> replica decisions."""

from pdserve.autoscaler.config import CapacityPrior, PlannerConfig, PlannerConfigError, RoleBounds
from pdserve.autoscaler.planner import plan
from pdserve.autoscaler.snapshot import MetricsSnapshot, RoleMetrics
from pdserve.autoscaler.state import Decision, PlannerState, Replicas, RoleReplicas

__all__ = [
    "CapacityPrior",
    "Decision",
    "MetricsSnapshot",
    "PlannerConfig",
    "PlannerConfigError",
    "PlannerState",
    "Replicas",
    "RoleBounds",
    "RoleMetrics",
    "RoleReplicas",
    "plan",
]
