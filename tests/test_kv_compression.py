"""KV compression in the engine: SnapKV chooses what attention points at, kept KV keeps its rotary
positions, streaming bounds a sequence's blocks, the prefix cache holds exact KV only, the
compressed handoff gives one engine's tokens, and nothing leaks."""

from __future__ import annotations

import random

import pytest
import torch
from runtime_engine_helpers import one_torch_thread  # noqa: F401 - fixture

from pdserve.runtime.compression.config import NO_COMPRESSION, KVCompression
from pdserve.runtime.compression.snapkv import choose_positions, window_scores
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine, StepOutput
from pdserve.runtime.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SNAPKV = KVCompression("snapkv", ratio=0.5, window_tokens=16)
STREAMING = KVCompression("streaming", window_tokens=48, sink_tokens=4)
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def engine(compression: KVCompression = NO_COMPRESSION, **overrides) -> LLMEngine:
    config = dict(model="builtin:tiny", device="cpu", dtype="float32", num_kv_blocks=96,
                  max_num_batched_tokens=64, kv_compression=compression)
    return LLMEngine(EngineConfig(**{**config, **overrides}))


def prompts(count: int, seed: int = 0, low: int = 60, high: int = 200) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 250) for _ in range(rng.randrange(low, high))]
            for _ in range(count)]


def drain(e: LLMEngine) -> list[StepOutput]:
    outputs = []
    while e.has_unfinished():
        outputs += e.step()
    return outputs


def generate(e: LLMEngine, batch: list[list[int]], params: SamplingParams = GREEDY
             ) -> dict[str, list[int]]:
    for i, ids in enumerate(batch):
        e.add_request(f"r{i}", ids, params)
    tokens: dict[str, list[int]] = {}
    for output in drain(e):
        tokens.setdefault(output.request_id, []).extend(output.token_ids)
    return tokens


# ---- choosing positions ------------------------------------------------------------------


def test_window_scores_follow_the_attention_of_the_window_queries():
    keys = torch.eye(8)[None] * 1.0  # one KV head, key t = e_t
    q = torch.zeros(2, 2, 8)  # two window rows (positions 6, 7), two query heads
    q[0, 0, 1] = q[1, 1, 1] = 20.0  # both look at position 1
    q[0, 1, 4] = 20.0  # one head of the first row looks at position 4
    scores = window_scores(q, keys, first_query=6, num_candidates=6, scale=1.0)
    assert scores.shape == (1, 6)
    assert scores[0].argmax().item() == 1
    assert scores[0, 4] > scores[0, 2] and scores[0, 4] > 0.9


def test_window_scores_see_only_keys_up_to_each_query():
    keys = torch.eye(4)[None]
    q = torch.zeros(1, 1, 4)
    q[0, 0, 3] = 50.0  # points at a key after it: masked, so attention spreads evenly
    scores = window_scores(q, keys, first_query=2, num_candidates=2, scale=1.0)
    assert torch.allclose(scores, torch.full((1, 2), 1 / 3))


def test_kept_positions_are_the_best_pooled_candidates_per_head_plus_the_window():
    scores = torch.zeros(1, 2, 40)
    scores[0, 0, 10] = 1.0
    scores[0, 1, 30] = 1.0
    kept = choose_positions(scores, num_prompt_tokens=48, num_kept=15)
    assert kept.shape == (1, 2, 15)
    head0, head1 = kept[0, 0].tolist(), kept[0, 1].tolist()
    assert head0[:7] == list(range(7, 14))  # position 10 and its pooled neighbours
    assert head1[:7] == list(range(27, 34))
    assert head0[7:] == head1[7:] == list(range(40, 48))  # the window, always kept
    assert kept.diff(dim=-1).gt(0).all()  # ascending: slots keep prompt order


def test_uniform_attention_keeps_the_same_positions_on_every_run():
    scores = torch.ones(2, 1, 20)
    first = choose_positions(scores, 24, 10)
    assert torch.equal(first, choose_positions(scores.clone(), 24, 10))
    assert first[0, 0].tolist() == [*range(6), *range(20, 24)]


