"""Run in the XLA virtual environment (PJRT_DEVICE=CPU) by test_runtime_xla.py: the same
prompts through an XLA engine and an eager CPU engine in one process. Reads {"model",
"prompts", "max_tokens", "engine"} as JSON on stdin; prints the tokens of both, and XLA's
compile counts after warm-up and after serving, as JSON."""

from __future__ import annotations

import json
import sys
import time

from pdserve.runtime.devices import xla
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
from pdserve.runtime.engine.sampling_params import SamplingParams


def serve(engine: LLMEngine, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for i, ids in enumerate(prompts):
        engine.add_request(str(i), ids, params)
    got: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for out in engine.step():
            got[out.request_id].extend(out.token_ids)
    return [got[str(i)] for i in range(len(prompts))]


def main() -> int:
    job = json.load(sys.stdin)
    config = {"model": job["model"], "dtype": "float32", **job["engine"]}
    started = time.perf_counter()
    engine = LLMEngine(EngineConfig(device="xla", **config))
    build_s = time.perf_counter() - started
    warm = xla.compile_stats()
    started = time.perf_counter()
    tokens_xla = serve(engine, job["prompts"], job["max_tokens"])
    serve_s = time.perf_counter() - started
    served = xla.compile_stats()
    tokens_cpu = serve(LLMEngine(EngineConfig(device="cpu", **config)), job["prompts"],
                       job["max_tokens"])
    buckets = engine.runner.buckets  # type: ignore[union-attr]
    print(json.dumps({
        "device": str(engine.device), "backend": xla.backend(),
        "tokens_xla": tokens_xla, "tokens_cpu": tokens_cpu,
        "step_graphs": buckets.num_step_graphs, "transfer_sizes": len(buckets.blocks),
        "warm_up": {"graphs": warm.graphs, "compile_s": round(warm.seconds, 2),
                    "engine_build_s": round(build_s, 2)},
        "after_serving": {"graphs": served.graphs, "compile_s": round(served.seconds, 2),
                          "serve_s": round(serve_s, 2)},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
