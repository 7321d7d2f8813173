"""Greedy generation of many mixed-length prompts batched in one engine equals transformers'
greedy `generate` run one prompt at a time on the same weights (CPU, float32)."""

from __future__ import annotations

import pytest
import torch
from runtime_engine_helpers import one_torch_thread  # noqa: F401 - fixture
from transformers import AutoModelForCausalLM

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
from pdserve.runtime.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_TOKENS = 12
SHARED = "You are a helpful assistant. Answer briefly and precisely. " * 3


def _prompts() -> list[str]:
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
    ]
    prompts = []
    for i in range(18):
        body = " ".join(words[(i + j) % len(words)] for j in range(1 + 7 * i % 40))
        prompts.append(SHARED + body if i % 3 == 0 else body)  # some share a cached prefix
    return prompts


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = init_model(tmp_path_factory.mktemp("llama"), "tiny", "llama")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    engine = LLMEngine(
        EngineConfig(model=str(path), device="cpu", dtype="float32", num_kv_blocks=4)
    )
    prompts = [engine.tokenizer.encode(p) for p in _prompts()]
    expected = []
    for ids in prompts:
        out = hf.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False,
                          eos_token_id=None, pad_token_id=0)  # fmt: skip
        expected.append(out[0, len(ids) :].tolist())
    return path, prompts, expected


def _generate(engine: LLMEngine, prompts: list[list[int]]) -> tuple[list[list[int]], int]:
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    for i, ids in enumerate(prompts):
        engine.add_request(str(i), ids, params)
    outputs: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    finished = set()
    preemptions = 0
    while engine.has_unfinished():
        queued = engine.scheduler.waiting + engine.scheduler.running
        preemptions = max([preemptions, *(s.num_preemptions for s in queued)])
        for out in engine.step():
            outputs[out.request_id] += out.token_ids
            if out.finished:
                assert out.finish_reason == "length"
                finished.add(out.request_id)
    assert finished == set(outputs)
    return [outputs[str(i)] for i in range(len(prompts))], preemptions


@pytest.mark.parametrize(
    "num_kv_blocks, budget",
    [(256, 64), (256, 23), (24, 48)],  # chunked prefill; odd chunk edges; preemption
    ids=["chunked", "odd-chunks", "preempting"],
)
def test_batched_greedy_matches_transformers(setup, num_kv_blocks, budget):
    path, prompts, expected = setup
    assert len(prompts) >= 16 and len({len(p) for p in prompts}) > 10
    engine = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32",
                                    num_kv_blocks=num_kv_blocks, max_num_batched_tokens=budget,
                                    max_num_seqs=16, enable_prefix_caching=True))  # fmt: skip
    got, preemptions = _generate(engine, prompts)
    assert got == expected
    assert (preemptions > 0) == (num_kv_blocks < 100)
    stats = engine.stats()
    assert stats.prefix_hits > 0  # the shared prefix came from the cache
    assert stats.num_free_blocks == stats.num_blocks


def test_second_run_reuses_prefix_cache_and_matches(setup):
    path, prompts, expected = setup
    engine = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32",
                                    num_kv_blocks=256, max_num_batched_tokens=64))  # fmt: skip
    assert _generate(engine, prompts[:6])[0] == expected[:6]
    hits = engine.stats().prefix_hits
    for i, ids in enumerate(prompts[:6]):
        engine.add_request(
            f"again-{i}",
            ids,
            SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True),
        )
    again: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            again.setdefault(out.request_id, []).extend(out.token_ids)
    assert [again[f"again-{i}"] for i in range(6)] == expected[:6]
    assert engine.stats().prefix_hits - hits >= sum(len(p) // 16 * 16 - 16 for p in prompts[:6])
