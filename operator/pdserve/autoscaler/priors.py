"""Capacity priors per accelerator kind: what one replica (one pod, however many chips it
holds) is assumed to sustain before the observed latency corrects it (see
need.updated_correction).

Roofline figures of the accelerator table (`api/accelerators.py`) for a reference model of
about 1B parameters in bf16 (Llama-3.2-1B's shape: 16 layers, hidden 2048): prefill at 40% of
peak FLOP/s, decode batches of 64 sequences of 1.5k tokens at 80% of the memory bandwidth. A
pod of N chips is one tensor-parallel replica: compute and memory traffic split N ways, plus
two all-reduces of the hidden states per layer over the chips' link (ring: 2(N-1)/N of the
bytes, and a fixed latency each), so N chips sustain less than N times one chip
(`tensor_parallel_efficiency`). A replica over several nodes all-reduces at the speed of the
slower network between them. `cpu` is the runtime's builtin tiny model on a 2-core pod. The
planner learns the real figure within a factor of ten either way."""

from __future__ import annotations

from pdserve.api.accelerators import ACCELERATORS, AcceleratorFacts
from pdserve.autoscaler.config import CapacityPrior

REFERENCE_PARAMS = 1.0e9
REFERENCE_WEIGHT_BYTES = 2.5e9
REFERENCE_KV_BYTES_PER_TOKEN = 32 * 1024
REFERENCE_LAYERS = 16
REFERENCE_HIDDEN_BYTES = 2048 * 2  # one token's hidden state, bf16
PREFILL_CHUNK_TOKENS = 2048
DECODE_BATCH = 64
CONTEXT_TOKENS = 1500
STEP_OVERHEAD_SECONDS = 0.002
ALL_REDUCE_LATENCY_SECONDS = 10e-6
CPU_PRIOR = CapacityPrior(prefill_tokens_per_second=2000.0, decode_tokens_per_second=200.0,
                          decode_max_sequences=16.0)


def _link(facts: AcceleratorFacts, nodes: int) -> float:
    if nodes == 1:
        return facts.link_bytes_per_s
    if not facts.spans_nodes:
        raise ValueError(f"{facts.kind} replicas do not span nodes")
    return min(facts.link_bytes_per_s, facts.network_bytes_per_s)


def _all_reduces(facts: AcceleratorFacts, chips: int, tokens: int, nodes: int = 1) -> float:
    """Seconds of one forward pass's all-reduces over `tokens` tokens on `chips` chips (over
    `nodes` nodes: a ring crosses the slowest link)."""
    if chips == 1:
        return 0.0
    ring = 2 * (chips - 1) / chips * tokens * REFERENCE_HIDDEN_BYTES / _link(facts, nodes)
    return 2 * REFERENCE_LAYERS * (ALL_REDUCE_LATENCY_SECONDS + ring)


def prefill_tokens_per_second(facts: AcceleratorFacts, chips: int, nodes: int = 1) -> float:
    compute = (2 * REFERENCE_PARAMS * PREFILL_CHUNK_TOKENS
               / (chips * facts.peak_bf16_flops * 0.4))
    return PREFILL_CHUNK_TOKENS / (compute + _all_reduces(facts, chips, PREFILL_CHUNK_TOKENS,
                                                          nodes))


def decode_step_seconds(facts: AcceleratorFacts, chips: int, batch: int,
                        nodes: int = 1) -> float:
    read = REFERENCE_WEIGHT_BYTES + batch * CONTEXT_TOKENS * REFERENCE_KV_BYTES_PER_TOKEN
    return (STEP_OVERHEAD_SECONDS + read / (chips * facts.memory_bandwidth_bytes_per_s * 0.8)
            + _all_reduces(facts, chips, batch, nodes))


def tensor_parallel_efficiency(kind: str, chips: int, nodes: int = 1) -> tuple[float, float]:
    """(prefill, decode) throughput of one replica of `chips` chips (over `nodes` nodes) over
    `chips` replicas of one."""
    facts = ACCELERATORS[kind]
    prefill = prefill_tokens_per_second(facts, chips, nodes) / (
        chips * prefill_tokens_per_second(facts, 1))
    decode = decode_step_seconds(facts, 1, DECODE_BATCH) / (
        chips * decode_step_seconds(facts, chips, DECODE_BATCH, nodes))
    return prefill, decode


def capacity_prior(kind: str, prefill_chips: int, decode_chips: int,
                   max_num_seqs: int | None = None, *, prefill_nodes: int = 1,
                   decode_nodes: int = 1) -> CapacityPrior:
    """The prior for a prefill replica of `prefill_chips` and a decode replica of
    `decode_chips` (each over its number of nodes)."""
    facts = ACCELERATORS.get(kind)
    if facts is None or facts.family == "cpu":
        return CPU_PRIOR
    batch = DECODE_BATCH if max_num_seqs is None else min(DECODE_BATCH, max_num_seqs)
    return CapacityPrior(
        prefill_tokens_per_second=prefill_tokens_per_second(facts, prefill_chips, prefill_nodes),
        decode_tokens_per_second=batch / decode_step_seconds(facts, decode_chips, batch,
                                                             decode_nodes),
        decode_max_sequences=float(max_num_seqs or 256))
