"""`python -m e2e.cluster build|up|down|status`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from e2e.cluster import build, controlplane, nodepools
from e2e.cluster.certs import PKIError
from e2e.cluster.processes import ProcessError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.cluster", description="the local Kubernetes control plane"
    )
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the cluster keeps its state (default "
        f"{controlplane.default_state_dir()}, or $PDSERVE_CLUSTER_DIR)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the pinned binaries into the cache (once)")
    up = sub.add_parser(
        "up", parents=[state], help="start the control plane and the KWOK node pools"
    )
    nodes = sub.add_parser(
        "nodes", help="add the KWOK node pools to another cluster ($KUBECONFIG, e.g. kind)"
    )
    for p in (up, nodes):
        p.add_argument(
            "--node-pools",
            type=Path,
            default=None,
            help="node pools YAML (default e2e/cluster/nodepools.yaml or $PDSERVE_NODE_POOLS)",
        )
    nodes.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG", ""))
    nodes.add_argument("--kubectl", default="kubectl")
    sub.add_parser("down", parents=[state], help="stop everything `up` started")
    sub.add_parser("status", parents=[state], help="print what runs")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            return build.main()
        if args.command == "up":
            pools = nodepools.load(args.node_pools)
            controlplane.up(args.state_dir, pools)
            return 0
        if args.command == "nodes":
            if not args.kubeconfig:
                print("cluster nodes: set KUBECONFIG or pass --kubeconfig", file=sys.stderr)
                return 2
            names = nodepools.apply_nodes(
                args.kubectl, args.kubeconfig, nodepools.load(args.node_pools)
            )
            print(f"applied {len(names)} KWOK nodes: {', '.join(names)}")
            return 0
        if args.command == "down":
            controlplane.down(args.state_dir)
            return 0
        print(controlplane.status(args.state_dir))
        return 0
    except (
        controlplane.ClusterError,
        nodepools.NodePoolConfigError,
        nodepools.NodePoolApplyError,
        PKIError,
        ProcessError,
    ) as err:
        print(f"cluster {args.command}: {err}", file=sys.stderr)
        return 1
