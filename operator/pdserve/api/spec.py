"""The desired state of an LLMService."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from pdserve.api.autoscaling import AutoscalingSpec
from pdserve.api.base import ApiModel, cel
from pdserve.api.model import ModelSpec
from pdserve.api.network import NetworkPolicySpec
from pdserve.api.profiles import Profile
from pdserve.api.roles import AcceleratorSpec, RoleSpec, RouterSpec

WORKER_HTTP_PORT = 8000
ROUTER_HTTP_PORT = 8080


class KvTransferSpec(ApiModel):
    """How prefill workers hand KV caches over to decode workers."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel(f"self.port != {WORKER_HTTP_PORT}",
            f"port {WORKER_HTTP_PORT} is the workers' HTTP port; pick another KV port"),
    ]})

    transport: Literal["tcp", "nixl"] | None = Field(
        default=None,
        description="How KV moves from prefill to decode pods: tcp (framed raw bytes over the "
        "pod network) works everywhere; nixl (NIXL over UCX: RDMA, NVLink, GPU memory) needs "
        "both roles on GPU or CPU pools with one device per replica. Unset: nixl when both "
        "roles run on one GPU per replica, else tcp (between CPU pods UCX falls back to TCP, "
        "slower than pdserve's own; README).",
    )
    port: int = Field(
        default=9000, ge=1024, le=65535, description="Port decode workers receive KV on.",
    )
    timeout_seconds: float = Field(
        default=10.0, gt=0, le=600, description="How long a decode worker waits for KV.",
    )
    fallback: Literal["recompute", "fail"] = Field(
        default="recompute",
        description="On a failed or late transfer: recompute the prompt on the decode worker, "
        "or fail the request.",
    )

    @model_validator(mode="after")
    def _port_free(self) -> KvTransferSpec:
        if self.port == WORKER_HTTP_PORT:
            raise ValueError(
                f"port {WORKER_HTTP_PORT} is the workers' HTTP port; pick another KV port"
            )
        return self


NIXL_POOLS_MESSAGE = ("kvTransfer.transport nixl needs prefill and decode on GPU or CPU pools "
                      "with one device per replica (a TPU's memory, or a tensor-parallel "
                      "replica's sharded KV, moves with tcp)")
_NIXL_ROLE_RULE = ("(self.{role}.accelerator.kind == 'cpu' || "
                   "(self.{role}.accelerator.kind.startsWith('nvidia-') && "
                   "self.{role}.accelerator.count == 1 && self.{role}.accelerator.nodes == 1))")


def _one_gpu(accelerator: AcceleratorSpec) -> bool:
    return accelerator.kind.startswith("nvidia-") and accelerator.devices_per_replica == 1


def _nixl_can_register(accelerator: AcceleratorSpec) -> bool:
    """NIXL registers one KV tensor per worker: host or CUDA memory, not sharded."""
    return accelerator.kind == "cpu" or _one_gpu(accelerator)


class LLMServiceSpec(ApiModel):
    """A model served with prefill/decode disaggregation."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!has(self.kvTransfer.transport) || self.kvTransfer.transport != 'nixl' || "
            f"({_NIXL_ROLE_RULE.format(role='prefill')} && "
            f"{_NIXL_ROLE_RULE.format(role='decode')})",
            NIXL_POOLS_MESSAGE, ".kvTransfer.transport"),
        cel("!has(self.autoscaling.acceleratorBudget) || self.autoscaling.acceleratorBudget >= "
            "self.autoscaling.prefill.minReplicas * self.prefill.accelerator.count "
            "* self.prefill.accelerator.nodes + "
            "self.autoscaling.decode.minReplicas * self.decode.accelerator.count "
            "* self.decode.accelerator.nodes",
            "autoscaling.acceleratorBudget is below the accelerators of the minimum replicas "
            "(minReplicas x count x nodes, prefill plus decode)",
            ".autoscaling.acceleratorBudget"),
    ]})

    model: ModelSpec = Field(description="The served model and where its weights come from.")
    image: str | None = Field(
        default=None, min_length=1, max_length=512,
        description="Container image of workers and routers; defaults to the operator's own "
        "image (its PDSERVE_IMAGE environment variable).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Pull policy of that image.",
    )
    profile: Profile = Field(
        default="balanced",
        description="Workload shape: balanced, input-heavy (long prompts, e.g. summaries), "
        "output-heavy (long generations, e.g. stories) or agentic (multi-turn, shared "
        "prefixes). Sets the initial prefill:decode split and engine defaults.",
    )
    prefill: RoleSpec = Field(default_factory=RoleSpec, description="The prefill pool.")
    decode: RoleSpec = Field(default_factory=RoleSpec, description="The decode pool.")
    router: RouterSpec = Field(default_factory=RouterSpec, description="The router.")
    kv_transfer: KvTransferSpec = Field(
        default_factory=KvTransferSpec, description="KV cache hand-over between the pools.",
    )
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec, description="The metrics-driven planner.",
    )
    network_policy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec, description="NetworkPolicies around the workers.",
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> LLMServiceSpec:
        if self.kv_transfer.transport == "nixl" and not (
                _nixl_can_register(self.prefill.accelerator)
                and _nixl_can_register(self.decode.accelerator)):
            raise ValueError(NIXL_POOLS_MESSAGE)
        budget = self.autoscaling.accelerator_budget
        minimum = (self.autoscaling.prefill.min_replicas
                   * self.prefill.accelerator.devices_per_replica
                   + self.autoscaling.decode.min_replicas
                   * self.decode.accelerator.devices_per_replica)
        if budget is not None and budget < minimum:
            raise ValueError(
                f"autoscaling.acceleratorBudget {budget} is below the {minimum} accelerators "
                "of the minimum replicas"
            )
        return self

    def kv_transport(self) -> Literal["tcp", "nixl"]:
        """The transport prefill workers use: the spec's, else nixl between single-GPU
        replicas (RDMA / NVLink / GPU memory) and tcp elsewhere."""
        if self.kv_transfer.transport is not None:
            return self.kv_transfer.transport
        both_on_one_gpu = _one_gpu(self.prefill.accelerator) and _one_gpu(self.decode.accelerator)
        return "nixl" if both_on_one_gpu else "tcp"