def test_budget_and_ratio_set_the_kept_tokens():
    assert SNAPKV.snapkv_kept(100) == 50
    assert SNAPKV.snapkv_kept(20) == 16  # never below the window
    assert KVCompression("snapkv", budget_tokens=40).snapkv_kept(100) == 40
    assert KVCompression("snapkv", budget_tokens=40).snapkv_kept(30) == 30


@pytest.mark.parametrize("bad, message", [
    (KVCompression("snapkv"), "exactly one of ratio and budget_tokens"),
    (KVCompression("snapkv", ratio=0.5, budget_tokens=64), "exactly one"),
    (KVCompression("snapkv", ratio=1.5), "ratio must be in (0, 1)"),
    (KVCompression("snapkv", budget_tokens=8, window_tokens=16), "must exceed window_tokens"),
    (KVCompression("streaming", ratio=0.5), "streaming takes no ratio"),
    (KVCompression("none", window_tokens=4), "none takes no window_tokens"),
    (KVCompression("streaming", sink_tokens=-1), "sink_tokens must be >= 0"),
    (KVCompression("lossy"), "must be one of none, snapkv, streaming"),
])
def test_bad_settings_are_refused_with_their_reason(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bad.validate()


# ---- the engine --------------------------------------------------------------------------


def test_compression_off_and_opted_out_give_the_plain_engine_tokens():
    batch = prompts(5)
    plain = generate(engine(), batch)
    assert generate(engine(KVCompression("none")), batch) == plain
    opted_out = SamplingParams(**{**vars(GREEDY), "allow_kv_compression": False})
    e = engine(SNAPKV)
    assert generate(e, batch, opted_out) == plain
    assert e.stats().kv_tokens_pruned == 0


def test_snapkv_keeps_the_chosen_kv_at_its_original_rotary_positions():
    ids = prompts(1, seed=3, low=150, high=151)[0]
    full, compressed = engine(), engine(SNAPKV)
    for e in (full, compressed):
        e.prefill_only("p", ids, GREEDY)
        drain(e)
    kept = compressed.prefilled_kv_tokens("p")
    assert kept == 75 and len(compressed.prefilled_blocks("p")) == 5
    assert compressed.stats().kv_tokens_pruned == 75
    reference = full.kv_cache.read_blocks(full.prefilled_blocks("p")).flatten(2, 3)[:, :, :150]
    packed = compressed.kv_cache.read_blocks(compressed.prefilled_blocks("p"))
    packed = packed.flatten(2, 3)[:, :, :kept]
    num_layers, _, _, num_heads, _ = reference.shape
    for layer in range(num_layers):
        for head in range(num_heads):
            keys = reference[layer, 0, :, head]
            distance = torch.cdist(packed[layer, 0, :, head], keys)
            positions = distance.argmin(dim=1)
            assert distance.min(dim=1).values.max() < 1e-3  # each slot is a cached K, as is
            assert positions.diff().gt(0).all()  # in prompt order, none twice
            assert positions[-16:].tolist() == list(range(134, 150))  # the window
            assert torch.equal(packed[layer, 1, :, head], reference[layer, 1, positions, head])


def test_snapkv_tokens_do_not_depend_on_chunking_or_the_prefix_cache():
    batch = prompts(4, seed=1)
    expected = generate(engine(SNAPKV), batch)
    assert generate(engine(SNAPKV, max_num_batched_tokens=23), batch) == expected
    warm = engine(SNAPKV)
    generate(warm, batch)  # its blocks are cached now: the second run reuses them
    assert generate(warm, batch) == expected
    assert warm.stats().prefix_hits > 0


def test_a_prompt_within_budget_is_not_compressed():
    short = prompts(3, low=10, high=30)
    e = engine(KVCompression("snapkv", budget_tokens=40))
    assert generate(e, short) == generate(engine(), short)
    assert e.stats().kv_tokens_pruned == 0


def test_the_prefix_cache_never_serves_compressed_kv():
    ids = prompts(1, seed=5, low=120, high=121)[0]
    e = engine(SNAPKV)
    e.add_request("compressed", ids, SamplingParams(max_tokens=40, temperature=0.0,
                                                    ignore_eos=True))
    while e.stats().kv_tokens_pruned == 0:
        e.step()
    seq = e.scheduler.running[0]
    compacted = set(seq.block_table)
    assert not any(e.block_manager.blocks[b].hash is not None for b in compacted)
    # The same prompt, opted out, while the compressed one is still decoding: what it reuses
    # from the prefix cache is the exact KV of the prompt, so it gets the plain tokens.
    opted_out = SamplingParams(**{**vars(GREEDY), "allow_kv_compression": False})
    e.add_request("exact", ids, opted_out)
    outputs = drain(e)
    exact = [t for o in outputs if o.request_id == "exact" for t in o.token_ids]
    cached = next(o.num_cached_tokens for o in outputs if o.request_id == "exact")
    assert cached >= 96
    assert exact == generate(engine(), [ids])["r0"]


def test_streaming_keeps_a_sequence_bounded_however_long_it_generates():
    ids = prompts(1, seed=7, low=40, high=41)[0]
    held = {}
    for max_tokens in (60, 600):
        e = engine(STREAMING, num_kv_blocks=32)
        e.add_request("long", ids, SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                  ignore_eos=True))
        peak = 0
        generated = 0
        while e.has_unfinished():
            generated += sum(len(o.token_ids) for o in e.step())
            peak = max(peak, e.block_manager.num_used_blocks)
        assert generated == max_tokens
        held[max_tokens] = peak
    # sinks: one block; window: 48 tokens over at most 4 blocks; and the block being written
    assert held[600] == held[60] <= 1 + 4 + 1
    pruned = e.stats().kv_tokens_pruned
    assert pruned % 16 == 0 and 40 + 599 - pruned <= 16 + 48 + 16  # whole blocks were evicted


