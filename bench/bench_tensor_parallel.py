"""Tensor parallelism on CPU (gloo), measured side by side in one run (prints, never asserts):
the same 32 mixed requests (prompts 16-128 tokens, outputs 16-64) on the ~56M `small` model
with TP=1 (all threads in one process) and TP=2 (the threads shared out over two ranks), and
the XLA-free handoff cost: KV of a 512-token prompt read from a TP=2 pool (a gather) vs a TP=1
one. On CPU TP does not add compute (both ranks share the same cores) and adds two all-reduces
a layer, so the figure to expect is a slowdown: TP exists for devices, where N chips add N
times the memory bandwidth.

    .venv/bin/python -m bench.bench_tensor_parallel
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bench.runtime_workloads import mixed_requests, run_engine
from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
from pdserve.runtime.engine.sampling_params import SamplingParams


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model = init_model(Path(tmp) / "small", "small", "llama")
        requests = mixed_requests(32, 1000, (16, 128), (16, 64))
        useful = sum(r.max_tokens for r in requests)
        print(f"threads: {torch.get_num_threads()}, requests: {len(requests)}, "
              f"output tokens: {useful}")
        speeds, gathers = {}, {}
        for size in (1, 2):
            engine = LLMEngine(EngineConfig(model=str(model), device="cpu", dtype="float32",
                                            num_kv_blocks=512, tensor_parallel_size=size))
            try:
                run_engine(engine, requests[:4])  # warm-up
                elapsed = run_engine(engine, requests)["elapsed"]
                speeds[size] = useful / elapsed
                engine.add_request("kv", list(range(3, 515)), SamplingParams(max_tokens=1))
                engine.prefill_only("kv2", list(range(3, 515)), SamplingParams(max_tokens=1))
                while engine.has_unfinished():
                    engine.step()
                blocks = engine.prefilled_blocks("kv2")
                started = time.perf_counter()
                for _ in range(10):
                    engine.kv_pool.read_blocks(blocks)
                gathers[size] = (time.perf_counter() - started) / 10
                engine.release("kv2")
            finally:
                engine.close()
            print(f"TP={size}: {speeds[size]:.1f} output tok/s; read KV of 512 tokens "
                  f"({len(blocks)} blocks): {gathers[size] * 1e3:.2f} ms")
        print(f"TP=2 / TP=1 throughput: {speeds[2] / speeds[1]:.2f}x; "
              f"KV read: {gathers[2] / gathers[1]:.1f}x the time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
