"""The CPU paged-decode kernel against plain softmax attention, and its build fallbacks."""

from __future__ import annotations

import pytest
import torch

from pdserve.runtime.cpu_kernels import paged_decode as kernel
from pdserve.runtime.engine import EngineConfig, LLMEngine
from pdserve.runtime.sampling_params import SamplingParams

LIBRARY = kernel.load()
needs_kernel = pytest.mark.skipif(LIBRARY is None, reason="no C compiler to build the kernel")


def _reference(q, k_cache, v_cache, tables, lengths, scale):
    group = q.shape[1] // k_cache.shape[2]
    out = torch.empty_like(q, dtype=torch.float32)
    for s, length in enumerate(lengths.tolist()):
        k = k_cache[tables[s]].flatten(0, 1)[:length].float().repeat_interleave(group, 1)
        v = v_cache[tables[s]].flatten(0, 1)[:length].float().repeat_interleave(group, 1)
        weights = torch.softmax(torch.einsum("hd,thd->ht", q[s].float(), k) * scale, dim=-1)
        out[s] = torch.einsum("ht,thd->hd", weights, v)
    return out


@needs_kernel
@pytest.mark.parametrize(
    ("q_heads", "kv_heads", "head_dim", "block_size", "dtype", "tolerance"),
    [
        (12, 4, 64, 16, torch.float32, 1e-5),  # grouped-query, the bench model's shape
        (4, 4, 32, 8, torch.float32, 1e-5),  # multi-head
        (8, 1, 128, 16, torch.float32, 1e-5),  # multi-query
        (16, 8, 128, 16, torch.bfloat16, 2e-2),  # Qwen3-0.6B-shaped, bf16 storage
    ],
)
def test_kernel_matches_softmax_attention(q_heads, kv_heads, head_dim, block_size, dtype,
                                          tolerance):  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1, block_size, block_size + 1, 3 * block_size - 1, 97])
    width = -(-int(lengths.max()) // block_size)
    num_blocks = len(lengths) * width + 3
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=generator).to(dtype)
    v_cache = torch.randn(shape, generator=generator).to(dtype)
    # Every sequence's blocks scattered over the pool; unused table slots padded with block 0.
    tables = torch.randperm(num_blocks, generator=generator)[: len(lengths) * width]
    tables = tables.view(len(lengths), width).clone()
    for s, length in enumerate(lengths.tolist()):
        tables[s, -(-length // block_size) :] = 0
    q = torch.randn(len(lengths), q_heads, head_dim, generator=generator).to(dtype)
    out = torch.empty_like(q)
    scale = head_dim**-0.5
    kernel.paged_decode(LIBRARY, q, k_cache, v_cache, tables, lengths, out, scale)
    expected = _reference(q, k_cache, v_cache, tables, lengths, scale)
    assert torch.allclose(out.float(), expected, atol=tolerance, rtol=tolerance)


@needs_kernel
def test_engine_greedy_tokens_equal_with_and_without_the_kernel():
    engine = LLMEngine(EngineConfig(model="builtin:tiny", device="cpu", max_num_seqs=8))
    assert engine.runner.decode_kernel is not None
    prompts = [[5 + (i * 37 + j) % 300 for j in range(3 + 11 * i)] for i in range(8)]

    def generate() -> list[list[int]]:
        params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
        for i, prompt in enumerate(prompts):
            engine.add_request(f"r{i}-{id(params)}", prompt, params)
        tokens: dict[str, list[int]] = {}
        while engine.has_unfinished():
            for out in engine.step():
                tokens.setdefault(out.request_id, []).extend(out.token_ids)
        return [tokens[key] for key in sorted(tokens)]

    with_kernel = generate()
    engine.runner.decode_kernel = None  # the gather + SDPA path that CUDA uses
    assert generate() == with_kernel


def test_load_falls_back_without_a_compiler(monkeypatch, caplog):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    kernel.load.cache_clear()
    try:
        assert kernel.load() is None
        assert "no C compiler" in caplog.text
        monkeypatch.delenv("CC")
        monkeypatch.setenv("PDSERVE_CPU_KERNELS", "0")
        kernel.load.cache_clear()
        assert kernel.load() is None
    finally:
        kernel.load.cache_clear()


def test_load_reports_a_failed_build(monkeypatch, tmp_path, caplog):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    monkeypatch.setenv("PDSERVE_KERNEL_CACHE", str(tmp_path / "cache"))
    kernel.load.cache_clear()
    try:
        assert kernel.load() is None
        assert "internal error" in caplog.text
    finally:
        kernel.load.cache_clear()


def test_supports_rejects_shapes_past_the_kernel_limits():
    assert kernel.supports(12, 64, 16, torch.float32)
    assert kernel.supports(16, 128, 16, torch.bfloat16)
    assert not kernel.supports(12, 64, 16, torch.float16)
    assert not kernel.supports(512, 64, 16, torch.float32)
    assert not kernel.supports(128, 64, 128, torch.float32)  # scores of a block too many
    assert not kernel.supports(8, 1024, 16, torch.float32)
    assert not kernel.supports(8, 64, 256, torch.float32)
