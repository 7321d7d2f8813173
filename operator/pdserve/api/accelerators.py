"""Accelerator kinds and the scheduling facts behind them: the one table in code.

The controller turns an accelerator kind into a resource request, node selector and tolerations;
the planner reads the performance figures (public vendor numbers, dense bf16, see FACTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AcceleratorKind = Literal[
    "nvidia-h100", "nvidia-h200", "nvidia-a100", "nvidia-l4", "tpu-v5e", "tpu-v6e", "cpu"
]

GPU_RESOURCE = "nvidia.com/gpu"
TPU_RESOURCE = "google.com/tpu"
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
GKE_TPU_ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
GKE_TPU_TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"

# pdserve runs one pod per TPU host, so only single-host slice shapes are served; the pod asks
# for every chip of the slice.
TPU_SINGLE_HOST_TOPOLOGIES: dict[str, int] = {"1x1": 1, "2x2": 4, "2x4": 8}


@dataclass(frozen=True)
class Toleration:
    key: str
    operator: str
    value: str
    effect: str


@dataclass(frozen=True)
class AcceleratorFacts:
    kind: str
    family: Literal["gpu", "tpu", "cpu"]
    resource_name: str | None
    node_labels: dict[str, str]
    tolerations: tuple[Toleration, ...]
    device: Literal["cuda", "cpu", "xla"]
    peak_bf16_flops: float
    memory_bandwidth_bytes_per_s: float
    memory_bytes: float
    # Chip-to-chip bandwidth within a node, one direction (NVLink, PCIe, TPU ICI): what a
    # tensor-parallel all-reduce moves over.
    link_bytes_per_s: float
    # Network between nodes per chip, one direction (its share of the node's NICs): what a
    # replica spanning nodes (accelerator.nodes > 1) all-reduces over. None: not served.
    scale_out_bytes_per_s: float | None
    topologies: dict[str, int] = field(default_factory=dict)
    # The worker image's variant for this family (its tag + suffix: the TPU image holds
    # torch_xla, see the Dockerfile) and the environment its runtime needs.
    image_tag_suffix: str = ""
    worker_env: dict[str, str] = field(default_factory=dict)


_GPU_TOLERATION = Toleration(GPU_RESOURCE, "Equal", "present", "NoSchedule")
_TPU_TOLERATION = Toleration(TPU_RESOURCE, "Equal", "present", "NoSchedule")
_TERA = 1e12
_GB = 1e9


def _gpu(
    kind: str, gke_label: str, flops: float, bandwidth: float, memory: float, link: float,
    scale_out: float,
) -> AcceleratorFacts:
    return AcceleratorFacts(
        kind=kind, family="gpu", resource_name=GPU_RESOURCE,
        node_labels={GKE_ACCELERATOR_LABEL: gke_label}, tolerations=(_GPU_TOLERATION,),
        device="cuda", peak_bf16_flops=flops * _TERA,
        memory_bandwidth_bytes_per_s=bandwidth * _TERA, memory_bytes=memory * _GB,
        link_bytes_per_s=link * _GB, scale_out_bytes_per_s=scale_out * _GB,
    )


def _tpu(
    kind: str, gke_label: str, flops: float, bandwidth: float, memory: float, link: float,
) -> AcceleratorFacts:
    # torch_xla on PJRT's TPU backend, which finds the host's chips itself (a single-host
    # slice needs no worker ids or hostnames); compiled graphs persist on the cache volume.
    return AcceleratorFacts(
        kind=kind, family="tpu", resource_name=TPU_RESOURCE,
        node_labels={GKE_TPU_ACCELERATOR_LABEL: gke_label}, tolerations=(_TPU_TOLERATION,),
        device="xla", peak_bf16_flops=flops * _TERA,
        memory_bandwidth_bytes_per_s=bandwidth * _TERA, memory_bytes=memory * _GB,
        link_bytes_per_s=link * _GB, scale_out_bytes_per_s=None,  # single-host slices only
        topologies=dict(TPU_SINGLE_HOST_TOPOLOGIES),
        image_tag_suffix="-tpu",
        worker_env={"PJRT_DEVICE": "TPU", "PDSERVE_XLA_CACHE_DIR": "/cache/xla"},
    )


# Figures per device (per chip for TPUs): bf16 dense peak TFLOP/s, memory TB/s, memory GB,
# chip-to-chip link GB/s one way (NVLink 4: 900 bidirectional -> 450; NVLink 3: 600 -> 300;
# L4: PCIe Gen4 x16, 32; TPU ICI per chip: v5e 1,600 Gbit/s -> 200, v6e 3,584 -> 448);
# between nodes, GB/s per GPU one way: H100/H200 one 400 Gbit/s NIC per GPU -> 50, A100 one
# 200 Gbit/s NIC per GPU -> 25, L4 a 100 Gbit/s node NIC shared by 8 GPUs -> 1.5.
ACCELERATORS: dict[str, AcceleratorFacts] = {
    "nvidia-h100": _gpu("nvidia-h100", "nvidia-h100-80gb", 989, 3.35, 80, 450, 50),
    "nvidia-h200": _gpu("nvidia-h200", "nvidia-h200-141gb", 989, 4.8, 141, 450, 50),
    "nvidia-a100": _gpu("nvidia-a100", "nvidia-a100-80gb", 312, 2.0, 80, 300, 25),
    "nvidia-l4": _gpu("nvidia-l4", "nvidia-l4", 121, 0.3, 24, 32, 1.5),
    "tpu-v5e": _tpu("tpu-v5e", "tpu-v5-lite-podslice", 197, 0.819, 16, 200),
    "tpu-v6e": _tpu("tpu-v6e", "tpu-v6e-slice", 918, 1.64, 32, 448),
    # Measured on the project's 2-core build machines (FACTS.md): fp32 matmul ~200 GFLOP/s.
    "cpu": AcceleratorFacts(
        kind="cpu", family="cpu", resource_name=None, node_labels={}, tolerations=(),
        device="cpu", peak_bf16_flops=0.2 * _TERA, memory_bandwidth_bytes_per_s=0.02 * _TERA,
        memory_bytes=16 * _GB, link_bytes_per_s=4 * _GB,  # loopback TCP (FACTS.md)
        scale_out_bytes_per_s=1.25 * _GB,  # 10 Gbit/s Ethernet
    ),
}

ACCELERATOR_RESOURCES: tuple[str, ...] = (GPU_RESOURCE, TPU_RESOURCE)


def accelerator_facts(kind: str) -> AcceleratorFacts:
    """The scheduling and performance facts of an accelerator kind (KeyError if unknown)."""
    return ACCELERATORS[kind]
