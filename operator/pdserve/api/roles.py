"""The prefill and decode worker roles and the router in front of them."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, JsonValue, model_validator

from pdserve.api.accelerators import TPU_SINGLE_HOST_TOPOLOGIES, AcceleratorKind
from pdserve.api.base import ApiModel, cel
from pdserve.api.compression import KVCompressionSpec
from pdserve.api.pods import PodOverrides

TpuTopology = Literal["1x1", "2x2", "2x4"]
RoutingPolicy = Literal["prefix-affinity", "least-loaded", "round-robin"]
DisaggregationMode = Literal["conditional", "always"]  # router/disagg_policy.py
MAX_ACCELERATORS_PER_POD = 8
MAX_NODES_PER_REPLICA = 16

_TOPOLOGY_CHIPS_RULE = " || ".join(
    f"(self.topology == '{shape}' && self.count == {chips})"
    for shape, chips in TPU_SINGLE_HOST_TOPOLOGIES.items()
)
_TOPOLOGY_CHIPS_TEXT = ", ".join(
    f"{shape} -> {chips}" for shape, chips in TPU_SINGLE_HOST_TOPOLOGIES.items()
)


class AcceleratorSpec(ApiModel):
    """The accelerator each pod of a role gets."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!has(self.topology) || self.kind.startsWith('tpu-')",
            "topology applies only to TPU accelerators (tpu-v5e, tpu-v6e)"),
        cel("!self.kind.startsWith('tpu-') || has(self.topology)",
            "TPU accelerators need a topology (1x1, 2x2 or 2x4)"),
        cel(f"!has(self.topology) || !self.kind.startsWith('tpu-') || {_TOPOLOGY_CHIPS_RULE}",
            f"count must equal the chips of the TPU topology ({_TOPOLOGY_CHIPS_TEXT})"),
        cel("self.kind != 'cpu' || self.count == 1",
            "count must be 1 for cpu (size CPU pods with resources)"),
        cel("self.nodes == 1 || !self.kind.startsWith('tpu-')",
            "nodes must be 1 on TPU (pdserve serves single-host TPU slices)"),
    ]})

    kind: AcceleratorKind = Field(
        default="cpu",
        description="Accelerator kind; it selects the resource name, node labels and "
        "tolerations (nvidia-*: nvidia.com/gpu, tpu-*: google.com/tpu, cpu: none).",
    )
    count: int = Field(
        default=1, ge=1, le=MAX_ACCELERATORS_PER_POD,
        description="Accelerators per pod (requests = limits). For TPUs, the chips of the "
        "single-host slice.",
    )
    topology: TpuTopology | None = Field(
        default=None,
        description="TPU slice topology (cloud.google.com/gke-tpu-topology); TPU kinds only.",
    )
    nodes: int = Field(
        default=1, ge=1, le=MAX_NODES_PER_REPLICA,
        description="Pods (nodes) one model replica spans, each with `count` accelerators. "
        "Above 1 the replica is one tensor-parallel group of count x nodes devices, rendered "
        "as a LeaderWorkerSet (leaderworkerset.x-k8s.io, whose controller must be installed); "
        "replicas then count groups. Not on TPU.",
    )

    @property
    def devices_per_replica(self) -> int:
        """The accelerators one replica holds (a cpu pod counts 1): the planner's budget unit
        and the tensor-parallel degree."""
        return self.count * self.nodes

    @model_validator(mode="after")
    def _topology_matches_kind(self) -> AcceleratorSpec:
        is_tpu = self.kind.startswith("tpu-")
        if self.topology is not None and not is_tpu:
            raise ValueError("topology applies only to TPU accelerators (tpu-v5e, tpu-v6e)")
        if is_tpu and self.topology is None:
            raise ValueError("TPU accelerators need a topology (1x1, 2x2 or 2x4)")
        if is_tpu and self.topology and TPU_SINGLE_HOST_TOPOLOGIES[self.topology] != self.count:
            raise ValueError(
                f"count must equal the chips of the TPU topology ({_TOPOLOGY_CHIPS_TEXT})"
            )
        if self.kind == "cpu" and self.count != 1:
            raise ValueError("count must be 1 for cpu (size CPU pods with resources)")
        if is_tpu and self.nodes != 1:
            raise ValueError("nodes must be 1 on TPU (pdserve serves single-host TPU slices)")
        return self


