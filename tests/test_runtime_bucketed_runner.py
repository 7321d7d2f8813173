"""The bucketed runner (the XLA path: fixed shapes, gather-based attention, a scratch block for
padding) run eagerly on CPU gives the greedy tokens of the CPU path for mixed prompts batched
(chunked prefill, prefix cache, preemption), and its bucket arithmetic is what it says. XLA
itself is tested in test_runtime_xla.py, in the XLA virtual environment."""

from __future__ import annotations

import pytest
from runtime_engine_helpers import one_torch_thread  # noqa: F401 - fixture
from test_runtime_engine_greedy import _prompts

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.engine import config as engine_config
from pdserve.runtime.engine.bucketed_runner import BucketedRunner
from pdserve.runtime.engine.buckets import Buckets, CompiledDevice, powers_of_two, round_up
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
from pdserve.runtime.engine.sampling_params import SamplingParams

PARAMS = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True, logprobs=1)


def test_buckets_are_powers_of_two_capped_by_the_limit():
    assert powers_of_two(48, 16) == (16, 32, 48)
    assert powers_of_two(1) == (1,)
    assert round_up(17, (16, 32, 48)) == 32
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        round_up(49, (16, 32, 48))
    buckets = Buckets.for_engine(max_num_seqs=8, max_num_batched_tokens=48, max_model_len=128,
                                 block_size=16)
    assert buckets == Buckets(rows=(1, 2, 4, 8), tokens=(16, 32, 48), widths=(1, 2, 4, 8),
                              blocks=(1, 2, 4, 8))
    assert buckets.num_step_graphs == (4 + 3) * 4


def _run(engine: LLMEngine, prompts: list[list[int]]) -> dict[str, tuple[list[int], list]]:
    for i, ids in enumerate(prompts):
        engine.add_request(str(i), ids, PARAMS)
    got: dict[str, tuple[list[int], list]] = {str(i): ([], []) for i in range(len(prompts))}
    while engine.has_unfinished():
        for out in engine.step():
            got[out.request_id][0].extend(out.token_ids)
            got[out.request_id][1].extend(out.logprobs or [])
    return got


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_torch_thread")
def test_bucketed_steps_give_the_tokens_of_the_cpu_path(tmp_path, monkeypatch):
    model = init_model(tmp_path / "llama", "tiny", "llama")
    config = {"model": str(model), "device": "cpu", "dtype": "float32", "num_kv_blocks": 40,
              "max_num_batched_tokens": 48, "max_num_seqs": 16, "max_model_len": 256}
    plain = LLMEngine(EngineConfig(**config))
    prompts = [plain.tokenizer.encode(p) for p in _prompts()[:16]]
    expected = _run(plain, prompts)

    def eager_compiled(config, device, max_len):
        buckets = Buckets.for_engine(config.max_num_seqs, config.max_num_batched_tokens,
                                     max_len, config.block_size)
        return CompiledDevice(buckets, lambda: None)

    monkeypatch.setattr(engine_config, "compiled_device", eager_compiled)
    bucketed = LLMEngine(EngineConfig(**config))
    assert isinstance(bucketed.runner, BucketedRunner)
    assert bucketed.kv_cache.kv.shape[2] == 41  # the scratch block beside the 40
    got = _run(bucketed, prompts)
    assert [got[k][0] for k in sorted(got)] == [expected[k][0] for k in sorted(expected)]
    for key, (_, logprobs) in got.items():
        for ours, theirs in zip(logprobs, expected[key][1], strict=True):
            assert abs(ours.logprob - theirs.logprob) < 1e-4
    # The handoff's padded block reads and writes round-trip.
    ids = [3, 7, 8]
    data = bucketed.kv_pool.read_blocks(ids)
    bucketed.kv_pool.write_blocks([0, 1, 2], data)
    assert (bucketed.kv_pool.read_blocks([0, 1, 2]) == data).all()
