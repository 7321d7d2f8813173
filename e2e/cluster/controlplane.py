"""Brings the local control plane up and down: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, as processes of this machine, all state in one directory."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import audit, certs, components, lws, nodepools, processes
from e2e.cluster.build import stages_dir
from e2e.cluster.node import configs as node_configs
from e2e.cluster.node import identity as node_identity
from e2e.cluster.node import lifecycle as node
from e2e.cluster.node.paths import NodePaths, for_cluster
from e2e.cluster.versions import bin_dir, cache_root

STATE_FILE = "state.json"
START_TIMEOUT_S = 120.0
NODE_START_TIMEOUT_S = 180.0
CONTROL_PLANE = ("lws-controller", "kwok", "kube-scheduler", "kube-controller-manager",
                 "kube-apiserver", "etcd")
# Stop order: the real node (kubelet before containerd), consumers of the API, etcd last.
STOP_ORDER = (*reversed(node.PROCESSES), *CONTROL_PLANE)


class ClusterError(RuntimeError):
    pass


@dataclass
class ClusterState:
    """What `up` started, persisted so that `status` and `down` work from another process."""

    state_dir: str
    bin_dir: str
    server: str
    kubeconfig: str
    pids: dict[str, int]
    started_at: float
    real_node: bool = False
    # The ports picked at start: a component restarted alone gets its command line back.
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def kubectl(self) -> str:
        return str(Path(self.bin_dir) / "kubectl")


def default_state_dir() -> Path:
    override = os.environ.get("PDSERVE_CLUSTER_DIR")
    return Path(override) if override else cache_root() / "cluster"


def read_state(state_dir: Path) -> ClusterState | None:
    try:
        raw = json.loads((state_dir / STATE_FILE).read_text())
        return ClusterState(**raw)
    except (OSError, ValueError, TypeError):
        return None


def _write_state(state: ClusterState) -> None:
    path = Path(state.state_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    os.replace(tmp, path)


class _Api:
    """Minimal HTTPS client for readiness checks, with the admin client certificate."""

    def __init__(self, server: str, pki: Path) -> None:
        self.server = server
        self.context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(
                self.server + path, context=self.context, timeout=5
            ) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as err:
            return int(err.code), b""
        except (urllib.error.URLError, OSError):
            return 0, b""

    def ok(self, path: str) -> bool:
        return self.get(path)[0] == 200

    def json(self, path: str) -> Any:
        code, body = self.get(path)
        return json.loads(body) if code == 200 else None


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _nodes_ready(api: _Api, expected: set[str]) -> bool:
    nodes = api.json("/api/v1/nodes")
    if nodes is None:
        return False
    ready = {
        item["metadata"]["name"]
        for item in nodes["items"]
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in item.get("status", {}).get("conditions", [])
        )
    }
    return expected <= ready


def _log(message: str, started: float) -> None:
    print(f"[cluster {time.monotonic() - started:6.1f}s] {message}", flush=True)


def up(
    state_dir: Path | None = None,
    pools: nodepools.NodePools | None = None,
    quiet: bool = False,
    tie_to_parent: bool = False,
    real_node: bool | None = None,
) -> ClusterState:
    """Starts the control plane in `state_dir` (fresh), or returns the running one there.

    With `tie_to_parent` the components die with this process (for test sessions). The real
    node runs unless `real_node` is False (None: unless $PDSERVE_REAL_NODE is 0)."""
    state_dir = (state_dir or default_state_dir()).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(state_dir):
        return _up(state_dir, pools, quiet, tie_to_parent,
                   not node.disabled() if real_node is None else real_node)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialises up/down on one state dir across processes (e.g. `make cluster-up` while a
    test session or the demo starts the same default cluster)."""
    with (state_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _up(
    state_dir: Path, pools: nodepools.NodePools | None, quiet: bool, tie_to_parent: bool,
    with_node: bool,
) -> ClusterState:
    started = time.monotonic()
    say = (lambda _msg: None) if quiet else (lambda msg: _log(msg, started))
    existing = read_state(state_dir)
    if existing is not None and is_healthy(existing):
        say(f"already running: KUBECONFIG={existing.kubeconfig}")
        return existing
    if existing is not None:
        say("found a stale cluster: stopping it first")
        _down(state_dir, quiet=True)
    pools = pools or nodepools.load()
    bins = bin_dir()
    wanted = (*CONTROL_PLANE, "kubectl", *(node.PROCESSES if with_node else ()), "ctr")
    missing = [n for n in wanted if not (bins / n).exists()]
    if missing or not stages_dir().is_dir() or not lws.crd_path().is_file():
        raise ClusterError(
            f"binaries missing from {bins}: {missing or 'kwok stages'}; "
            "run `make cluster-build` (python -m e2e.cluster build) first"
        )
    for sub in ("etcd", "logs", "pki"):
        shutil.rmtree(state_dir / sub, ignore_errors=True)
    if with_node:
        node.check_can_run()
    certs.make_pki(state_dir / "pki")
    audit.write_policy(state_dir)
    ports = {
        n: processes.free_port()
        for n in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler",
                  "lws-webhook", "lws-health")
    }
    server = f"https://127.0.0.1:{ports['apiserver']}"
    pki = state_dir / "pki"
    kubeconfig = state_dir / "kubeconfig"
    kubeconfig.write_text(certs.kubeconfig(server, pki, "admin"))
    for client in ("controller-manager", "scheduler"):
        (state_dir / f"{client}.kubeconfig").write_text(certs.kubeconfig(server, pki, client))
    args = components.command_lines(bins, state_dir, ports)
    logs = state_dir / "logs"
    state = ClusterState(str(state_dir), str(bins), server, str(kubeconfig), {}, time.time(),
                         ports=ports)
    try:
        start = functools.partial(_start, state, args=args, logs=logs, say=say, tie=tie_to_parent)
        start("etcd")
        processes.wait_for(
            lambda: _http_ok(f"http://127.0.0.1:{ports['etcd']}/health"),
            START_TIMEOUT_S,
            "etcd /health",
            state.pids,
            logs,
        )
        start("kube-apiserver")
        api = _Api(server, pki)
        processes.wait_for(
            lambda: api.ok("/readyz"), START_TIMEOUT_S, "kube-apiserver /readyz", state.pids, logs
        )
        say(f"kube-apiserver ready at {server}")
        for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
            start(name)
        expected = set(nodepools.apply_nodes(state.kubectl, state.kubeconfig, pools))
        processes.wait_for(
            lambda: api.ok("/api/v1/namespaces/default/serviceaccounts/default"),
            START_TIMEOUT_S,
            "the default ServiceAccount",
            state.pids,
            logs,
        )
        processes.wait_for(
            lambda: _nodes_ready(api, expected),
            START_TIMEOUT_S,
            f"{len(expected)} KWOK nodes Ready",
            state.pids,
            logs,
        )
        _up_lws(state, ports, api, start)
        if with_node:
            _up_node(state, ports["apiserver"], api, start, say)
            expected.add(node_identity.NODE_NAME)
    except BaseException:
        _stop_all(state)
        raise
    say(f"up: {len(expected)} nodes Ready; export KUBECONFIG={kubeconfig}")
    return state


