"""Accelerator kinds, the scheduling facts behind them and the figures `pdserve plan` relies
on: the one place in code for the hardware facts, each with its source.

The controller turns an accelerator kind into a resource request, node selector and tolerations;
the planner and `pdserve plan` read the performance figures, the prices, the calibration of the
roofline per family and the measured speed of pdserve's KV transport. Sources: the vendors'
data sheets (dense figures, no sparsity), cloud list prices (on-demand, USD, us-central1, late
2026: assumptions that a `pdserve plan --catalog` file replaces), and for `cpu`, the
calibration's CPU row and the KV transport pdserve's own measurements on the project's 2-core
build machines (bench/results/).
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
# The chips one XLA replica computes on today (the runtime refuses more, rather than leave
# reserved chips idle): what `pdserve plan` offers on TPU.
XLA_MAX_CHIPS_PER_REPLICA = 1


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
    # None: no fp8 matmul units (pdserve plan then offers the kind for bf16 only).
    peak_fp8_flops: float | None
    memory_bandwidth_bytes_per_s: float
    memory_bytes: float
    # Chips of one node (one TPU host): the most a single-node pod can hold.
    chips_per_node: int
    # Chip-to-chip bandwidth within a node, one direction (NVLink, PCIe, TPU ICI): what a
    # tensor-parallel all-reduce moves over.
    link_bytes_per_s: float
    # Network between nodes per chip, one direction (its share of the node's NICs): what the
    # KV handoff between pods and a replica spanning nodes (accelerator.nodes > 1) move over.
    network_bytes_per_s: float
    # Whether one replica may span nodes (TPU: single-host slices only).
    spans_nodes: bool
    price_per_chip_hour: float
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
    kind: str, gke_label: str, flops: float, fp8: float | None, bandwidth: float,
    memory: float, link: float, network: float, price: float,
) -> AcceleratorFacts:
    return AcceleratorFacts(
        kind=kind, family="gpu", resource_name=GPU_RESOURCE,
        node_labels={GKE_ACCELERATOR_LABEL: gke_label}, tolerations=(_GPU_TOLERATION,),
        device="cuda", peak_bf16_flops=flops * _TERA,
        peak_fp8_flops=None if fp8 is None else fp8 * _TERA,
        memory_bandwidth_bytes_per_s=bandwidth * _TERA, memory_bytes=memory * _GB,
        chips_per_node=8, link_bytes_per_s=link * _GB, network_bytes_per_s=network * _GB,
        spans_nodes=True, price_per_chip_hour=price,
    )


def _tpu(
    kind: str, gke_label: str, flops: float, bandwidth: float, memory: float, link: float,
    network: float, price: float,
) -> AcceleratorFacts:
    # torch_xla on PJRT's TPU backend, which finds the host's chips itself (a single-host
    # slice needs no worker ids or hostnames); compiled graphs persist on the cache volume.
    return AcceleratorFacts(
        kind=kind, family="tpu", resource_name=TPU_RESOURCE,
        node_labels={GKE_TPU_ACCELERATOR_LABEL: gke_label}, tolerations=(_TPU_TOLERATION,),
        device="xla", peak_bf16_flops=flops * _TERA, peak_fp8_flops=None,
        memory_bandwidth_bytes_per_s=bandwidth * _TERA, memory_bytes=memory * _GB,
        chips_per_node=max(TPU_SINGLE_HOST_TOPOLOGIES.values()), link_bytes_per_s=link * _GB,
        network_bytes_per_s=network * _GB, spans_nodes=False, price_per_chip_hour=price,
        topologies=dict(TPU_SINGLE_HOST_TOPOLOGIES),
        image_tag_suffix="-tpu",
        worker_env={"PJRT_DEVICE": "TPU", "PDSERVE_XLA_CACHE_DIR": "/cache/xla"},
    )


# Figures per device (per chip for TPUs): bf16 and fp8 dense peak TFLOP/s, memory TB/s,
# memory GB, chip-to-chip link GB/s one way (NVLink 4: 900 bidirectional -> 450; NVLink 3:
# 600 -> 300; L4: PCIe Gen4 x16, 32; TPU ICI per chip: v5e 1,600 Gbit/s -> 200, v6e 3,584 ->
# 448); network GB/s per chip one way: H100/H200 one 400 Gbit/s NIC per GPU -> 50, A100 one
# 200 Gbit/s NIC per GPU -> 25, L4 a 100 Gbit/s node NIC shared by 8 GPUs -> 1.5, TPU hosts
# 200 (v5e) / 400 (v6e) Gbit/s shared by 8 chips -> 3.1 / 6.25 (assumed); list price per
# chip-hour, USD: GCP a3-highgpu (H100) 88/8 -> 11.0, H200 assumed 13.0, a2-ultragpu-1g (A100
# 80 GB) 5.07, g2-standard-8 (L4) 0.85, TPU v5e 1.20 and v6e 2.70 per chip, a 2-vCPU node 0.07.
ACCELERATORS: dict[str, AcceleratorFacts] = {
    "nvidia-h100": _gpu("nvidia-h100", "nvidia-h100-80gb", 989, 1979, 3.35, 80, 450, 50, 11.0),
    "nvidia-h200": _gpu("nvidia-h200", "nvidia-h200-141gb", 989, 1979, 4.8, 141, 450, 50, 13.0),
    "nvidia-a100": _gpu("nvidia-a100", "nvidia-a100-80gb", 312, None, 2.0, 80, 300, 25, 5.07),
    "nvidia-l4": _gpu("nvidia-l4", "nvidia-l4", 121, 242, 0.3, 24, 32, 1.5, 0.85),
    "tpu-v5e": _tpu("tpu-v5e", "tpu-v5-lite-podslice", 197, 0.819, 16, 200, 3.1, 1.20),
    "tpu-v6e": _tpu("tpu-v6e", "tpu-v6e-slice", 918, 1.64, 32, 448, 6.25, 2.70),
    # The project's 2-core build machines: fp32 matmul ~200 GFLOP/s (bench/results/runtime.md),
    # memory streaming ~20 GB/s, Python loopback TCP ~4 GB/s between processes.
    "cpu": AcceleratorFacts(
        kind="cpu", family="cpu", resource_name=None, node_labels={}, tolerations=(),
        device="cpu", peak_bf16_flops=0.2 * _TERA, peak_fp8_flops=None,
        memory_bandwidth_bytes_per_s=0.02 * _TERA, memory_bytes=16 * _GB, chips_per_node=1,
        link_bytes_per_s=4 * _GB, network_bytes_per_s=1.25 * _GB,  # 10 Gbit/s Ethernet
        spans_nodes=True, price_per_chip_hour=0.07,
    ),
}



@dataclass(frozen=True)
class Calibration:
    """How far below the roofline of the figures above a family runs: the efficiencies of
    `pdserve plan`'s performance model (planning/perf.py)."""

    # Matmul FLOP/s reached in prefill (large matrices), as a share of peak.
    prefill_mfu: float
    # Matmul FLOP/s reached in a decode step (a row per sequence), as a share of peak.
    decode_mfu: float
    # Weight and KV bytes read per second in a decode step, as a share of the bandwidth.
    bandwidth_efficiency: float
    prefill_overhead_seconds: float
    decode_overhead_seconds: float
    # Host work per sequence of a decode step (sampling, detokenizing): matters on CPU.
    decode_per_sequence_seconds: float
    # Work per prompt token outside the matmuls (norms, rotary, the KV write): CPU only.
    prefill_per_token_seconds: float


