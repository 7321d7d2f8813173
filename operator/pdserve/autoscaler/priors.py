"""Capacity priors per accelerator kind: what one replica (one pod, however many chips it
holds) is assumed to sustain before the observed latency corrects it (see
need.updated_correction).

`pdserve plan`'s performance model (`planning/perf.py`: the accelerator table and the
calibration table) for a reference model of about 1B parameters in bf16 (Llama-3.2-1B's
shape): prefill of 2,048-token chunks, decode batches of 64 sequences of 1.5k tokens. A
replica of N chips is one tensor-parallel group: compute and memory traffic split N ways, plus
two ring all-reduces of the hidden states per layer over the chips' link (over the slower
network when it spans nodes), so N chips sustain less than N times one chip
(`tensor_parallel_efficiency`). `cpu` is the runtime's builtin tiny model on a 2-core pod.
The planner learns the real figure within a factor of ten either way."""

from __future__ import annotations

from pdserve.api.accelerators import ACCELERATORS
from pdserve.autoscaler.config import CapacityPrior
from pdserve.planning.catalog import default_catalog
from pdserve.planning.perf import ReplicaPerf, replica_perf
from pdserve.planning.shapes import KNOWN_SHAPES

REFERENCE_SHAPE = KNOWN_SHAPES["llama-3.2-1b"]
PREFILL_CHUNK_TOKENS = 2048
DECODE_BATCH = 64
CONTEXT_TOKENS = 1500
CPU_PRIOR = CapacityPrior(prefill_tokens_per_second=2000.0, decode_tokens_per_second=200.0,
                          decode_max_sequences=16.0)
_CATALOG = default_catalog()


def _replica(kind: str, chips: int, nodes: int) -> ReplicaPerf:
    if nodes > 1 and not ACCELERATORS[kind].spans_nodes:
        raise ValueError(f"{kind} replicas do not span nodes")
    return replica_perf(_CATALOG[kind], REFERENCE_SHAPE, "bfloat16", chips, nodes)


def prefill_tokens_per_second(kind: str, chips: int, nodes: int = 1) -> float:
    tokens = PREFILL_CHUNK_TOKENS
    return tokens / _replica(kind, chips, nodes).prefill_seconds(tokens, tokens * tokens / 2)


def decode_step_seconds(kind: str, chips: int, batch: int, nodes: int = 1) -> float:
    return _replica(kind, chips, nodes).decode_step_seconds(batch, batch * CONTEXT_TOKENS)


def tensor_parallel_efficiency(kind: str, chips: int, nodes: int = 1) -> tuple[float, float]:
    """(prefill, decode) throughput of one replica of `chips` chips (over `nodes` nodes) over
    `chips` replicas of one."""
    prefill = prefill_tokens_per_second(kind, chips, nodes) / (
        chips * prefill_tokens_per_second(kind, 1))
    decode = decode_step_seconds(kind, 1, DECODE_BATCH) / (
        chips * decode_step_seconds(kind, chips, DECODE_BATCH, nodes))
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
        prefill_tokens_per_second=prefill_tokens_per_second(kind, prefill_chips, prefill_nodes),
        decode_tokens_per_second=batch / decode_step_seconds(kind, decode_chips, batch,
                                                             decode_nodes),
        decode_max_sequences=float(max_num_seqs or 256))
