"""Workloads and measurement helpers for bench_runtime.py (deterministic, seeded)."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

import torch

from pdserve.runtime.engine.llm_engine import LLMEngine
from pdserve.runtime.engine.sampling_params import SamplingParams
from pdserve.runtime.models.config import ModelConfig


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int


def mixed_requests(n: int, vocab: int, prompt_range: tuple[int, int],
                   output_range: tuple[int, int], seed: int = 0) -> list[Request]:  # fmt: skip
    rng = random.Random(seed)
    return [
        Request(
            [rng.randrange(3, vocab) for _ in range(rng.randint(*prompt_range))],
            rng.randint(*output_range),
        )
        for _ in range(n)
    ]


def matmul_flops(seconds: float = 3.0, size: int = 1024) -> float:
    """The machine's fp32 matmul FLOP/s: the best of repeated square products, by torch.mm
    (MKL) and by oneDNN on a prepacked weight (what the engine's projections use), so the
    engine is measured against the fastest fp32 matmul this machine has."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    products = [lambda: torch.mm(a, b)]
    if torch.backends.mkldnn.is_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(b, size)
        products.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    best = 0.0
    for product in products:
        deadline = time.perf_counter() + seconds / len(products)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            for _ in range(4):
                product()
            best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best


def model_flops(cfg: ModelConfig, requests: list[Request]) -> float:
    """Useful FLOPs to serve the requests: matmuls per processed token, attention over each
    token's context, and the LM head for each sampled token (no padding counted)."""
    hd = cfg.head_dim
    per_layer = cfg.hidden_size * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * hd
    per_layer += (
        cfg.num_attention_heads * hd * cfg.hidden_size + 3 * cfg.hidden_size * cfg.intermediate_size
    )
    dense = 2 * cfg.num_hidden_layers * per_layer
    head = 2 * cfg.hidden_size * cfg.vocab_size
    attn = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * hd
    total = 0.0
    for r in requests:
        tokens = len(r.prompt) + r.max_tokens - 1  # the last sampled token is never fed back
        total += tokens * dense + r.max_tokens * head + attn * tokens * (tokens + 1) / 2
    return total


def run_engine(engine: LLMEngine, requests: list[Request], priorities: list[int] | None = None,
               arrivals: list[int] | None = None) -> dict[str, float]:  # fmt: skip
    """Serve requests (greedy, ignore EOS); arrival i is the engine step it is added at.
    Returns elapsed seconds and per-request TTFT (seconds from add to first token)."""
    added: dict[str, float] = {}
    ttft: dict[str, float] = {}
    order = sorted(range(len(requests)), key=lambda i: arrivals[i] if arrivals else 0)
    step = 0
    start = time.perf_counter()
    while order or engine.has_unfinished():
        while order and (arrivals[order[0]] if arrivals else 0) <= step:
            i = order.pop(0)
            params = SamplingParams(
                max_tokens=requests[i].max_tokens, temperature=0.0, ignore_eos=True
            )
            engine.add_request(
                str(i), requests[i].prompt, params, priorities[i] if priorities else 0
            )
            added[str(i)] = time.perf_counter()
        for out in engine.step():
            if out.request_id not in ttft and out.token_ids:
                ttft[out.request_id] = time.perf_counter() - added[out.request_id]
        step += 1
    result = {"elapsed": time.perf_counter() - start}
    result.update({f"ttft/{rid}": value for rid, value in ttft.items()})
    return result


def p50(values: list[float]) -> float:
    return statistics.median(values)
