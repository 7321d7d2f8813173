"""Capacity priors per accelerator kind: what one replica is assumed to sustain before the
observed latency corrects it (see need.updated_correction).

Roofline figures from /work/shared/FACTS.md for a reference model of about 1B parameters in
bf16 (prefill at 40% of peak FLOP/s; decode batches of 64 sequences of 1.5k tokens at 80% of
the memory bandwidth). `cpu` is the runtime's builtin tiny model on a 2-core pod. The planner
learns the real figure within a factor of ten either way."""

from __future__ import annotations

from pdserve.autoscaler.config import CapacityPrior

REFERENCE_PARAMS = 1.0e9
REFERENCE_WEIGHT_BYTES = 2.5e9
REFERENCE_KV_BYTES_PER_TOKEN = 32 * 1024
DECODE_BATCH = 64
CONTEXT_TOKENS = 1500
STEP_OVERHEAD_SECONDS = 0.002

# kind -> (peak FLOP/s, memory bandwidth bytes/s), per chip
ROOFLINES: dict[str, tuple[float, float]] = {
    "nvidia-h100": (989e12, 3.35e12),
    "nvidia-h200": (989e12, 4.8e12),
    "nvidia-a100": (312e12, 2.0e12),
    "nvidia-l4": (121e12, 300e9),
    "tpu-v5e": (197e12, 819e9),
    "tpu-v6e": (918e12, 1.64e12),
}
CPU_PRIOR = CapacityPrior(prefill_tokens_per_second=2000.0, decode_tokens_per_second=200.0,
                          decode_max_sequences=16.0)


def capacity_prior(kind: str, prefill_chips: int, decode_chips: int,
                   max_num_seqs: int | None = None) -> CapacityPrior:
    """The prior for a prefill pod of `prefill_chips` and a decode pod of `decode_chips`."""
    if kind not in ROOFLINES:
        return CPU_PRIOR
    flops, bandwidth = ROOFLINES[kind]
    prefill = prefill_chips * flops * 0.4 / (2 * REFERENCE_PARAMS)
    batch = DECODE_BATCH if max_num_seqs is None else min(DECODE_BATCH, max_num_seqs)
    read = REFERENCE_WEIGHT_BYTES + batch * CONTEXT_TOKENS * REFERENCE_KV_BYTES_PER_TOKEN
    step = STEP_OVERHEAD_SECONDS + read / (decode_chips * bandwidth * 0.8)
    return CapacityPrior(prefill_tokens_per_second=prefill,
                         decode_tokens_per_second=batch / step,
                         decode_max_sequences=float(max_num_seqs or 256))
