"""On a CUDA device (skipped without one): the KV cache is sized from the measured peak of the
largest step, so that step then runs beside the full cache; the engine's greedy tokens match
the CPU path's in float32."""

from __future__ import annotations

import pytest
import torch

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
from pdserve.runtime.engine.memory_profile import peak_step_bytes
from pdserve.runtime.engine.sampling_params import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA device")]


@pytest.mark.timeout(300)
def test_the_kv_cache_leaves_room_for_the_largest_step(tmp_path):
    model = init_model(tmp_path / "small", "small", "llama")
    config = EngineConfig(model=str(model), device="cuda", dtype="float32",
                          max_num_batched_tokens=2048, gpu_memory_utilization=0.5)
    engine = LLMEngine(config)
    device = engine.device
    cache_bytes = engine.kv_cache.kv.numel() * engine.kv_cache.kv.element_size()
    total = torch.cuda.get_device_properties(device).total_memory
    peak = peak_step_bytes(engine.runner.model, engine.kv_cache.layout, 2048, device)
    engine.runner.model.bind_kv_cache(engine.kv_cache.layer_views())
    assert cache_bytes <= 0.5 * total - peak + engine.kv_cache.layout.bytes_per_block
    torch.cuda.reset_peak_memory_stats(device)
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    engine.add_request("long", list(range(5, 2005)), params)
    while engine.has_unfinished():
        engine.step()
    assert torch.cuda.max_memory_allocated(device) <= 0.5 * total + (1 << 26)


@pytest.mark.timeout(300)
def test_cuda_gives_the_cpu_tokens(tmp_path):
    model = init_model(tmp_path / "tiny", "tiny", "llama")
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    tokens = {}
    for device in ("cpu", "cuda"):
        engine = LLMEngine(EngineConfig(model=str(model), device=device, dtype="float32",
                                        num_kv_blocks=64))
        for i in range(8):
            engine.add_request(str(i), list(range(3, 10 + 7 * i)), params)
        got: dict[str, list[int]] = {}
        while engine.has_unfinished():
            for out in engine.step():
                got.setdefault(out.request_id, []).extend(out.token_ids)
        tokens[device] = got
    assert tokens["cuda"] == tokens["cpu"]
