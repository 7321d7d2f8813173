"""Names and labels of an LLMService's children (the shared contract of every component)."""

from __future__ import annotations

from typing import Literal

Role = Literal["prefill", "decode", "router"]
ROLES: tuple[Role, ...] = ("prefill", "decode", "router")
WORKER_ROLES: tuple[Literal["prefill", "decode"], ...] = ("prefill", "decode")

FIELD_MANAGER = "pdserve-operator"
PLANNER_FIELD_MANAGER = "pdserve-planner"  # replicas (through /scale), status.autoscaling
RECOMMENDER_FIELD_MANAGER = "pdserve-recommender"  # status.recommendation
KV_HEALTH_FIELD_MANAGER = "pdserve-kv-health"  # the KVTransferHealthy condition
MANAGED_BY = "pdserve-operator"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_ROLE = "pdserve.dev/role"
LABEL_SERVICE = "pdserve.dev/llmservice"
# On the pods of a multi-node replica other than its leader: they compute, serve nothing, and
# so carry no role label (no Service, PodDisruptionBudget or planner count selects them).
LABEL_FOLLOWER_OF = "pdserve.dev/follower-of"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
ANNOTATION_CONFIG_HASH = "pdserve.dev/config-hash"


def deployment_name(service: str, role: Role) -> str:
    return f"{service}-{role}"


def workers_service_name(service: str, role: Literal["prefill", "decode"]) -> str:
    """The headless Service the router resolves to find a role's workers."""
    return f"{service}-{role}-workers"


def ranks_policy_name(service: str, role: Literal["prefill", "decode"]) -> str:
    """The NetworkPolicy that lets the pods of a multi-node replica reach each other."""
    return f"{workers_service_name(service, role)}-ranks"


def router_service_name(service: str) -> str:
    return f"{service}-router"


# Where worker pods mount the KV auth Secret, and the key holding it.
KV_AUTH_DIR = "/etc/pdserve-kv-auth"  # beside, not inside, the engine ConfigMap mount
KV_AUTH_KEY = "secret"


# Where router pods mount the priority classes' API key Secrets: one subdirectory per class
# (`pdserve router --api-keys-dir`).
API_KEYS_DIR = "/etc/pdserve-api-keys"


def kv_auth_secret_name(service: str) -> str:
    """The Secret whose key the prefill and decode workers prove to each other."""
    return f"{service}-kv-auth"


def engine_configmap_name(service: str) -> str:
    return f"{service}-engine"


def service_labels(service: str) -> dict[str, str]:
    """Labels every child of the LLMService carries."""
    return {
        LABEL_NAME: "pdserve",
        LABEL_INSTANCE: service,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_SERVICE: service,
    }


def role_selector(service: str, role: Role) -> dict[str, str]:
    """The immutable selector of a role's pods."""
    return {LABEL_INSTANCE: service, LABEL_SERVICE: service, LABEL_ROLE: role}


def role_labels(service: str, role: Role) -> dict[str, str]:
    return {**service_labels(service), LABEL_COMPONENT: role, LABEL_ROLE: role}


def follower_labels(service: str, role: Literal["prefill", "decode"]) -> dict[str, str]:
    return {**service_labels(service), LABEL_COMPONENT: f"{role}-follower",
            LABEL_FOLLOWER_OF: role}


def children_selector(service: str) -> str:
    """A label selector (string form) for every child of one LLMService."""
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_SERVICE}={service}"