# Per family. GPU and TPU: the figures serving engines publish on dense models (prefill at
# 45-50% of peak FLOP/s, decode reading weights and KV at ~80% of the memory bandwidth, a few
# ms of host work a step). CPU: pdserve's own runtime on the 2-core build machines, set from the
# least-squares fit `python -m bench.bench_plan_calibration` prints, on an earlier run than the
# one committed in bench/results/plan.md (the model against the measured figures with the
# error, and that run's own fit, within a third of these figures).
CALIBRATION: dict[str, Calibration] = {
    "gpu": Calibration(0.45, 0.45, 0.8, 0.003, 0.002, 0.0, 0.0),
    "tpu": Calibration(0.5, 0.5, 0.8, 0.003, 0.002, 0.0, 0.0),
    "cpu": Calibration(0.86, 0.54, 0.96, 0.00077, 0.00043, 0.000018, 0.0000048),
}

# pdserve's KV transport (tcp, framed raw bytes): 2.15 GB/s measured between processes for a
# 2,048-token Qwen3-0.6B KV (bench/bench_kv_transfer.py, README "KV transfer"). It bounds the
# handoff between pods whatever the network offers.
KV_TRANSPORT_BYTES_PER_S = 2.15e9

ACCELERATOR_RESOURCES: tuple[str, ...] = (GPU_RESOURCE, TPU_RESOURCE)


def accelerator_facts(kind: str) -> AcceleratorFacts:
    """The scheduling and performance facts of an accelerator kind (KeyError if unknown)."""
    return ACCELERATORS[kind]
