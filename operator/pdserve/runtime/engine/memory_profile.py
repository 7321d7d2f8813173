"""How much CUDA memory the KV cache may take: measured, not guessed.

The budget is `gpu_memory_utilization` x the device's memory, less the peak one full step
reaches without the cache: the weights plus the activations and logits of a prefill of
`max_num_batched_tokens` tokens (the largest step the scheduler plans). That step is run once
on a scratch cache just large enough for it, before the real cache exists; every
tensor-parallel rank runs it together (its all-reduces pair up).
"""

from __future__ import annotations

import torch

from pdserve.runtime.engine.kv_cache import KVCache, KVLayout
from pdserve.runtime.engine.model_runner import ModelRunner
from pdserve.runtime.models.llama import CausalLM
from pdserve.runtime.parallel.step_plan import PlannedChunk, PlannedSeq


def peak_step_bytes(model: CausalLM, layout: KVLayout, max_num_batched_tokens: int,
                    device: torch.device) -> int:
    """Peak allocated bytes of the largest step, on a scratch cache (then freed)."""
    tokens = max_num_batched_tokens
    blocks = -(-tokens // layout.block_size)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    scratch = KVCache(layout, blocks, device)
    model.bind_kv_cache(scratch.layer_views())
    chunk = PlannedChunk(PlannedSeq(0, [0] * tokens, list(range(blocks))), 0, tokens, True)
    ModelRunner(model, layout.block_size, device).execute([chunk])
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - scratch.kv.numel() * scratch.kv.element_size()
    model.kv_layers = []  # unbound, so that the scratch cache is freed here
    del scratch
    torch.cuda.empty_cache()
    return int(peak)


def cuda_kv_budget(model: CausalLM, layout: KVLayout, max_num_batched_tokens: int,
                   utilization: float, device: torch.device) -> int:
    """Bytes the KV cache may take on `device`."""
    peak = peak_step_bytes(model, layout, max_num_batched_tokens, device)
    total = torch.cuda.get_device_properties(device).total_memory
    return int(utilization * total - peak)
