"""Tensor parallelism on CPU (gloo): a TP=2 replica (rank 0 here, rank 1 a follower process)
gives the greedy tokens of TP=1 for mixed prompts batched (chunked prefill, prefix cache,
preemption), and its logprobs agree within 1e-4 (float32); a `pdserve worker
--tensor-parallel-size 2` answers the `openai` client with TP=1's text."""

from __future__ import annotations

import openai
import pytest
from runtime_engine_helpers import one_torch_thread  # noqa: F401 - fixture
from runtime_worker_process import MODEL_NAME, WorkerProcess
from test_runtime_engine_greedy import _prompts

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
from pdserve.runtime.engine.sampling_params import SamplingParams
from pdserve.runtime.parallel.sharding import ParallelismError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

MAX_TOKENS = 10


def _run(engine: LLMEngine, prompts: list[list[int]]) -> dict[str, tuple[list[int], list]]:
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True,
                            logprobs=3)
    for i, ids in enumerate(prompts):
        engine.add_request(str(i), ids, params)
    got: dict[str, tuple[list[int], list]] = {str(i): ([], []) for i in range(len(prompts))}
    while engine.has_unfinished():
        for out in engine.step():
            got[out.request_id][0].extend(out.token_ids)
            got[out.request_id][1].extend(out.logprobs or [])
    return got


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def model_dir(request, tmp_path_factory):
    return init_model(tmp_path_factory.mktemp(request.param), "tiny", request.param)


@pytest.mark.timeout(300)
def test_tp2_gives_the_tokens_and_logprobs_of_tp1(model_dir):
    config = {"model": str(model_dir), "device": "cpu", "dtype": "float32", "num_kv_blocks": 40,
              "max_num_batched_tokens": 48, "max_num_seqs": 16}
    single = LLMEngine(EngineConfig(**config))
    prompts = [single.tokenizer.encode(p) for p in _prompts()[:16]]
    expected = _run(single, prompts)
    replica = LLMEngine(EngineConfig(**config, tensor_parallel_size=2))
    try:
        assert replica.kv_cache.layout.num_kv_heads * 2 == single.kv_cache.layout.num_kv_heads
        got = _run(replica, prompts)
    finally:
        replica.close()
    assert [got[k][0] for k in sorted(got)] == [expected[k][0] for k in sorted(expected)]
    for key, (_, logprobs) in got.items():
        for ours, theirs in zip(logprobs, expected[key][1], strict=True):
            assert abs(ours.logprob - theirs.logprob) < 1e-4
    assert all(follower.poll() == 0 for follower in replica.runner.followers)


def test_a_size_that_does_not_divide_the_kv_heads_is_refused(model_dir):
    with pytest.raises(ParallelismError, match="tensor parallel size 3 does not divide"):
        LLMEngine(EngineConfig(model=str(model_dir), device="cpu", tensor_parallel_size=3))


@pytest.mark.timeout(300)
def test_a_tp2_worker_answers_the_openai_client_as_tp1_does(model_dir, tmp_path):
    answers = []
    for size in ("1", "2"):
        worker = WorkerProcess(model_dir, "--tensor-parallel-size", size, "--max-model-len",
                               "256", "--num-kv-blocks", "32",
                               log_path=tmp_path / f"worker-tp{size}.log")
        try:
            worker.wait_ready()
            client = openai.OpenAI(base_url=worker.base_url + "/v1", api_key="unused",
                                   max_retries=0)
            answers.append(client.chat.completions.create(
                model=MODEL_NAME, messages=[{"role": "user", "content": "Count to five."}],
                max_tokens=12, temperature=0, extra_body={"ignore_eos": True}))
        finally:
            worker.stop()
    assert answers[1].usage.completion_tokens == 12
    assert answers[1].choices[0].message.content == answers[0].choices[0].message.content