def _up_node(state: ClusterState, api_port: int, api: _Api, start: Any, say: Any) -> None:
    """The real node: namespaces and files, containerd with the pause image, cluster DNS, then
    kubelet, kube-proxy and CoreDNS; returns once the node is Ready and DNS answers."""
    paths = node_paths(state)
    bins = Path(state.bin_dir)
    state.real_node = True
    node.prepare(paths, Path(state.state_dir) / "pki", api_port, Path(state.state_dir),
                 _owner_alive)
    args = node.commands(bins, paths)
    logs = Path(state.state_dir) / "logs"
    start("containerd", args=args)
    processes.wait_for(lambda: node.containerd_ready(bins, paths), NODE_START_TIMEOUT_S,
                       "containerd", state.pids, logs)
    node.import_pause_image(bins, paths)
    _apply(state, node_configs.dns_objects())
    for name in ("kubelet", "kube-proxy", "coredns"):
        start(name, args=args)
    processes.wait_for(lambda: _nodes_ready(api, {node_identity.NODE_NAME}),
                       NODE_START_TIMEOUT_S, "the real node Ready", state.pids, logs)
    processes.wait_for(node.dns_ready, NODE_START_TIMEOUT_S,
                       "cluster DNS through the kube-dns Service", state.pids, logs)
    say(f"real node {node_identity.NODE_NAME} Ready at {node_identity.NODE_IP}, DNS answers")


def _up_lws(state: ClusterState, ports: dict[str, int], api: _Api, start: Any) -> None:
    """The LeaderWorkerSet API: its CRD, its webhooks, then its controller; returns once the
    webhooks answer."""
    _apply(state, [yaml.safe_load(lws.crd_path().read_text()),
                   *lws.webhook_objects(Path(state.state_dir) / "pki" / "ca.crt",
                                        ports["lws-webhook"])])
    logs = Path(state.state_dir) / "logs"
    # The controller watches the kind from its start: the CRD must be served first.
    processes.wait_for(lambda: _crd_established(api, lws.CRD_NAME), START_TIMEOUT_S,
                       f"CRD {lws.CRD_NAME} Established", state.pids, logs)
    start(lws.BINARY)
    processes.wait_for(lambda: _http_ok(f"http://127.0.0.1:{ports['lws-health']}/readyz"),
                       START_TIMEOUT_S, "the LeaderWorkerSet controller /readyz", state.pids,
                       logs)
    processes.wait_for(lambda: _port_open(ports["lws-webhook"]), START_TIMEOUT_S,
                       "the LeaderWorkerSet webhooks", state.pids, logs)


