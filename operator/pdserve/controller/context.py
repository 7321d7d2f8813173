"""Everything the templates need, computed from one LLMService (pure: spec in, values out)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from pdserve.api.accelerators import GKE_TPU_TOPOLOGY_LABEL, accelerator_facts
from pdserve.api.autoscaling import ReplicaBounds
from pdserve.api.network import NAMESPACE_NAME_LABEL, NetworkPolicySpec
from pdserve.api.pods import PodOverrides
from pdserve.api.resolve import engine_settings, initial_replicas, served_model_name
from pdserve.api.resource import API_VERSION, KIND
from pdserve.api.roles import RoleSpec
from pdserve.api.spec import ROUTER_HTTP_PORT, WORKER_HTTP_PORT, LLMServiceSpec
from pdserve.controller.names import (
    API_KEYS_DIR,
    KV_AUTH_DIR,
    KV_AUTH_KEY,
    LWS_NAME_LABEL,
    Role,
    deployment_name,
    engine_configmap_name,
    follower_labels,
    kv_auth_secret_name,
    ranks_policy_name,
    role_labels,
    role_selector,
    router_service_name,
    service_labels,
    workers_service_name,
)

WorkerRole = Literal["prefill", "decode"]
MODELS_DIR = "/models"
CONFIG_DIR = "/etc/pdserve"
# Longer than the worker's drain timeout plus the preStop pause, so draining is never cut off.
DRAIN_TIMEOUT_SECONDS = 60
TERMINATION_GRACE_SECONDS = 90
ROUTER_TERMINATION_GRACE_SECONDS = 60
# Where the pods of a multi-node replica meet their leader (torch.distributed's usual port);
# the LeaderWorkerSet controller gives every pod its leader's address and its own index.
RENDEZVOUS_PORT = 29500
LWS_RENDEZVOUS_ARGS = ("--num-nodes", "$(LWS_GROUP_SIZE)", "--node-rank", "$(LWS_WORKER_INDEX)",
                       "--rendezvous", f"$(LWS_LEADER_ADDRESS):{RENDEZVOUS_PORT}")

# Requests/limits used when a role gives no `resources` of its own; sized per family so that a
# GPU/TPU host process has room for weights staging while a CPU demo pod stays small.
DEFAULT_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "cpu": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}},
    "gpu": {"requests": {"cpu": "4", "memory": "32Gi"}, "limits": {"memory": "64Gi"}},
    "tpu": {"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"memory": "64Gi"}},
    "router": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
}


@dataclass(frozen=True)
class Owner:
    """The LLMService as seen in its metadata: what children are named after and owned by."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


def engine_config(spec: LLMServiceSpec, role: WorkerRole) -> dict[str, Any]:
    """The JSON a worker reads with `pdserve worker --config` (keys are its flag names)."""
    settings = engine_settings(spec, role)
    config: dict[str, Any] = {
        "dtype": spec.model.dtype,
        "max_model_len": spec.model.max_model_len,
        "max_num_seqs": settings.max_num_seqs,
        "max_num_batched_tokens": settings.max_num_batched_tokens,
        "block_size": settings.block_size,
        "num_kv_blocks": settings.num_kv_blocks,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "kv_transport": spec.kv_transport(),
        "kv_timeout": spec.kv_transfer.timeout_seconds,
        "kv_fallback": spec.kv_transfer.fallback,
        "drain_timeout": DRAIN_TIMEOUT_SECONDS,
    }
    compression = getattr(spec, role).engine.kv_compression
    if compression is not None:
        config.update(compression.worker_settings())
    return {key: value for key, value in config.items() if value is not None}


def engine_config_files(spec: LLMServiceSpec) -> dict[str, str]:
    """ConfigMap data: one JSON file per worker role."""
    return {f"{role}.json": json.dumps(engine_config(spec, role), indent=2, sort_keys=True)
            for role in ("prefill", "decode")}


def _model_argument(spec: LLMServiceSpec) -> str:
    source = spec.model.source
    if source.builtin is not None:
        return f"builtin:{source.builtin}"
    if source.path is not None:
        return source.path
    if source.pvc is not None:
        return f"{MODELS_DIR}/{source.pvc.path}".rstrip("/")
    return f"{MODELS_DIR}/model"


def _model_volume(spec: LLMServiceSpec) -> dict[str, Any] | None:
    source = spec.model.source
    if source.pvc is not None:
        return {"name": "model",
                "persistentVolumeClaim": {"claimName": source.pvc.claim_name, "readOnly": True}}
    if source.uri is not None:
        return {"name": "model", "emptyDir": {}}
    return None


