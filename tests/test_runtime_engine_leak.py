"""No KV block leaks after 1,000 requests, including aborted, rejected and failed ones."""

from __future__ import annotations

import random

import pytest
from runtime_engine_helpers import one_torch_thread  # noqa: F401 - fixture

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
from pdserve.runtime.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.timeout(600)
def test_thousand_requests_leave_no_blocks_behind(tmp_path, monkeypatch):
    path = init_model(tmp_path, "tiny", "llama")
    engine = LLMEngine(EngineConfig(model=str(path), device="cpu", num_kv_blocks=48, block_size=8,
                                    max_num_seqs=32, max_num_batched_tokens=96))  # fmt: skip
    rng = random.Random(0)
    prefix = engine.tokenizer.encode("A shared system prompt that many requests reuse. " * 2)
    reasons: dict[str, int] = {}
    rejected = 0
    real_execute = engine.runner.execute
    failing_steps = {40, 41, 300}
    step_count = 0

    def flaky_execute(chunks):  # a model failure on some steps: its requests finish "error"
        if step_count in failing_steps:
            raise RuntimeError("injected device failure")
        return real_execute(chunks)

    monkeypatch.setattr(engine.runner, "execute", flaky_execute)
    live: set[str] = set()
    for i in range(1000):
        rid = f"req-{i}"
        tail = [rng.randrange(3, 4000) for _ in range(rng.randrange(1, 40))]
        prompt = (prefix if rng.random() < 0.5 else []) + tail
        params = SamplingParams(max_tokens=rng.randrange(1, 6), temperature=rng.choice([0.0, 1.0]),
                                seed=i, stop=["e"] if i % 7 == 0 else [])  # fmt: skip
        if i % 50 == 0:
            prompt = [1] * 10_000  # too long: rejected up front
        try:
            engine.add_request(rid, prompt, params, priority=rng.randrange(3))
            live.add(rid)
        except ValueError:
            rejected += 1
        if i % 3 == 0 or not engine.has_unfinished():
            continue
        for out in engine.step():
            if out.finished:
                reasons[out.finish_reason] = reasons.get(out.finish_reason, 0) + 1
                live.discard(out.request_id)
        step_count += 1
        if i % 11 == 0 and live:  # abort some, wherever they are (waiting or running)
            victim = rng.choice(sorted(live))
            assert engine.abort(victim)
            live.discard(victim)
            reasons["abort"] = reasons.get("abort", 0) + 1
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                reasons[out.finish_reason] = reasons.get(out.finish_reason, 0) + 1
                live.discard(out.request_id)
        step_count += 1
    assert not live
    assert rejected == 20
    assert sum(reasons.values()) == 1000 - rejected
    assert {"length", "abort", "error"} <= set(reasons)
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_blocks  # all blocks free or evictable cached
    assert stats.num_running == stats.num_waiting == 0
    assert engine._requests == {}
    assert all(block.ref_count == 0 for block in engine.block_manager.blocks)