def test_streaming_prefills_a_prompt_longer_than_its_window_within_bounded_blocks():
    ids = prompts(1, seed=8, low=600, high=601)[0]
    e = engine(STREAMING, num_kv_blocks=96, max_num_batched_tokens=64)
    e.add_request("agent", ids, GREEDY)
    peak = 0
    while e.has_unfinished():
        e.step()
        peak = max(peak, e.block_manager.num_used_blocks)
    assert peak <= 1 + 4 + 4 + 1  # sinks, window, one chunk of 64 tokens, a partial block


def test_compressed_handoff_gives_the_tokens_of_one_compressing_engine():
    batch = prompts(4, seed=9)
    single, prefill, decode = engine(SNAPKV), engine(SNAPKV), engine()
    expected = generate(single, batch)
    for i, ids in enumerate(batch):
        rid = f"r{i}"
        prefill.prefill_only(rid, ids, GREEDY)
        (first,) = [o for o in drain(prefill) if o.request_id == rid]
        num_kv = prefill.prefilled_kv_tokens(rid)
        assert num_kv == SNAPKV.snapkv_kept(len(ids)) < len(ids)
        blocks = prefill.prefilled_blocks(rid)
        reservation = decode.admit_with_kv(rid, ids, first.token_ids[0], GREEDY,
                                           num_kv_tokens=num_kv)
        assert reservation is not None and reservation.num_cached_blocks == 0
        assert len(reservation.missing_block_ids) == len(blocks) == -(-num_kv // 16)
        decode.kv_cache.write_blocks(reservation.missing_block_ids,
                                     prefill.kv_cache.read_blocks(blocks))
        prefill.release(rid)
        decode.complete_kv(rid)
        tokens = [t for o in drain(decode) if o.request_id == rid for t in o.token_ids]
        assert tokens == expected[rid]
    for e in (prefill, decode):
        e.block_manager.check_consistency(block_tables=[])


def test_no_block_leaks_over_1000_requests_with_compression_on():
    rng = random.Random(11)
    for compression in (SNAPKV, STREAMING):
        e = engine(compression, num_kv_blocks=48, max_num_seqs=16, max_num_batched_tokens=96)
        for i in range(500):
            ids = [rng.randrange(3, 250) for _ in range(rng.randrange(8, 160))]
            params = SamplingParams(max_tokens=rng.randrange(1, 24), temperature=0.0,
                                    ignore_eos=True, allow_kv_compression=rng.random() > 0.2)
            e.add_request(f"r{i}", ids, params)
            if i % 8 == 0:
                for _ in range(rng.randrange(1, 6)):
                    e.step()
            if i % 37 == 0:
                e.abort(f"r{i - 3}")
        drain(e)
        bm = e.block_manager
        bm.check_consistency(block_tables=[])
        assert bm.num_free_blocks == bm.num_blocks
        assert e.stats().kv_tokens_pruned > 0
        assert not e.compressor._scores  # no request's scores outlive it


# ---- interfaces ----------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--kv-compression-method", "snapkv"], "exactly one of ratio and budget_tokens"),
    (["--kv-compression-method", "streaming", "--kv-compression-ratio", "0.5"], "takes no ratio"),
    (["--kv-compression-method", "snapkv", "--kv-compression-ratio", "0.5",
      "--kv-compression-sink-tokens", "4"], "takes no sink_tokens"),
])
def test_worker_flags_refuse_bad_combinations(argv, message):
    from pdserve.runtime.cli import WorkerSetupError, parse_settings

    with pytest.raises(WorkerSetupError, match=message):
        parse_settings(["--model", "builtin:tiny", *argv])