def _resources(role_spec: RoleSpec, family: str, accelerator: dict[str, int]) -> dict[str, Any]:
    """Requests and limits: the role's own (or the family defaults) plus its accelerators,
    which Kubernetes requires as requests = limits."""
    given = role_spec.resources
    base = DEFAULT_RESOURCES[family]
    requests: dict[str, Any] = dict(base["requests"] if given is None else given.requests or {})
    limits: dict[str, Any] = dict(base["limits"] if given is None else given.limits or {})
    requests.update(accelerator)
    limits.update(accelerator)
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def _rollout(family: str) -> dict[str, int]:
    """Accelerator pools are usually full: a surge pod would wait for a free device forever
    and stall the roll, so those pods are replaced one at a time instead."""
    if family in ("gpu", "tpu"):
        return {"maxSurge": 0, "maxUnavailable": 1}
    return {"maxSurge": 1, "maxUnavailable": 0}


def _placement(role_spec: PodOverrides, node_labels: dict[str, str],
               tolerations: list[dict[str, Any]]) -> dict[str, Any]:
    user_tolerations = [t.to_k8s() for t in role_spec.tolerations or []]
    return {
        "node_selector": {**node_labels, **(role_spec.node_selector or {})},
        "tolerations": tolerations + user_tolerations,
        "affinity": role_spec.affinity,
    }


def image_variant(image: str, tag_suffix: str) -> str:
    """`image` with `tag_suffix` on its tag (`pdserve:0.1.0` -> `pdserve:0.1.0-tpu`; no tag:
    `latest`). An image pinned by digest is used as given: a digest names one image."""
    if not tag_suffix or "@" in image:
        return image
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # the colon was a registry port's, or there is none
        return f"{image}:latest{tag_suffix}"
    return f"{name}:{tag}{tag_suffix}"


def workload_template(spec: LLMServiceSpec, role: WorkerRole) -> str:
    """A role's workload: a Deployment, or a LeaderWorkerSet when a replica spans nodes."""
    if getattr(spec, role).accelerator.nodes > 1:
        return "worker-leaderworkerset.yaml.j2"
    return "worker-deployment.yaml.j2"


def worker_context(spec: LLMServiceSpec, owner: Owner, role: WorkerRole, image: str,
                   replicas: int | None) -> dict[str, Any]:
    """Values of one worker workload (Deployment or LeaderWorkerSet)."""
    role_spec: RoleSpec = getattr(spec, role)
    facts = accelerator_facts(role_spec.accelerator.kind)
    node_labels = dict(facts.node_labels)
    if role_spec.accelerator.topology is not None:
        node_labels[GKE_TPU_TOPOLOGY_LABEL] = role_spec.accelerator.topology
    accelerator = ({facts.resource_name: role_spec.accelerator.count}
                   if facts.resource_name is not None else {})
    tolerations = [{"key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect}
                   for t in facts.tolerations]
    config = engine_config_files(spec)[f"{role}.json"]
    nodes = role_spec.accelerator.nodes
    command = [
        "pdserve", "worker", "--role", role, "--model", _model_argument(spec),
        "--served-model-name", served_model_name(spec, owner.name),
        "--host", "0.0.0.0", "--port", str(WORKER_HTTP_PORT),
        "--kv-port", str(spec.kv_transfer.port), "--device", facts.device,
        "--tensor-parallel-size", str(role_spec.accelerator.count * nodes),
        *(LWS_RENDEZVOUS_ARGS if nodes > 1 else ()),
        "--kv-auth-secret-file", f"{KV_AUTH_DIR}/{KV_AUTH_KEY}",
        "--config", f"{CONFIG_DIR}/{role}.json",
    ]
    return {
        **_common(spec, owner, role, image_variant(image, facts.image_tag_suffix), replicas),
        **_placement(role_spec, node_labels, tolerations),
        "command": command,
        "nodes": nodes,
        "follower_labels": follower_labels(owner.name, role),
        "rendezvous_port": RENDEZVOUS_PORT if nodes > 1 else None,
        "worker_env": facts.worker_env,
        "kv_port": spec.kv_transfer.port,
        "resources": _resources(role_spec, facts.family, accelerator),
        "rollout": _rollout(facts.family),
        "config_hash": hashlib.sha256(config.encode()).hexdigest()[:16],
        "config_map": engine_configmap_name(owner.name),
        "config_dir": CONFIG_DIR,
        "kv_auth_secret": kv_auth_secret_name(owner.name),
        "kv_auth_dir": KV_AUTH_DIR,
        "model_uri": spec.model.source.uri,
        "model_dir": f"{MODELS_DIR}/model",
        "model_volume": _model_volume(spec),
        "models_dir": MODELS_DIR,
        "grace_seconds": TERMINATION_GRACE_SECONDS,
    }


def router_context(spec: LLMServiceSpec, owner: Owner, image: str) -> dict[str, Any]:
    """Values of the router Deployment."""
    router = spec.router

    def service(role: WorkerRole) -> str:
        return f"{workers_service_name(owner.name, role)}.{owner.namespace}.svc:{WORKER_HTTP_PORT}"

    command = [
        "pdserve", "router", "--host", "0.0.0.0", "--port", str(ROUTER_HTTP_PORT),
        "--served-model-name", served_model_name(spec, owner.name),
        "--prefill-service", service("prefill"), "--decode-service", service("decode"),
        "--routing-policy", router.routing_policy,
        "--disaggregation", router.disaggregation,
        "--short-prompt-threshold", str(router.short_prompt_threshold),
    ]
    priority = router.priority_config()
    if priority is not None:
        command += ["--priority-classes", json.dumps(priority, sort_keys=True,
                                                     separators=(",", ":"))]
    # Each class's key Secret, mounted by the kubelet (the operator never reads Secrets);
    # volumes by index: a class name (63 characters) plus a prefix would overflow a volume name.
    api_keys = [{"volume": f"api-keys-{index}", "secret": secret,
                 "path": f"{API_KEYS_DIR}/{name}"}
                for index, (name, secret) in enumerate(router.api_keys_secrets().items())]
    if api_keys:
        command += ["--api-keys-dir", API_KEYS_DIR]
    given = router.resources.to_k8s() if router.resources is not None else None
    return {
        **_common(spec, owner, "router", image, router.replicas),
        **_placement(router, {}, []),
        "command": command,
        "api_keys": api_keys,
        "resources": given or DEFAULT_RESOURCES["router"],
        "rollout": _rollout("router"),
        "grace_seconds": ROUTER_TERMINATION_GRACE_SECONDS,
    }


def _common(spec: LLMServiceSpec, owner: Owner, role: Role, image: str,
            replicas: int | None) -> dict[str, Any]:
    return {
        "name": deployment_name(owner.name, role),
        "namespace": owner.namespace,
        "owner": owner.reference(),
        "labels": role_labels(owner.name, role),
        "selector": role_selector(owner.name, role),
        "role": role,
        "replicas": replicas,
        "image": image,
        "image_pull_policy": spec.image_pull_policy,
    }


def _metrics_peers(policy: NetworkPolicySpec) -> list[dict[str, Any]]:
    """The NetworkPolicyPeers admitted to the workers' HTTP port besides the routers."""
    by_name = [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}}
               for namespace in policy.metrics_namespaces]
    return [peer.to_k8s() for peer in policy.metrics_peers] + by_name


