"""`python -m e2e.demo`: the sections in order, and leaving things tidy however it ends."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

import openai

from e2e.cluster import controlplane
from e2e.cluster.certs import PKIError
from e2e.cluster.processes import ProcessError
from e2e.cluster.session import KubectlError
from e2e.demo import kubernetes, pods, rebalance, report, serving


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m e2e.demo",
        description="pdserve end to end on this machine: a local Kubernetes cluster with GPU/TPU/"
        "CPU node pools (KWOK) and one real node, pdserve's image built and installed, its "
        "operator in-cluster reconciling the samples, the tiny model served by the agentic "
        "sample's router -> prefill -> decode pods, and the planner rebalancing prefill and "
        "decode as the load moves from summaries to stories.")
    p.add_argument("--keep", action="store_true",
                   help="leave the local cluster (and the demo's LLMServices) running at the end; "
                   "stop it later with `make cluster-down`")
    p.add_argument("--skip-cluster", action="store_true",
                   help="skip the Kubernetes sections (1, 2): serve and rebalance with local "
                   "processes")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="the local cluster's state directory (default "
                   f"{controlplane.default_state_dir()}, the one `make cluster-up` uses)")
    p.add_argument("--prefill", type=_positive, default=2,
                   help="prefill workers: the agentic sample's pods, or local processes "
                   "(default 2)")
    p.add_argument("--decode", type=_positive, default=2, help="decode workers (default 2)")
    p.add_argument("--window", type=float, default=10.0,
                   help="seconds of load behind each planner snapshot (default 10)")
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanups below


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if not args.window > 0:
        parser().error("--window must be positive")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="pdserve-demo-"))
    state_dir = (args.state_dir or controlplane.default_state_dir()).resolve()
    try:
        with contextlib.ExitStack() as cleanup:
            run(args, workdir, state_dir, cleanup)
    except (controlplane.ClusterError, PKIError, ProcessError, KubectlError, RuntimeError,
            TimeoutError, AssertionError, openai.APIError) as err:
        print(f"\ndemo failed: {err}\nlogs: {workdir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; everything the demo started is stopped. logs: {workdir}",
              file=sys.stderr)
        return 130
    report.say(f"\ndone. logs of every process: {workdir}")
    return 0


def run(args: argparse.Namespace, workdir: Path, state_dir: Path,
        cleanup: contextlib.ExitStack) -> None:
    local = None
    if not args.skip_cluster:
        report.section(1, "A local Kubernetes cluster: GPU, TPU and CPU node pools (KWOK) and "
                       "one real node")
        local = kubernetes.cluster_up(state_dir)
    cleanup.callback(_tidy_section, local, args.keep)  # runs last, after the processes stop
    if local is None:
        report.section(3, f"Serve the tiny model: router -> {args.prefill} prefill + "
                       f"{args.decode} decode workers (local processes)")
        stack = cleanup.enter_context(serving.serving_stack(workdir, args.prefill, args.decode))
    else:
        cluster = local.cluster
        report.section(2, "Install pdserve; the operator, in-cluster, reconciles the samples "
                       "onto the pools")
        kubernetes.load_image(cluster)
        kubernetes.install(cluster)
        if not args.keep and not local.started_here:
            cleanup.callback(kubernetes.stop_operator, cluster)
            cleanup.callback(kubernetes.remove_samples, cluster)  # runs first: operator still up
        agentic = kubernetes.agentic_on_real_node(args.prefill, args.decode,
                                                  serving.SHORT_PROMPT_THRESHOLD)
        kubernetes.apply_samples(cluster, agentic)
        name = agentic["metadata"]["name"]
        report.section(3, f"Serve the tiny model: {name}'s router Service -> {args.prefill} "
                       f"prefill + {args.decode} decode pods on the real node")
        stack = pods.stack(cluster, kubernetes.NAMESPACE, name,
                           agentic["spec"]["model"]["servedName"])
    report.say(f"router {stack.router.url}; prefill {', '.join(p.url for p in stack.prefill)}; "
               f"decode {', '.join(p.url for p in stack.decode)}\n")
    serving.show(asyncio.run(serving.run_workloads(stack)))
    report.section(4, "Rebalancing: the planner's decision as the load moves from summaries "
                   "to stories")
    if local is None:
        url = cleanup.enter_context(rebalance.prometheus(stack))
    else:
        url = cleanup.enter_context(pods.prometheus(local.cluster, kubernetes.NAMESPACE,
                                                    workdir))
    asyncio.run(rebalance.run(stack, args.window, url))


def _tidy_section(local: kubernetes.LocalCluster | None, keep: bool) -> None:
    stopped = "Prometheus" + (", the samples and the operator" if local else
                              ", router and workers")
    report.section(5, f"Tidy up: {stopped} stopped")
    if local is not None:
        kubernetes.tidy(local, keep)