def test_a_request_opts_out_by_header_or_body():
    from pdserve.runtime.serving.openai_protocol import RequestError, allows_kv_compression

    assert allows_kv_compression(None, None) and allows_kv_compression(None, "auto")
    assert not allows_kv_compression(None, "none")
    assert not allows_kv_compression("none", "auto")  # the header wins
    assert allows_kv_compression("auto", "none")
    with pytest.raises(RequestError, match="must be one of auto, none"):
        allows_kv_compression("off", None)


def test_compression_is_refused_where_it_cannot_run():
    with pytest.raises(ValueError, match="not supported with tensor_parallel_size > 1"):
        EngineConfig(kv_compression=SNAPKV, tensor_parallel_size=2).validate()


@pytest.mark.parametrize("compression", [SNAPKV, STREAMING], ids=["snapkv", "streaming"])
def test_the_cpu_kernel_and_the_sdpa_path_read_the_same_kept_slots(compression):
    batch = prompts(4, seed=13, low=100, high=240)
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    kernel = engine(compression)
    assert kernel.runner.decode_kernel is not None, "this machine builds the CPU kernel"
    sdpa = engine(compression)
    sdpa.runner.decode_kernel = None  # decodes go through gather + SDPA, as on CUDA
    assert generate(kernel, batch, params) == generate(sdpa, batch, params)
    assert kernel.stats().kv_tokens_pruned == sdpa.stats().kv_tokens_pruned > 0


def test_the_recall_task_asks_for_what_followed_the_cue():
    from bench.quality.recall import BOS, QUERY, VALUE_TOKENS, sample

    task = sample(random.Random(3), passage_tokens=40)
    assert task.prompt[0] == BOS and task.prompt[-2] == QUERY
    passage = task.prompt[1:-2]
    assert len(set(passage)) == 40  # distinct: the cue occurs once before the query
    at = passage.index(task.prompt[-1])
    assert task.values == passage[at + 1:at + 1 + VALUE_TOKENS]


def test_recall_training_mixes_cued_answers_with_whole_repeats_and_grows_the_passages():
    from bench.quality.recall import QUERY, Training, _batch, longest_passage

    t = Training()
    assert longest_passage(t, 0) == longest_passage(t, t.first_steps) == t.first_max_passage
    assert longest_passage(t, t.first_steps + t.ramp_steps) == t.max_passage
    rng = random.Random(5)
    kinds = set()
    for _ in range(20):
        ids, labels = _batch(rng, t, step=0)
        for row, row_labels in zip(ids.tolist(), labels.tolist(), strict=True):
            query_at = row.index(QUERY)
            passage = row[1:query_at]
            assert len(passage) <= t.first_max_passage
            answer = [label for label in row_labels if label != -100]
            whole = answer == passage  # else the passage from just after the cue on
            assert whole or answer == passage[passage.index(row[query_at + 1]) + 1:]
            kinds.add(whole)
    assert kinds == {True, False}
