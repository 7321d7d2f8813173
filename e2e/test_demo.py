"""`make demo` end to end (`python -m e2e.demo`) on the session's local cluster: all five
sections, sample pods on the GPU and TPU pools, the operator and the agentic sample's pods on
the real node serving the requests, the planner's decisions, a tidy finish. One prefill and one
decode pod and short load windows keep it to a few minutes once the image is built."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.cluster.node.identity import NODE_NAME
from e2e.cluster.session import Cluster
from e2e.operator_harness import OPERATOR, SYSTEM_NAMESPACE

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(1200)
def test_demo_runs_end_to_end(cluster: Cluster) -> None:
    if not cluster.local:
        pytest.skip("the demo drives the local control plane of e2e/cluster")
    # A local cluster keeps its kubeconfig in its state dir: the demo reuses it, leaves it up.
    command = [sys.executable, "-m", "e2e.demo", "--state-dir", str(cluster.kubeconfig.parent),
               "--prefill", "1", "--decode", "1", "--window", "4"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1150)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    headings = re.findall(r"^(\d)\. ", out, re.MULTILINE)
    assert headings == ["1", "2", "3", "4", "5"]
    assert "reusing the cluster" in out
    assert re.search(r"story-generation\s+decode\s+3\s+gpu\s", out)
    assert re.search(r"summarization\s+prefill\s+2\s+tpu\s", out)
    for role in ("prefill", "decode", "router"):
        assert re.search(rf"agentic-chat\s+{role}\s+1\s+cpu\s+{NODE_NAME}\s", out), role
    assert re.search(r"agent turn 5\s+\d+\s+24\s", out)
    # One summary through the sample's snapkv prefill pods: about half the KV handed over.
    assert re.search(r"summary 3, snapkv 50%\s+\d+\s+16\s", out)
    handed = re.search(r"KV compression: .*?([\d.]+) KiB handed over\s+for (\d+) prompt tokens, "
                       r"against ([\d.]+) KiB for summary 2's (\d+)", out, re.DOTALL)
    assert handed, out[-3000:]
    compressed, plain = float(handed[1]) / int(handed[2]), float(handed[3]) / int(handed[4])
    assert 0.4 * plain < compressed < 0.65 * plain
    decisions = dict(re.findall(r"^\s+(summaries|stories)\s+(\d+\s+\d+)\s+[A-Z]", out,
                                re.MULTILINE))
    summaries = [int(n) for n in decisions["summaries"].split()]
    stories = [int(n) for n in decisions["stories"].split()]
    assert summaries[0] > summaries[1] and stories[1] > stories[0]
    assert "deleted the samples and namespace pdserve-demo" in out
    gone = cluster.kubectl("get", "llms", "-n", "pdserve-demo", "-o", "name", check=False)
    assert gone.stdout.strip() == ""
    operator = cluster.get("deployment", OPERATOR, "-n", SYSTEM_NAMESPACE)
    assert operator["spec"]["replicas"] == 0
