"""Starting and stopping the real node.

containerd, kubelet, kube-proxy and CoreDNS run in the node's network namespace and in one
private mount namespace. The mount namespace keeps the container mounts off the host and hides
the host sysctls the kubelet would change (vm.overcommit_memory, kernel.panic, ...) behind
files holding the host's own values, so the host is as it was when the node stops."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from e2e import debian_packages
from e2e.cluster.node import configs, dns, identity, network, pause
from e2e.cluster.node.paths import RUN_DIR, NodePaths

# Start order; stop in reverse (the kubelet before containerd, so nothing restarts pods).
PROCESSES = ("containerd", "kubelet", "kube-proxy", "coredns")
# What the kubelet sets at start (its kernel tunables) and must not change on the host.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
PACKAGES = {
    "runc": configs.RUNC,
    "containernetworking-plugins": f"{configs.CNI_BIN_DIR}/bridge",
    "iptables": "iptables-restore",
    "conntrack": "conntrack",
    "gcc": "gcc",
    "libc6-dev": "/usr/lib/x86_64-linux-gnu/libc.a",
}
OWNER_FILE = RUN_DIR / "owner"
Start = Callable[[str, list[str]], int]


class NodeError(RuntimeError):
    pass


def disabled() -> bool:
    return os.environ.get("PDSERVE_REAL_NODE", "1") == "0"


def check_can_run() -> None:
    if os.geteuid() != 0:
        raise NodeError("the real node needs root (network and mount namespaces, iptables); "
                        "run as root or set PDSERVE_REAL_NODE=0 for KWOK nodes only")
    try:
        debian_packages.ensure(PACKAGES)
    except debian_packages.MissingPackageError as err:
        raise NodeError(str(err)) from err


def prepare(paths: NodePaths, pki: Path, api_port: int, owner: Path,
            owner_alive: Callable[[Path], bool]) -> None:
    """Everything before the first process: stale state gone, files written, namespaces made."""
    check_can_run()
    previous = _owner()
    if previous is not None and previous != owner and owner_alive(previous):
        raise NodeError(f"a real node already runs for the cluster in {previous} (one per "
                        "machine); stop that cluster, or set PDSERVE_REAL_NODE=0")
    teardown(paths)
    for directory in (paths.config, paths.cni_conf, paths.kubelet_root, paths.pod_logs,
                      paths.sysctls, paths.logs, paths.containerd_root):
        directory.mkdir(parents=True, exist_ok=True)
    _write_configs(paths, pki, api_port)
    network.create()
    _mount_namespace(paths)
    OWNER_FILE.write_text(str(owner))


def _write_configs(paths: NodePaths, pki: Path, api_port: int) -> None:
    from e2e.cluster import certs  # the PKI module imports this package's identity

    server = f"https://{identity.HOST_IP}:{api_port}"
    files = {
        "containerd.toml": configs.containerd_toml(paths),
        "kubelet.yaml": configs.kubelet_config(paths, pki),
        "kube-proxy.yaml": configs.kube_proxy_config(paths.config / "kube-proxy.kubeconfig"),
        "Corefile": configs.corefile(paths.config / "coredns.kubeconfig"),
        "resolv.conf": "",
    }
    for client in ("kubelet", "kube-proxy", "coredns"):
        files[f"{client}.kubeconfig"] = certs.kubeconfig(server, pki, client)
    for name, text in files.items():
        (paths.config / name).write_text(text)
    (paths.cni_conf / "10-pdserve-node.conflist").write_text(configs.cni_conflist(paths))


def _run(*command: str) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NodeError(f"`{' '.join(command)}` failed: {proc.stderr.strip()}")


def _mount_namespace(paths: NodePaths) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    # A namespace can be pinned by a bind mount only on a mount that does not propagate.
    _run("mount", "--bind", str(RUN_DIR), str(RUN_DIR))
    _run("mount", "--make-private", str(RUN_DIR))
    paths.mount_ns.touch()
    _run("unshare", f"--mount={paths.mount_ns}", "--propagation", "private", "true")
    host_values = {}
    for sysctl in KUBELET_SYSCTLS:
        proc_file = Path("/proc/sys") / sysctl
        if not proc_file.exists():
            continue
        host_values[sysctl] = proc_file.read_text()
        stand_in = paths.sysctls / sysctl.replace("/", ".")
        stand_in.write_text(host_values[sysctl])
        _run("nsenter", f"--mount={paths.mount_ns}", "--", "mount", "--bind", str(stand_in),
             str(proc_file))
    # What the host read before the node started (the stand-ins get the kubelet's values).
    host_values_file(paths).write_text(json.dumps(host_values))


def host_values_file(paths: NodePaths) -> Path:
    return paths.sysctls / "host-values.json"


def in_node(paths: NodePaths, argv: list[str]) -> list[str]:
    """`argv` run inside the node's namespaces (nsenter execs it: the pid stays the same)."""
    return ["nsenter", f"--mount={paths.mount_ns}", f"--net={network.NETNS_PATH}", "--", *argv]


