"""Sampling, stop conditions and logprobs of the engine (tiny model, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from runtime_engine_helpers import one_torch_thread  # noqa: F401 - fixture

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine, StepOutput
from pdserve.runtime.engine.sampler import sample
from pdserve.runtime.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = init_model(tmp_path_factory.mktemp("tiny"), "tiny", "qwen3")
    return LLMEngine(EngineConfig(model=str(path), device="cpu", num_kv_blocks=128))


def _run(
    engine: LLMEngine, prompt: str, params: SamplingParams, rid: str = "r"
) -> list[StepOutput]:
    engine.add_request(rid, engine.tokenizer.encode(prompt), params)
    outputs = []
    while engine.has_unfinished():
        outputs += [o for o in engine.step() if o.request_id == rid]
    assert outputs[-1].finished and all(not o.finished for o in outputs[:-1])
    return outputs


def _tokens(outputs: list[StepOutput]) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


def test_seeded_sampling_is_reproducible(engine):
    params = dict(max_tokens=16, temperature=1.0, ignore_eos=True)
    a = _tokens(_run(engine, "Once upon a time", SamplingParams(seed=7, **params)))
    b = _tokens(_run(engine, "Once upon a time", SamplingParams(seed=7, **params)))
    c = _tokens(_run(engine, "Once upon a time", SamplingParams(seed=8, **params)))
    assert a == b
    assert a != c


def test_top_k_one_and_tiny_top_p_are_greedy(engine):
    greedy = _tokens(_run(engine, "The weather", SamplingParams(max_tokens=8, temperature=0.0,
                                                                 ignore_eos=True)))  # fmt: skip
    top_k = _tokens(_run(engine, "The weather", SamplingParams(max_tokens=8, top_k=1,
                                                                ignore_eos=True)))  # fmt: skip
    top_p = _tokens(_run(engine, "The weather", SamplingParams(max_tokens=8, top_p=1e-6,
                                                                ignore_eos=True)))  # fmt: skip
    assert greedy == top_k == top_p


def test_sampler_respects_top_k_and_top_p_support():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(400, 1)
    top_k = sample(logits, [SamplingParams(temperature=1.0, top_k=3)] * 400, [None] * 400)
    assert set(top_k.token_ids) == {0, 1, 2}
    # p = softmax: [0.63, 0.23, 0.09, ...]: top_p 0.8 keeps the first two tokens only.
    top_p = sample(logits, [SamplingParams(temperature=1.0, top_p=0.8)] * 400, [None] * 400)
    assert set(top_p.token_ids) == {0, 1}
    hot = sample(logits, [SamplingParams(temperature=5.0)] * 400, [None] * 400)
    assert len(set(hot.token_ids)) == 6


def test_max_tokens_and_length_finish(engine):
    outputs = _run(engine, "Count:", SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
    assert len(_tokens(outputs)) == 5
    assert outputs[-1].finish_reason == "length"
    assert outputs[-1].num_prompt_tokens == len(engine.tokenizer.encode("Count:"))


def test_stop_strings_cut_the_text(engine):
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    full = "".join(o.text for o in _run(engine, "Stop here", params))
    assert len(full) > 6
    stop = full[3:6]
    stopped = _run(engine, "Stop here", SamplingParams(**{**vars(params), "stop": [stop]}))
    text = "".join(o.text for o in stopped)
    assert stopped[-1].finish_reason == "stop"
    assert text == full[: full.index(stop)]
    assert stop not in text


def test_stop_token_ids(engine):
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    tokens = _tokens(_run(engine, "Stop token", params))
    stop_token = tokens[4]
    outputs = _run(
        engine, "Stop token", SamplingParams(**{**vars(params), "stop_token_ids": [stop_token]})
    )
    assert _tokens(outputs) == tokens[: tokens.index(stop_token) + 1]
    assert outputs[-1].finish_reason == "stop"


def test_logprobs(engine):
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, logprobs=3)
    outputs = _run(engine, "Logprobs please", params)
    for out in outputs:
        assert out.logprobs is not None and len(out.logprobs) == 1
        entry = out.logprobs[0]
        assert entry.token_id == out.token_ids[0]
        assert len(entry.top) == 3
        assert entry.top[0] == (entry.token_id, pytest.approx(entry.logprob))  # greedy = top-1
        values = [v for _, v in entry.top]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-5
    plain = _run(engine, "Logprobs please", SamplingParams(max_tokens=2, temperature=0.0))
    assert all(o.logprobs is None for o in plain)


def test_bad_requests_are_value_errors(engine):
    with pytest.raises(ValueError, match="maximum context length"):
        engine.add_request("long", [5] * 5000, SamplingParams())
    with pytest.raises(ValueError, match="temperature"):
        engine.add_request("bad", [5, 6], SamplingParams(temperature=-1.0))
    with pytest.raises(ValueError, match="token ids"):
        engine.add_request("vocab", [10**9], SamplingParams())
    engine.add_request("dup", [5, 6], SamplingParams())
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("dup", [5, 6], SamplingParams())
    assert engine.abort("dup")
    assert not engine.abort("dup")
    assert not engine.has_unfinished()
