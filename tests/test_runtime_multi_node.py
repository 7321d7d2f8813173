"""One replica over several nodes, as a LeaderWorkerSet runs it: `pdserve worker --num-nodes 2`
on node 0 (engine + HTTP) and on node 1 (its ranks only), meeting at `--rendezvous`, here two
processes of this machine over loopback with gloo. The replica answers the `openai` client with
one worker's text; node 1 leaves when node 0 stops; losing node 1 makes node 0 unhealthy (its
pod is restarted) instead of hanging; bad layouts are refused with exit code 2."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest
from runtime_worker_process import MODEL_NAME, WorkerProcess, free_port, tiny_model_dir

pytestmark = pytest.mark.slow

ENGINE_ARGS = ("--max-model-len", "256", "--num-kv-blocks", "32", "--device", "cpu",
               "--dtype", "float32")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory)


def _replica_args(node_rank: int, rendezvous: str) -> tuple[str, ...]:
    return ("--tensor-parallel-size", "2", "--num-nodes", "2", "--node-rank", str(node_rank),
            "--rendezvous", rendezvous, *ENGINE_ARGS)


def _follower_node(model_dir, rendezvous: str, log_path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "pdserve", "worker", "--role", "both", "--model", str(model_dir),
         *_replica_args(1, rendezvous)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True)


def _two_nodes(model_dir, tmp_path) -> tuple[WorkerProcess, subprocess.Popen[bytes]]:
    """Node 1, then node 0 (engine + HTTP) once it answers /ready: one TP=2 replica."""
    rendezvous = f"127.0.0.1:{free_port()}"
    follower = _follower_node(model_dir, rendezvous, tmp_path / "node1.log")
    leader = WorkerProcess(model_dir, *_replica_args(0, rendezvous),
                           log_path=tmp_path / "node0.log")
    try:
        leader.wait_ready(timeout=180)
    except BaseException:
        leader.stop()
        _kill_node(follower)
        raise
    return leader, follower


def _kill_node(node: subprocess.Popen[bytes]) -> None:
    """As a pod dies: every process of the node at once."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pid, signal.SIGKILL)
    node.wait()


def _ask(worker: WorkerProcess) -> str:
    client = openai.OpenAI(base_url=worker.base_url + "/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    assert answer.usage.completion_tokens == 12
    return answer.choices[0].message.content


def _health(worker: WorkerProcess) -> int | None:
    return worker.get_status("/health")


@pytest.mark.timeout(300)
def test_a_replica_over_two_nodes_answers_as_one_worker_and_stops_cleanly(model_dir, tmp_path):
    single = WorkerProcess(model_dir, *ENGINE_ARGS, log_path=tmp_path / "single.log")
    try:
        single.wait_ready()
        expected = _ask(single)
    finally:
        single.stop()
    leader, follower = _two_nodes(model_dir, tmp_path)
    try:
        assert _ask(leader) == expected
        assert follower.poll() is None
    finally:
        leader.stop()
        try:
            code = follower.wait(timeout=60)
        finally:
            _kill_node(follower)
    assert leader.process.returncode == 0
    assert code == 0, (tmp_path / "node1.log").read_text()


@pytest.mark.timeout(300)
def test_losing_a_follower_node_makes_the_leader_unhealthy(model_dir, tmp_path):
    leader, follower = _two_nodes(model_dir, tmp_path)
    try:
        assert _health(leader) == 200
        _kill_node(follower)
        client = openai.OpenAI(base_url=leader.base_url + "/v1", api_key="unused",
                               max_retries=0, timeout=60)
        with pytest.raises(openai.APIStatusError) as failed:
            client.completions.create(model=MODEL_NAME, prompt="hello", max_tokens=4)
        assert failed.value.status_code >= 500
        deadline = time.monotonic() + 30
        while _health(leader) != 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as unhealthy:
            urllib.request.urlopen(leader.base_url + "/health", timeout=5)
        assert b"engine has stopped" in unhealthy.value.read()
    finally:
        _kill_node(follower)
        leader.stop()
    assert "tensor-parallel replica is broken" in leader.log()


@pytest.mark.parametrize(("args", "message"), [
    (("--num-nodes", "2", "--tensor-parallel-size", "2"), "needs --rendezvous"),
    (("--num-nodes", "2", "--tensor-parallel-size", "3", "--rendezvous", "h:1"),
     "does not divide into --num-nodes 2"),
    (("--num-nodes", "2", "--tensor-parallel-size", "2", "--node-rank", "2",
      "--rendezvous", "h:1"), "--node-rank 2 must be in 0..1"),
    (("--num-nodes", "2", "--tensor-parallel-size", "2", "--rendezvous", "nohost"),
     "must be HOST:PORT"),
])
def test_a_bad_replica_layout_is_refused_with_exit_code_2(args, message):
    done = subprocess.run([sys.executable, "-m", "pdserve", "worker", "--model", "builtin:tiny",
                           *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