class EngineSpec(ApiModel):
    """Engine knobs of a role's workers; unset knobs come from the profile."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!has(self.chunkSize) || !has(self.maxNumBatchedTokens) "
            "|| self.chunkSize <= self.maxNumBatchedTokens",
            "chunkSize must not exceed maxNumBatchedTokens"),
    ]})

    max_num_batched_tokens: int | None = Field(
        default=None, ge=16, le=1_048_576,
        description="Token budget of one engine step (prompt chunks + decode tokens).",
    )
    chunk_size: int | None = Field(
        default=None, ge=16, le=1_048_576,
        description="Most prompt tokens of one request processed in one step (chunked prefill). "
        "Reserved: today's runtime bounds chunks by maxNumBatchedTokens only.",
    )
    max_num_seqs: int | None = Field(
        default=None, ge=1, le=4096, description="Most sequences running at once.",
    )
    enable_prefix_caching: bool | None = Field(
        default=None, description="Reuse KV blocks of shared prompt prefixes.",
    )
    block_size: Literal[8, 16, 32, 64, 128] | None = Field(
        default=None, description="Tokens per KV cache block.",
    )
    num_kv_blocks: int | None = Field(
        default=None, ge=1, le=10_000_000,
        description="KV cache blocks per worker; unset: sized by the runtime from free memory.",
    )
    kv_compression: KVCompressionSpec | None = Field(
        default=None, description="Token pruning (KV compression); off when unset.",
    )

    @model_validator(mode="after")
    def _chunk_fits_step(self) -> EngineSpec:
        if (self.chunk_size is not None and self.max_num_batched_tokens is not None
                and self.chunk_size > self.max_num_batched_tokens):
            raise ValueError("chunkSize must not exceed maxNumBatchedTokens")
        return self


class RoleSpec(PodOverrides):
    """A pool of workers of one role (prefill or decode)."""

    replicas: int | None = Field(
        default=None, ge=0, le=1000,
        description="Worker pods; unset: from the profile's prefill:decode split (and, with "
        "autoscaling, from the planner's decisions).",
    )
    accelerator: AcceleratorSpec = Field(
        default_factory=AcceleratorSpec, description="Accelerator of each pod.",
    )
    engine: EngineSpec = Field(
        default_factory=EngineSpec, description="Engine knobs (override the profile).",
    )


MAX_PRIORITY_CLASSES = 16
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class SecretReference(ApiModel):
    """A Secret in the LLMService's namespace (the `{name}` of Kubernetes'
    LocalObjectReference: a `...Ref` object, as cert-manager's `...SecretRef`, leaves room for
    more fields without renaming)."""

    name: str = Field(
        min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN,
        description="Name of the Secret, in the LLMService's namespace.",
    )


class PriorityClassSpec(ApiModel):
    """A class of requests with its own bounded queue at the router (router/priority.py)."""

    name: str = Field(
        min_length=1, max_length=63, pattern=_DNS_LABEL,
        description="Class name (a DNS label), as requests name it in the "
        "x-pdserve-priority-class header or the body's priority_class.",
    )
    priority: int = Field(
        ge=-1_000_000, le=1_000_000,
        description="The priority passed to the workers' schedulers; smaller is more urgent, "
        "and the router's queues rank classes the same way (unique per LLMService).",
    )
    max_queue: int = Field(
        default=256, ge=0, le=100_000,
        description="Most requests of this class waiting at each router; one more is "
        "answered 429 with Retry-After.",
    )
    ttft_target_seconds: float | None = Field(
        default=None, gt=0, le=3600,
        description="Time-to-first-token target. For the lowest class, a request whose "
        "expected wait exceeds it is shed at once (429 with Retry-After).",
    )
    api_keys_secret_ref: SecretReference | None = Field(
        default=None,
        description="A Secret whose every data value is an API key of this class (the data "
        "keys only label them, e.g. per tenant): a request with Authorization: Bearer <key> "
        "gets this class whatever it names. The router pods mount it read-only (the kubelet "
        "reads it; the operator never does) and reload it within seconds of a change. While "
        "the Secret does not exist the router pods wait in ContainerCreating.",
    )


_ROUTER_RULES: list[JsonValue] = [
    cel("!has(self.priorityClasses) || self.priorityClasses.all(c, "
        "self.priorityClasses.exists_one(d, d.name == c.name))",
        "priorityClasses: names must be unique", ".priorityClasses"),
    cel("!has(self.priorityClasses) || self.priorityClasses.all(c, "
        "self.priorityClasses.exists_one(d, d.priority == c.priority))",
        "priorityClasses: priorities must be unique (they order the classes)",
        ".priorityClasses"),
    cel("!has(self.defaultPriorityClass) || (has(self.priorityClasses) && "
        "self.priorityClasses.exists(c, c.name == self.defaultPriorityClass))",
        "defaultPriorityClass must name one of priorityClasses", ".defaultPriorityClass"),
    cel("!has(self.priorityClasses) || self.priorityClasses.all(c, "
        "!has(c.apiKeysSecretRef) || self.priorityClasses.exists_one(d, "
        "has(d.apiKeysSecretRef) && d.apiKeysSecretRef.name == c.apiKeysSecretRef.name))",
        "priorityClasses: each apiKeysSecretRef must name a different Secret (a key belongs "
        "to one class)", ".priorityClasses"),
    cel("!has(self.maxInFlightPerWorker) || (has(self.priorityClasses) && "
        "size(self.priorityClasses) > 0)",
        "maxInFlightPerWorker applies only with priorityClasses", ".maxInFlightPerWorker"),
]


class RouterSpec(PodOverrides):
    """The OpenAI-compatible router that clients talk to."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _ROUTER_RULES})

    replicas: int = Field(default=1, ge=1, le=100, description="Router pods.")
    routing_policy: RoutingPolicy = Field(
        default="prefix-affinity",
        description="How a request picks its workers: prefix-affinity (reuse cached prefixes), "
        "least-loaded or round-robin.",
    )
    disaggregation: DisaggregationMode = Field(
        default="conditional",
        description="conditional: per request, from timings the router measures, a prompt "
        "stays on its decode worker while that worker's local prefills take at most 5% of its "
        "time or while a handoff would delay it more than it would stall the streams there, "
        "and goes through the prefill pool otherwise (or when the prefill pool is faster for "
        "it). always: every prompt of shortPromptThreshold tokens or more goes through the "
        "prefill pool.",
    )
    short_prompt_threshold: int = Field(
        default=0, ge=0, le=1_048_576,
        description="Prompts shorter than this many tokens run entirely on a decode worker: "
        "always with disaggregation always, and with conditional until the router has "
        "measured a prefill; 0: none.",
    )
    priority_classes: list[PriorityClassSpec] | None = Field(
        default=None, max_length=MAX_PRIORITY_CLASSES,
        description="Request classes, each with a bounded queue at the router: a free slot "
        "goes to the most urgent waiting class; the lowest class is shed first (429) under "
        "overload. Unset: no queueing at the router.",
    )
    default_priority_class: str | None = Field(
        default=None, max_length=63,
        description="The class of a request that names none; unset: the lowest class.",
    )
    starvation_guard_every: int = Field(
        default=10, ge=2, le=1000,
        description="At least one of every N admissions goes to the oldest waiting request "
        "of the lowest class.",
    )
    max_in_flight_per_worker: int | None = Field(
        default=None, ge=1, le=4096,
        description="Requests in flight per ready decode worker before the router queues; "
        "unset: the max_num_seqs each worker reports plus a quarter (a short queue at the "
        "worker, which orders it by priority).",
    )

    @model_validator(mode="after")
    def _priority_classes_hold(self) -> RouterSpec:
        classes = self.priority_classes or []
        names = [c.name for c in classes]
        if len(set(names)) != len(names):
            raise ValueError(f"priorityClasses: names must be unique, got {names}")
        priorities = [c.priority for c in classes]
        if len(set(priorities)) != len(priorities):
            raise ValueError("priorityClasses: priorities must be unique (they order the "
                             f"classes), got {priorities}")
        if self.default_priority_class is not None and self.default_priority_class not in names:
            raise ValueError(f"defaultPriorityClass {self.default_priority_class!r} must name "
                             f"one of priorityClasses {names}")
        secrets = [c.api_keys_secret_ref.name for c in classes if c.api_keys_secret_ref]
        if len(set(secrets)) != len(secrets):
            raise ValueError("priorityClasses: each apiKeysSecretRef must name a different "
                             f"Secret (a key belongs to one class), got {secrets}")
        if self.max_in_flight_per_worker is not None and not classes:
            raise ValueError("maxInFlightPerWorker applies only with priorityClasses")
        return self

    def api_keys_secrets(self) -> dict[str, str]:
        """Class name -> the Secret holding its API keys, for the classes that have one."""
        return {c.name: c.api_keys_secret_ref.name for c in self.priority_classes or []
                if c.api_keys_secret_ref is not None}

    def priority_config(self) -> dict[str, object] | None:
        """The router's --priority-classes JSON value, or None without classes."""
        if not self.priority_classes:
            return None
        config: dict[str, object] = {  # the Secrets reach the router as mounted files
            "classes": [c.model_dump(mode="json", by_alias=True, exclude_none=True,
                                     exclude={"api_keys_secret_ref"})
                        for c in self.priority_classes],
            "starvationGuardEvery": self.starvation_guard_every,
        }
        if self.default_priority_class is not None:
            config["defaultClass"] = self.default_priority_class
        if self.max_in_flight_per_worker is not None:
            config["maxInFlightPerWorker"] = self.max_in_flight_per_worker
        return config