def _apply(state: ClusterState, objects: list[dict[str, Any]]) -> None:
    """Server-side apply as the e2e tooling; a refusal raises with kubectl's own message."""
    done = subprocess.run(
        [state.kubectl, f"--kubeconfig={state.kubeconfig}", "apply", "--server-side",
         "--field-manager=pdserve-e2e", "-f", "-"],
        input=yaml.safe_dump_all(objects), text=True, capture_output=True, timeout=60)
    if done.returncode != 0:
        raise processes.ProcessError(
            f"kubectl apply failed ({done.returncode}): {done.stderr.strip()}")


def _crd_established(api: _Api, name: str) -> bool:
    """Whether the CRD is served. Right after its creation its status holds `conditions:
    null` (which `kubectl wait` fails on at once, rather than waiting)."""
    crd = api.json(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def node_paths(state: ClusterState) -> NodePaths:
    return for_cluster(Path(state.state_dir))


def _owner_alive(state_dir: Path) -> bool:
    other = read_state(state_dir)
    return other is not None and _running(other, "containerd")


def _start(
    state: ClusterState,
    name: str,
    *,
    args: dict[str, list[str]],
    logs: Path,
    say: Any,
    tie: bool,
) -> None:
    state.pids[name] = processes.start(name, args[name], logs, tie_to_parent=tie).pid
    _write_state(state)
    say(f"started {name} (pid {state.pids[name]}, log {logs / (name + '.log')})")


def _running(state: ClusterState, name: str) -> bool:
    """Whether the recorded pid still runs this component (pids are reused, e.g. after a
    reboot: another program under that pid is never touched)."""
    pid = state.pids.get(name)
    return pid is not None and processes.runs(pid, str(Path(state.bin_dir) / name))


def is_healthy(state: ClusterState) -> bool:
    expected = (*CONTROL_PLANE, *(node.PROCESSES if state.real_node else ()))
    if not all(_running(state, name) for name in expected):
        return False
    return _Api(state.server, Path(state.state_dir) / "pki").ok("/readyz")


def stop_components(state: ClusterState, names: tuple[str, ...]) -> None:
    """Stops some components (an outage for a test); `start_components` brings them back."""
    for name in names:
        if _running(state, name):
            processes.stop(state.pids[name])


def start_components(state: ClusterState, names: tuple[str, ...]) -> None:
    """Starts stopped components again with their first command lines, tied to this process;
    returns once etcd and the apiserver, where started, answer their health checks."""
    state_dir = Path(state.state_dir)
    args = components.command_lines(Path(state.bin_dir), state_dir, state.ports)
    logs = state_dir / "logs"
    for name in names:
        _start(state, name, args=args, logs=logs, say=lambda _msg: None, tie=True)
    if "etcd" in names:
        processes.wait_for(lambda: _http_ok(f"http://127.0.0.1:{state.ports['etcd']}/health"),
                           START_TIMEOUT_S, "etcd /health", state.pids, logs)
    if "kube-apiserver" in names:
        api = _Api(state.server, state_dir / "pki")
        processes.wait_for(lambda: api.ok("/readyz"), START_TIMEOUT_S,
                           "kube-apiserver /readyz", state.pids, logs)


def _stop_all(state: ClusterState) -> None:
    for name in STOP_ORDER:
        if _running(state, name):
            processes.stop(state.pids[name])
    if state.real_node:
        node.teardown(node_paths(state))


def down(state_dir: Path | None = None, quiet: bool = False) -> bool:
    """Stops every process recorded in `state_dir`; returns whether anything was recorded."""
    state_dir = (state_dir or default_state_dir()).resolve()
    if not state_dir.is_dir():
        return _down(state_dir, quiet)
    with _locked(state_dir):
        return _down(state_dir, quiet)


def _down(state_dir: Path, quiet: bool) -> bool:
    state = read_state(state_dir)
    if state is None:
        if not quiet:
            print(f"no cluster recorded in {state_dir}")
        return False
    _stop_all(state)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(state_dir / "etcd", ignore_errors=True)
    if not quiet:
        print(f"stopped: {', '.join(f'{n} ({p})' for n, p in state.pids.items())}")
    return True


def status(state_dir: Path | None = None) -> str:
    state_dir = (state_dir or default_state_dir()).resolve()
    state = read_state(state_dir)
    if state is None:
        return f"no cluster recorded in {state_dir}"
    lines = [
        f"state dir:  {state.state_dir}",
        f"server:     {state.server}",
        f"kubeconfig: {state.kubeconfig}",
        f"binaries:   {state.bin_dir}",
    ]
    for name in (n for n in STOP_ORDER if n in CONTROL_PLANE or n in state.pids):
        pid = state.pids.get(name)
        running = _running(state, name)
        lines.append(f"  {name:<24} pid {pid!s:<8} {'running' if running else 'NOT running'}")
    if is_healthy(state):
        api = _Api(state.server, Path(state.state_dir) / "pki")
        nodes = api.json("/api/v1/nodes") or {"items": []}
        lines.append(f"healthy: /readyz ok, {len(nodes['items'])} nodes")
    else:
        lines.append("NOT healthy")
    return "\n".join(lines)
