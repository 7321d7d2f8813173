"""The cluster a test session runs against, and helpers to drive it with kubectl and helm.

Order of preference: the cluster named by $PDSERVE_E2E_KUBECONFIG or $KUBECONFIG (used as is,
never started or stopped); else the default local cluster when `make cluster-up` already runs
it (reused, left running); else a private local cluster in a temporary directory, started for
this session and always stopped at its end (also on SIGTERM / interpreter exit; its processes
die with the session even if it is killed)."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from e2e.cluster import controlplane, processes
from e2e.cluster.node.paths import NodePaths
from e2e.cluster.versions import bin_dir

KUBECTL_TIMEOUT_S = 60
PRIVATE_PREFIX = "pdserve-cluster-"


class KubectlError(RuntimeError):
    pass


@dataclass
class Cluster:
    """A reachable cluster: its kubeconfig, and kubectl / helm to drive it."""

    kubeconfig: Path
    bin_dir: Path | None
    local: bool
    # The local cluster's real node (containerd to import images into); None on a cluster
    # named by KUBECONFIG, whose nodes all run containers and get images their own way.
    node: NodePaths | None = None
    # The local cluster's state (logs, the audit log among them, and its components, which a
    # test may stop and start); None on a cluster named by KUBECONFIG.
    state_dir: Path | None = None
    env: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        env = dict(os.environ)
        if self.bin_dir is not None:
            env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["KUBECONFIG"] = str(self.kubeconfig)
        self.env = env

    def tool(self, name: str) -> str:
        """Absolute path of `kubectl` or `helm`: the built one first, else from PATH."""
        if self.bin_dir is not None and (self.bin_dir / name).exists():
            return str(self.bin_dir / name)
        found = shutil.which(name, path=self.env["PATH"])
        if found is None:
            raise KubectlError(f"{name} not found: run `make cluster-build` or put it on PATH")
        return found

    @property
    def kubectl_path(self) -> str:
        return self.tool("kubectl")

    @property
    def helm_path(self) -> str:
        return self.tool("helm")

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = KUBECTL_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.kubectl_path, *args],
            input=input,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def get(self, *args: str) -> Any:
        """`kubectl get ... -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def wait_crd_established(self, name: str, timeout_s: float = 120.0) -> None:
        """Until the CRD is Established, its resource in discovery (`api-resources` also
        refreshes kubectl's discovery cache) and its schema in OpenAPI v3. Not `kubectl
        wait`: right after its creation a CRD's status holds `conditions: null`, which kubectl
        wait fails on at once instead of waiting."""
        deadline = time.monotonic() + timeout_s
        group = name.split(".", 1)[1]
        while True:
            crd = self.get("crd", name)
            conditions = (crd.get("status") or {}).get("conditions") or []
            established = any(c.get("type") == "Established" and c.get("status") == "True"
                              for c in conditions)
            if established and name in self.kubectl(
                    "api-resources", f"--api-group={group}", "-o", "name").stdout.split():
                # `explain` reads the OpenAPI v3 document, published a moment later.
                paths = json.loads(self.kubectl("get", "--raw", "/openapi/v3").stdout)["paths"]
                served = [v["name"] for v in crd["spec"]["versions"] if v.get("served")]
                if all(f"apis/{group}/{version}" in paths for version in served):
                    return
            if time.monotonic() > deadline:
                raise KubectlError(f"CRD {name} not served after {timeout_s:.0f}s: "
                                   f"{conditions}")
            time.sleep(0.5)

    def apply(self, objects: list[dict[str, Any]], *args: str) -> str:
        manifest = yaml.safe_dump_all(objects, sort_keys=False)
        return self.kubectl("apply", "-f", "-", *args, input=manifest).stdout

    def helm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.helm_path, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @contextlib.contextmanager
    def namespace(self, prefix: str = "e2e") -> Iterator[str]:
        """A fresh namespace, deleted (without waiting) afterwards."""
        clean = "".join(c if c.isalnum() else "-" for c in prefix.lower()).strip("-")[:40]
        name = f"{clean or 'e2e'}-{uuid.uuid4().hex[:6]}"
        self.kubectl("create", "namespace", name)
        try:
            yield name
        finally:
            self.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _external_kubeconfig() -> Path | None:
    for var in ("PDSERVE_E2E_KUBECONFIG", "KUBECONFIG"):
        value = os.environ.get(var)
        if value:
            return Path(value.split(os.pathsep)[0])
    return None


def _built_bins() -> Path | None:
    bins = bin_dir()
    return bins if (bins / "kubectl").exists() else None


@contextlib.contextmanager
def session_cluster() -> Iterator[Cluster]:
    external = _external_kubeconfig()
    if external is not None:
        yield Cluster(external, _built_bins(), local=False)
        return
    shared = controlplane.read_state(controlplane.default_state_dir())
    if shared is not None and controlplane.is_healthy(shared):
        yield local_cluster(shared)
        return
    _remove_dead_private_clusters()
    state_dir = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX))
    stopper = _Stopper(state_dir)
    try:
        state = controlplane.up(state_dir, tie_to_parent=True)
        yield local_cluster(state)
    finally:
        stopper()


def local_cluster(state: controlplane.ClusterState) -> Cluster:
    node = controlplane.node_paths(state) if state.real_node else None
    return Cluster(Path(state.kubeconfig), Path(state.bin_dir), local=True, node=node,
                   state_dir=Path(state.state_dir))


def _remove_dead_private_clusters() -> None:
    """Deletes the state of private clusters whose session was killed (their processes died
    with it, see `tie_to_parent`); directories still being set up have no state file yet."""
    for candidate in Path(tempfile.gettempdir()).glob(f"{PRIVATE_PREFIX}*"):
        state = controlplane.read_state(candidate)
        if state is not None and not any(processes.alive(p) for p in state.pids.values()):
            shutil.rmtree(candidate, ignore_errors=True)


class _Stopper:
    """Stops a private cluster exactly once: at the end of the session, at interpreter exit,
    or on SIGTERM / SIGHUP (then re-delivers the signal's default action)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.done = False
        atexit.register(self)
        self.previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)
        }

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        controlplane.down(self.state_dir, quiet=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
