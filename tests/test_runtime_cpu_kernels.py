"""The CPU kernels against the torch ops they replace, and the library's build fallbacks."""

from __future__ import annotations

import pytest
import torch

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.devices.cpu_kernels import library, paged_decode
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
from pdserve.runtime.engine.sampling_params import SamplingParams
from pdserve.runtime.models import ops

LIBRARY = library.load()
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
    paged_decode.paged_decode(LIBRARY, q, k_cache, v_cache, tables, lengths, out, scale)
    expected = _reference(q, k_cache, v_cache, tables, lengths, scale)
    assert torch.allclose(out.float(), expected, atol=tolerance, rtol=tolerance)


def _torch_path(monkeypatch) -> None:
    """From here on, every op takes the torch path CUDA takes."""
    monkeypatch.setenv("PDSERVE_CPU_KERNELS", "0")
    library.load.cache_clear()


@pytest.fixture
def restore_library():
    yield
    library.load.cache_clear()


@needs_kernel
@pytest.mark.parametrize("family", ["llama", "qwen3"])  # qwen3: QK-norm before the rotation
def test_engine_greedy_tokens_equal_with_and_without_the_kernels(family, tmp_path, monkeypatch,
                                                                   restore_library):  # fmt: skip
    path = init_model(tmp_path / family, "tiny", family)
    prompts = [[5 + (i * 37 + j) % 300 for j in range(3 + 11 * i)] for i in range(8)]

    def generate() -> list[list[int]]:
        engine = LLMEngine(EngineConfig(model=str(path), device="cpu", max_num_seqs=8))
        params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
        for i, prompt in enumerate(prompts):
            engine.add_request(f"r{i}", prompt, params)
        tokens: dict[str, list[int]] = {}
        while engine.has_unfinished():
            for out in engine.step():
                tokens.setdefault(out.request_id, []).extend(out.token_ids)
        return [tokens[key] for key in sorted(tokens)]

    with_kernels = generate()
    _torch_path(monkeypatch)
    assert generate() == with_kernels


@needs_kernel
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_elementwise_kernels_match_the_torch_ops(dtype, tolerance, monkeypatch, restore_library):
    generator = torch.Generator().manual_seed(1)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(dtype)

    x, pending, weight = rand(5, 300), rand(5, 300), rand(300)  # 300: a partial chunk too
    gate_up = rand(5, 600)
    qkv = rand(5, 6 * 64)  # q of 3 heads then k and v: q's rows are 384 values apart
    cos, sin = rand(5, 1, 32), rand(5, 1, 32)

    def run() -> list[torch.Tensor]:
        stream, buffer = x.clone(), qkv.clone()
        normed = ops.add_rms_norm(stream, pending, weight, 1e-6)
        rotated = ops.rotate(buffer[:, : 3 * 64].view(5, 3, 64), cos, sin)
        return [stream, normed, ops.silu_mul(gate_up), rotated]

    kernels = run()
    _torch_path(monkeypatch)
    for ours, expected in zip(kernels, run(), strict=True):
        assert torch.allclose(ours.float(), expected.float(), atol=tolerance, rtol=tolerance)


def test_load_falls_back_without_a_compiler(monkeypatch, caplog):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    library.load.cache_clear()
    try:
        assert library.load() is None
        assert "no C compiler" in caplog.text
        monkeypatch.delenv("CC")
        monkeypatch.setenv("PDSERVE_CPU_KERNELS", "0")
        library.load.cache_clear()
        assert library.load() is None
    finally:
        library.load.cache_clear()


def test_load_reports_a_failed_build(monkeypatch, tmp_path, caplog):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    monkeypatch.setenv("PDSERVE_KERNEL_CACHE", str(tmp_path / "cache"))
    library.load.cache_clear()
    try:
        assert library.load() is None
        assert "internal error" in caplog.text
    finally:
        library.load.cache_clear()


def test_supports_rejects_shapes_past_the_kernel_limits():
    assert paged_decode.supports(12, 64, 16, torch.float32)
    assert paged_decode.supports(16, 128, 16, torch.bfloat16)
    assert not paged_decode.supports(12, 64, 16, torch.float16)
    assert not paged_decode.supports(512, 64, 16, torch.float32)
    assert not paged_decode.supports(128, 64, 128, torch.float32)  # scores of a block too many
    assert not paged_decode.supports(8, 1024, 16, torch.float32)
    assert not paged_decode.supports(8, 64, 256, torch.float32)


@pytest.mark.skipif(LIBRARY is None, reason="no C compiler: the kernels are not built")
def test_loading_the_library_keeps_subnormal_floats(tmp_path):
    """Built with -ffast-math, the library must not turn on flush-to-zero in the process that
    loads it (GCC's crtfastmath.o does, when -ffast-math is on the link line): in a fresh
    process, the smallest normal float divided by 4 stays non-zero after the load."""
    import subprocess
    import sys

    script = ("import sys\n"
              "from pdserve.runtime.devices.cpu_kernels import library\n"
              "assert library.load() is not None\n"
              "print(sys.float_info.min / 4 != 0.0)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "True", done.stderr
