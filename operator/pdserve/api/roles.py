"""The prefill and decode worker roles and the router in front of them."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from pdserve.api.accelerators import TPU_SINGLE_HOST_TOPOLOGIES, AcceleratorKind
from pdserve.api.base import ApiModel, cel
from pdserve.api.compression import KVCompressionSpec
from pdserve.api.pods import PodOverrides

TpuTopology = Literal["1x1", "2x2", "2x4"]
RoutingPolicy = Literal["prefix-affinity", "least-loaded", "round-robin"]
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


class RouterSpec(PodOverrides):
    """The OpenAI-compatible router that clients talk to."""

    replicas: int = Field(default=1, ge=1, le=100, description="Router pods.")
    routing_policy: RoutingPolicy = Field(
        default="prefix-affinity",
        description="How a request picks its workers: prefix-affinity (reuse cached prefixes), "
        "least-loaded or round-robin.",
    )
    short_prompt_threshold: int = Field(
        default=0, ge=0, le=1_048_576,
        description="Prompts shorter than this many tokens skip the prefill pool and run "
        "entirely on a decode worker (conditional disaggregation); 0 disables.",
    )
