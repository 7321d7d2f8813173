"""cuda-ipc KV handoff of a long prompt vs recomputing its prefill, on one GPU.

    .venv/bin/python -m bench.bench_kv_transfer --cuda [--tokens 4096]

The decode side is a second process holding a Qwen3-0.6B-layout KV pool on the same GPU; the
handoff (cuda-ipc: device-to-device copy into the shared pool; tcp: through host staging over
loopback) is timed against a prefill of the same prompt by pdserve's engine on a random-weight
model of Qwen3-0.6B's shape (28 layers, hidden 1024, 16/8 heads, head_dim 128, bf16).
Prints, never asserts.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench.bench_kv_transfer import LAYOUT, FillEverything
from pdserve.runtime.checkpoints.builtin import VOCAB_SIZE, init_model, random_weights
from pdserve.runtime.disagg.kv_transfer import KVReceiverServer, KVSender, Offer
from pdserve.runtime.engine.kv_cache import KVCache
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
from pdserve.runtime.engine.sampling_params import SamplingParams

QWEN3_0_6B_SHAPE = {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                    "max_position_embeddings": 40960}


def qwen3_shaped_model(directory: Path, num_layers: int = 28) -> Path:
    """A Qwen3-0.6B-shaped model with random weights (and the tiny model's tokenizer)."""
    path = init_model(directory, "tiny", "qwen3")
    config = json.loads((path / "config.json").read_text())
    config.update(QWEN3_0_6B_SHAPE, num_hidden_layers=num_layers, torch_dtype="bfloat16")
    (path / "config.json").write_text(json.dumps(config))
    weights = {k: v.to(torch.bfloat16) for k, v in random_weights(config).items()}
    save_file(weights, str(path / "model.safetensors"))
    return path


def recompute_seconds(model: Path, tokens: int, device: str, repeats: int) -> float:
    blocks = -(-tokens // LAYOUT.block_size)
    engine = LLMEngine(EngineConfig(
        model=str(model), device=device, dtype="bfloat16" if device == "cuda" else "float32",
        max_num_batched_tokens=tokens, max_model_len=tokens + 16, num_kv_blocks=blocks + 8,
        enable_prefix_caching=False))
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(repeats + 1):  # the first run warms up
        prompt = torch.randint(3, VOCAB_SIZE, (tokens,), generator=gen).tolist()
        start = time.perf_counter()
        engine.prefill_only(f"r{i}", prompt, SamplingParams(max_tokens=1, temperature=0.0))
        while engine.has_unfinished():
            engine.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        engine.release(f"r{i}")
    return min(times[1:])


def decode_pool_process(num_blocks: int, ready: mp.Queue) -> None:
    pool = KVCache(LAYOUT, num_blocks, torch.device("cuda"))
    server = KVReceiverServer(pool, FillEverything(num_blocks), "127.0.0.1", 0, timeout=60)
    server.start()
    ready.put(server.port)
    time.sleep(3600)


def handoff_seconds(tokens: int, transport: str, port: int, repeats: int) -> float:
    num_blocks = -(-tokens // LAYOUT.block_size)
    source = KVCache(LAYOUT, num_blocks, torch.device("cuda"))
    source.kv.normal_()
    sender = KVSender(source, transport, timeout=60)
    ids = list(range(num_blocks))
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        sender.push(f"127.0.0.1:{port}", Offer(f"{transport}{i}", [0] * tokens, 0), ids)
        times.append(time.perf_counter() - start)
    sender.close()
    return min(times[1:])


def bench_cuda_ipc(tokens: int, repeats: int) -> None:
    if not torch.cuda.is_available():
        print("--cuda needs a CUDA device")
        return
    num_blocks = -(-tokens // LAYOUT.block_size)
    ctx = mp.get_context("spawn")
    ready: mp.Queue = ctx.Queue()
    decode = ctx.Process(target=decode_pool_process, args=(num_blocks, ready), daemon=True)
    decode.start()
    try:
        port = ready.get(timeout=120)
        ipc = handoff_seconds(tokens, "cuda-ipc", port, repeats)
        tcp = handoff_seconds(tokens, "tcp", port, repeats)
    finally:
        decode.kill()
    with tempfile.TemporaryDirectory() as tmp:
        prefill = recompute_seconds(qwen3_shaped_model(Path(tmp) / "qwen3"), tokens, "cuda",
                                    repeats)
    nbytes = num_blocks * LAYOUT.bytes_per_block
    print(f"{tokens}-token prompt, Qwen3-0.6B shape, {nbytes / 2**20:.0f} MiB of KV "
          f"({torch.cuda.get_device_name()})")
    print(f"  cuda-ipc handoff      : {ipc * 1e3:8.2f} ms  ({nbytes / ipc / 1e9:.1f} GB/s)")
    print(f"  tcp handoff (staging) : {tcp * 1e3:8.2f} ms  ({nbytes / tcp / 1e9:.1f} GB/s)")
    print(f"  recompute (prefill)   : {prefill * 1e3:8.2f} ms")
    print(f"  recompute / cuda-ipc  : {prefill / ipc:.1f}x")