def service_context(spec: LLMServiceSpec, owner: Owner) -> dict[str, Any]:
    """Values shared by the Services, ConfigMap, PodDisruptionBudgets and NetworkPolicies."""
    return {
        "service": owner.name,
        "namespace": owner.namespace,
        "owner": owner.reference(),
        "labels": service_labels(owner.name),
        "router_service": router_service_name(owner.name),
        "router_port": ROUTER_HTTP_PORT,
        "worker_port": WORKER_HTTP_PORT,
        "kv_port": spec.kv_transfer.port,
        "config_map": engine_configmap_name(owner.name),
        "config_files": engine_config_files(spec),
        "metrics_peers": _metrics_peers(spec.network_policy),
        "workers": {role: {"name": workers_service_name(owner.name, role),
                           "labels": role_labels(owner.name, role),
                           "selector": role_selector(owner.name, role)}
                    for role in ("prefill", "decode")},
        "selectors": {role: role_selector(owner.name, role)
                      for role in ("prefill", "decode", "router")},
        "pdb_names": {role: deployment_name(owner.name, role)
                      for role in ("prefill", "decode", "router")},
        "role_labels": {role: role_labels(owner.name, role)
                        for role in ("prefill", "decode", "router")},
        # Roles whose replicas span several pods -> the label that selects one LeaderWorkerSet's
        # pods (its ranks connect to each other on ports gloo/NCCL pick).
        "multi_node": {role: {LWS_NAME_LABEL: deployment_name(owner.name, role)}
                       for role in ("prefill", "decode")
                       if getattr(spec, role).accelerator.nodes > 1},
        "ranks_policies": {role: ranks_policy_name(owner.name, role)
                           for role in ("prefill", "decode")},
    }


def desired_replicas(spec: LLMServiceSpec, role: WorkerRole,
                     decided: dict[str, Any] | None) -> int:
    """Worker replicas to render: the planner's last decision (status.autoscaling), kept in
    the role's bounds, while autoscaling is on; else the spec/profile value."""
    if spec.autoscaling.enabled and decided:
        value = decided.get(f"{role}Replicas")
        if isinstance(value, int) and value >= 0:
            bounds: ReplicaBounds = getattr(spec.autoscaling, role)
            return max(bounds.min_replicas, min(bounds.max_replicas, value))
    return initial_replicas(spec, role)
