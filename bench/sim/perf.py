"""Per-replica performance for the simulator: `pdserve plan`'s model (`pdserve.planning.perf`:
the API's accelerator table, the calibration table), so the simulator and the plan agree.

Engine limits and KV links are the simulator's scenario choices: it studies the planner with
an RDMA-class KV link between pods (what NIXL gives), not pdserve's TCP transport.
"""

from __future__ import annotations

from dataclasses import replace

from pdserve.planning.catalog import default_catalog
from pdserve.planning.perf import ReplicaPerf, replica_perf
from pdserve.planning.shapes import KNOWN_SHAPES, ModelShape, shape_from_config
from pdserve.runtime.checkpoints.builtin import model_config_dict

GB = 1e9
_CATALOG = default_catalog()
# The runtime's ~56M `small` preset: what the CPU calibration was measured on.
SMALL_PRESET: ModelShape = shape_from_config(model_config_dict("small", "llama", None), "small")


def _profile(name: str, kind: str, shape: ModelShape, chips: int, kv_link: float,
             startup: float, **engine: int) -> ReplicaPerf:
    perf = replica_perf(_CATALOG[kind], shape, "bfloat16", chips)
    return replace(perf, name=name, kv_link_bandwidth=kv_link, startup_seconds=startup,
                   **engine)


PROFILES: dict[str, ReplicaPerf] = {
    "h100-llama8b": _profile("h100-llama8b", "nvidia-h100", KNOWN_SHAPES["llama-3.1-8b"], 1,
                             50 * GB, 60.0),
    "l4-llama1b": _profile("l4-llama1b", "nvidia-l4", KNOWN_SHAPES["llama-3.2-1b"], 1,
                           12.5 * GB, 45.0),
    # A 2x2 slice per pod: a what-if (the XLA runtime serves one chip a replica today).
    "tpu-v5e-llama8b": _profile("tpu-v5e-llama8b", "tpu-v5e", KNOWN_SHAPES["llama-3.1-8b"], 4,
                                25 * GB, 90.0),
    "cpu-tiny": _profile("cpu-tiny", "cpu", SMALL_PRESET, 1, 4 * GB, 10.0,
                         max_batched_tokens=2048, max_num_seqs=16),
}
