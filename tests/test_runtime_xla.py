"""The runtime on XLA (torch_xla 2.9, XLA's CPU backend: PJRT_DEVICE=CPU), in the XLA virtual
environment the project creates (e2e/xla_venv.py), as real processes:

- 16 mixed prompts batched: greedy tokens identical to the eager CPU path; warm-up compiles
  every bucket, and serving afterwards compiles nothing new;
- an XLA `both` worker behind the router answers the `openai` client as a CPU worker does;
- an XLA prefill worker hands KV to an eager CPU decode worker (the same layout): same text.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import openai
import pytest
from test_runtime_engine_greedy import _prompts

from e2e import xla_venv
from e2e.local_processes import metric, router, running, wait_for_tiers, worker
from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.checkpoints.tokenizer import Tokenizer

pytestmark = [pytest.mark.slow]

HERE = Path(__file__).parent
XLA_ENV = {"PJRT_DEVICE": "CPU", "OMP_NUM_THREADS": "1"}
# Small limits keep the bucket set (and the warm-up) small: rows 1..8, chunks 16 and 32
# tokens, tables of 1, 2 and 4 blocks.
LIMITS = {"max_num_seqs": 8, "max_num_batched_tokens": 32, "max_model_len": 64,
          "num_kv_blocks": 48}
WORKER_LIMITS = ("--max-num-seqs", "8", "--max-num-batched-tokens", "32", "--max-model-len",
                 "64", "--num-kv-blocks", "48")
QUESTIONS = ["Count to five.", "Name a colour and a fruit, please, in one short line.", "Hi"]


@pytest.fixture(scope="module")
def xla_python() -> str:
    return str(xla_venv.ensure())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return init_model(tmp_path_factory.mktemp("xla") / "llama", "tiny", "llama")


@pytest.mark.timeout(2400)
def test_xla_engine_gives_the_cpu_tokens_and_compiles_nothing_after_warm_up(xla_python,
                                                                            model_dir):
    tokenizer = Tokenizer(model_dir)
    prompts = [tokenizer.encode(text)[:48] for text in _prompts()[:16]]
    job = {"model": str(model_dir), "prompts": prompts, "max_tokens": 8, "engine": LIMITS}
    done = subprocess.run([xla_python, str(HERE / "xla_engine_check.py")], input=json.dumps(job),
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, **XLA_ENV})
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print("xla:", json.dumps({k: v for k, v in report.items() if not k.startswith("tokens")}))
    assert report["device"].startswith("xla") and report["backend"] == "CPU"
    assert report["tokens_xla"] == report["tokens_cpu"]
    assert len({len(p) for p in prompts}) > 4  # mixed lengths
    # Every step and transfer shape compiled once at warm-up, and nothing since.
    assert report["warm_up"]["graphs"] <= report["step_graphs"] + 2 * report["transfer_sizes"]
    assert report["after_serving"]["graphs"] == report["warm_up"]["graphs"]


def _chat(url: str) -> list[str]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    return [client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": text}], max_tokens=10,
        temperature=0, extra_body={"ignore_eos": True}).choices[0].message.content
        for text in QUESTIONS]


@pytest.mark.timeout(1200)
def test_an_xla_worker_serves_the_openai_client_and_hands_kv_to_a_cpu_worker(
        xla_python, model_dir, tmp_path):
    model = str(model_dir)
    xla_both = worker("both", model, tmp_path, *WORKER_LIMITS, "--dtype", "float32",
                      env=XLA_ENV, python=xla_python, device="xla")
    xla_prefill = worker("prefill", model, tmp_path, *WORKER_LIMITS, "--dtype", "float32",
                         env=XLA_ENV, python=xla_python, device="xla")
    cpu_decode = worker("decode", model, tmp_path, *WORKER_LIMITS, "--dtype", "float32")
    cpu_both = worker("both", model, tmp_path, *WORKER_LIMITS, "--dtype", "float32")
    with running(xla_both, xla_prefill, cpu_decode, cpu_both):
        alone = router([], [xla_both], tmp_path)
        split = router([xla_prefill], [cpu_decode], tmp_path, "--short-prompt-threshold", "4")
        with running(alone, split):
            wait_for_tiers(split)
            expected = _chat(cpu_both.url)
            assert _chat(alone.url) == expected
            assert _chat(split.url) == expected
        assert metric(cpu_decode.url, "pdserve_kv_transfer_bytes_total") > 0
        assert metric(xla_prefill.url, "pdserve_kv_transfer_failures_total") == 0
    log = xla_both.log_path.read_text()
    assert "warm-up:" in log and "XLA:" in log, log[-2000:]