def commands(bins: Path, paths: NodePaths) -> dict[str, list[str]]:
    return {
        "containerd": in_node(paths, [str(bins / "containerd"),
                                      f"--config={paths.config / 'containerd.toml'}"]),
        "kubelet": in_node(paths, configs.kubelet_args(
            bins, paths, paths.config / "kubelet.kubeconfig")),
        "kube-proxy": in_node(paths, configs.kube_proxy_args(bins, paths)),
        "coredns": in_node(paths, configs.coredns_args(bins, paths)),
    }


def ctr(bins: Path, paths: NodePaths, *args: str, timeout: float = 600) -> str:
    command = [str(bins / "ctr"), f"--address={paths.containerd_socket}", "-n", "k8s.io", *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise NodeError(f"`ctr {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def containerd_ready(bins: Path, paths: NodePaths) -> bool:
    if not paths.containerd_socket.exists():
        return False
    try:
        ctr(bins, paths, "version", timeout=10)
    except (NodeError, subprocess.TimeoutExpired):
        return False
    return True


def import_pause_image(bins: Path, paths: NodePaths) -> None:
    if configs.PAUSE_IMAGE in ctr(bins, paths, "images", "ls", "-q").split():
        return
    try:
        archive = pause.ensure_archive()
    except pause.PauseImageError as err:
        raise NodeError(str(err)) from err
    ctr(bins, paths, "images", "import", str(archive))


def dns_ready() -> bool:
    return dns.resolve(f"kubernetes.default.svc.{identity.CLUSTER_DOMAIN}",
                       identity.DNS_SERVICE_IP) is not None


def _owner() -> Path | None:
    try:
        return Path(OWNER_FILE.read_text().strip())
    except OSError:
        return None


def _node_processes() -> list[int]:
    """Processes in the node's network namespace: its daemons and containerd's shims."""
    try:
        netns = network.NETNS_PATH.stat()
    except OSError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ns = (entry / "ns" / "net").stat()
        except OSError:
            continue
        if (ns.st_dev, ns.st_ino) == (netns.st_dev, netns.st_ino):
            found.append(int(entry.name))
    return found


def _kubepods_cgroups() -> list[Path]:
    """The pod cgroups the kubelet made (cgroupfs driver), deepest first."""
    found: list[Path] = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if top.is_dir():
            found += [p for p in top.rglob("*") if p.is_dir()] + [top]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _kill_containers() -> None:
    for cgroup in _kubepods_cgroups():
        with contextlib.suppress(OSError):
            for pid in (cgroup / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def teardown(paths: NodePaths) -> None:
    """Stops whatever a node left (its tracked processes are stopped by the caller first):
    containers, shims, mounts, the namespaces, the pod cgroups. Safe to repeat."""
    deadline = time.monotonic() + 15
    while True:
        left = _node_processes()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _kill_containers()
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for cgroup in _kubepods_cgroups():
        with contextlib.suppress(OSError):
            cgroup.rmdir()
    if paths.mount_ns.exists():
        subprocess.run(["umount", "-l", str(paths.mount_ns)], capture_output=True, check=False)
    if RUN_DIR.exists():
        subprocess.run(["umount", "-l", str(RUN_DIR)], capture_output=True, check=False)
        shutil.rmtree(RUN_DIR, ignore_errors=True)
    network.delete()
    with contextlib.suppress(OSError):
        OWNER_FILE.unlink()
