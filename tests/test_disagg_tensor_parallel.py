"""KV handoff between replicas of different tensor-parallel degrees (CPU, gloo).

A TP=2 replica holds each KV head on one of two processes; the handoff moves blocks with every
head (rank 0 gathers them to send, scatters them on receipt), so TP=2 prefill -> TP=1 decode and
TP=1 prefill -> TP=2 decode give the greedy tokens of one engine: in process through the
engines' KV pools, and as worker processes behind the router with the `openai` client.
"""

from __future__ import annotations

import openai
import pytest
from runtime_engine_helpers import one_torch_thread  # noqa: F401 - fixture

from e2e.local_processes import metric, router, running, wait_for_tiers, worker
from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.engine.kv_cache import KVLayout
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine, StepOutput
from pdserve.runtime.engine.sampling_params import SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

PARAMS = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
SYSTEM = "System: answer in one careful line, please. " * 3
PROMPTS = [SYSTEM + "What is two plus two?", SYSTEM + "Name a colour.", "short", "x " * 50]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("llama"), "tiny", "llama")


def _config(model_dir, size: int) -> EngineConfig:
    return EngineConfig(model=str(model_dir), device="cpu", dtype="float32", num_kv_blocks=48,
                        max_num_batched_tokens=32, tensor_parallel_size=size)


def _drain(engine: LLMEngine) -> list[StepOutput]:
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step()
    return outputs


def _tokens(outputs: list[StepOutput], rid: str) -> list[int]:
    return [t for o in outputs if o.request_id == rid for t in o.token_ids]


def _handoff(prefill: LLMEngine, decode: LLMEngine, rid: str, ids: list[int]) -> tuple[list[int],
                                                                                       int]:
    prefill.prefill_only(rid, ids, PARAMS)
    first = _tokens(_drain(prefill), rid)
    blocks = prefill.prefilled_blocks(rid)
    reservation = decode.admit_with_kv(rid, ids, first[0], PARAMS)
    assert reservation is not None
    cached = reservation.num_cached_blocks
    decode.kv_pool.write_blocks(reservation.missing_block_ids,
                                prefill.kv_pool.read_blocks(blocks[cached:]))
    assert prefill.release(rid)
    decode.complete_kv(rid)
    return _tokens(_drain(decode), rid), cached


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("prefill_size", "decode_size"), [(2, 1), (1, 2)])
def test_handoff_between_tp_degrees_gives_the_tokens_of_one_engine(model_dir, prefill_size,
                                                                   decode_size):
    single = LLMEngine(_config(model_dir, 1))
    prompts = [single.tokenizer.encode(text) for text in PROMPTS]
    expected = []
    for i, ids in enumerate(prompts):
        single.add_request(str(i), ids, PARAMS)
        expected.append(_tokens(_drain(single), str(i)))
    prefill = LLMEngine(_config(model_dir, prefill_size))
    decode = LLMEngine(_config(model_dir, decode_size))
    try:
        # Both present every KV head: the handshake matches whatever the degrees.
        assert prefill.kv_layout == decode.kv_layout == single.kv_layout
        assert KVLayout.from_dict(prefill.kv_layout.to_dict()) == decode.kv_layout
        for i, ids in enumerate(prompts):
            tokens, cached = _handoff(prefill, decode, f"pd-{i}", ids)
            assert tokens == expected[i], i
            if i == 1:  # the shared system prompt's blocks are already on the decode side
                assert cached > 0
    finally:
        prefill.close()
        decode.close()


@pytest.mark.timeout(420)
@pytest.mark.parametrize(("prefill_size", "decode_size"), [("2", "1"), ("1", "2")])
def test_tp_workers_of_different_degrees_serve_the_openai_client(model_dir, tmp_path,
                                                                 prefill_size, decode_size):
    model = str(model_dir)
    prefill = worker("prefill", model, tmp_path, "--tensor-parallel-size", prefill_size)
    decode = worker("decode", model, tmp_path, "--tensor-parallel-size", decode_size)
    both = worker("both", model, tmp_path)
    with running(prefill, decode, both):
        gateway = router([prefill], [decode], tmp_path, "--short-prompt-threshold", "4")
        with running(gateway):
            wait_for_tiers(gateway)
            answers = {}
            for name, url in (("routed", gateway.url), ("local", both.url)):
                client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
                answers[name] = [client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": text}], max_tokens=10,
                    temperature=0, extra_body={"ignore_eos": True}).choices[0].message.content
                    for text in PROMPTS]
        assert answers["routed"] == answers["local"]
        assert metric(decode.url, "pdserve_kv_transfer_bytes_total") > 0
        assert metric(prefill.url, "pdserve_kv_transfer_failures_total") == 0
