"""Prefill on one engine, KV moved block by block, decode on another: same greedy output as one
engine (the in-process core of the prefill/decode split)."""

from __future__ import annotations

import pytest
from runtime_engine_helpers import one_torch_thread  # noqa: F401 - fixture

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.engine.kv_cache import KVLayout
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine, StepOutput
from pdserve.runtime.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARAMS = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
SYSTEM = "System: you are a careful assistant that answers in one line. " * 2


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    path = init_model(tmp_path_factory.mktemp("qwen2"), "tiny", "qwen2")
    config = dict(model=str(path), device="cpu", num_kv_blocks=64, max_num_batched_tokens=32)
    return (
        LLMEngine(EngineConfig(**config)),
        LLMEngine(EngineConfig(**config)),
        LLMEngine(EngineConfig(**config)),
    )


def _drain(engine: LLMEngine) -> list[StepOutput]:
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step()
    return outputs


def _reference(engine: LLMEngine, rid: str, ids: list[int],
               params: SamplingParams = PARAMS) -> tuple[list[int], str]:  # fmt: skip
    engine.add_request(rid, ids, params)
    outs = [o for o in _drain(engine) if o.request_id == rid]
    return [t for o in outs for t in o.token_ids], "".join(o.text for o in outs)


def _disaggregated(prefill: LLMEngine, decode: LLMEngine, rid: str, ids: list[int],
                   params: SamplingParams = PARAMS, first_at_once: bool = False):  # fmt: skip
    prefill.prefill_only(rid, ids, params)
    (first,) = [o for o in _drain(prefill) if o.request_id == rid]
    assert first.finished and len(first.token_ids) == 1
    blocks = prefill.prefilled_blocks(rid)
    assert len(blocks) == -(-len(ids) // prefill.kv_layout.block_size)
    assert KVLayout.from_dict(prefill.kv_layout.to_dict()) == decode.kv_layout  # handshake
    reservation = decode.admit_with_kv(rid, ids, first.token_ids[0], params)
    assert reservation is not None
    missing = reservation.missing_block_ids
    data = prefill.kv_cache.read_blocks(blocks[reservation.num_cached_blocks :])
    decode.kv_cache.write_blocks(missing, data)
    assert prefill.release(rid)
    decode.complete_kv(rid)
    early = [decode.emit_pending(rid)] if first_at_once else []  # before any decode step
    outs = early + [o for o in _drain(decode) if o.request_id == rid]
    if first_at_once:
        assert outs[0].token_ids == first.token_ids and not outs[0].finished
    tokens = [t for o in outs for t in o.token_ids]
    assert outs[0].token_ids[0] == first.token_ids[0]
    assert outs[-1].finished and outs[-1].finish_reason == "length"
    return tokens, "".join(o.text for o in outs), reservation.num_cached_blocks


def test_kv_handoff_gives_the_same_greedy_output(engines):
    single, prefill, decode = engines
    prompts = [SYSTEM + "What is two plus two?", SYSTEM + "Name a colour.", "short", "x " * 70]
    for i, text in enumerate(prompts):
        ids = single.tokenizer.encode(text)
        expected_tokens, expected_text = _reference(single, f"ref-{i}", ids)
        tokens, text_out, cached = _disaggregated(prefill, decode, f"pd-{i}", ids)
        assert tokens == expected_tokens
        assert text_out == expected_text
        if i == 1:  # the decode engine already holds the shared system prompt's blocks
            assert cached >= len(single.tokenizer.encode(SYSTEM)) // 16 - 1 > 0
    for engine in engines:
        stats = engine.stats()
        assert stats.num_free_blocks == stats.num_blocks


def test_the_first_token_reported_at_once_changes_no_token_or_text(engines):
    single, prefill, decode = engines
    for i, text in enumerate([SYSTEM + "Count to three.", "x " * 40]):
        ids = single.tokenizer.encode(text)
        expected = _reference(single, f"ref-early-{i}", ids)
        tokens, text_out, _ = _disaggregated(prefill, decode, f"pd-early-{i}", ids,
                                             first_at_once=True)
        assert (tokens, text_out) == expected


def test_seeded_sampling_continues_as_on_one_engine(engines):
    single, prefill, decode = engines
    ids = single.tokenizer.encode(SYSTEM + "Tell me a story.")
    for seed in (1, 2, 3):
        params = SamplingParams(max_tokens=12, temperature=1.5, top_p=0.95, seed=seed,
                                ignore_eos=True)  # fmt: skip
        expected, _ = _reference(single, f"ref-seed-{seed}", ids, params)
        tokens, _, _ = _disaggregated(prefill, decode, f"pd-seed-{seed}", ids, params)
        assert tokens == expected


def test_unfinished_transfers_are_freed(engines):
    _, prefill, decode = engines
    ids = decode.tokenizer.encode("a transfer that never completes " * 4)
    assert decode.admit_with_kv("lost", ids, 5, PARAMS) is not None
    held = decode.stats().num_free_blocks
    assert held < decode.stats().num_blocks
    # Only its owner (the decode worker's transfer table) gives up on it: steps keep it held.
    assert decode.step() == [] and decode.stats().num_free_blocks == held
    assert decode.abort("lost")
    prefill.prefill_only("dropped", ids, PARAMS)
    _drain(prefill)
    assert prefill.abort("dropped")  # releases the pinned blocks too
    for engine in (prefill, decode):
        assert engine.stats().num_free_blocks == engine.stats().num_blocks
