"""A real Prometheus for end-to-end tests: Debian's `prometheus` package (installed with apt-get
when missing and running as root), started on a free loopback port with a generated scrape
configuration, stopped (and restartable, for outage tests) on demand.

Local processes are not pods, so each target carries the labels Kubernetes relabeling would
give a pod (namespace, llmservice, role, pod): the planner's queries select by those."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from e2e.local_processes import free_port

BINARY_CANDIDATES = ("prometheus", "/usr/bin/prometheus")


@dataclass(frozen=True)
class Target:
    address: str  # host:port
    labels: dict[str, str]


def prometheus_binary() -> str:
    """The prometheus binary, installing Debian's package if it is missing."""
    for candidate in BINARY_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    if os.geteuid() != 0:
        raise RuntimeError("prometheus is not installed and installing it needs root "
                           "(apt-get install prometheus)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"],
                   check=True, env=env, capture_output=True)
    found = shutil.which("prometheus")
    if not found:
        raise RuntimeError("apt-get installed prometheus but no binary is on PATH")
    return found


def scrape_config(targets: list[Target], interval_seconds: float) -> dict[str, object]:
    return {
        "global": {"scrape_interval": f"{interval_seconds:g}s",
                   "evaluation_interval": f"{interval_seconds:g}s"},
        "scrape_configs": [{
            "job_name": "pdserve",
            "static_configs": [{"targets": [t.address], "labels": t.labels} for t in targets],
        }],
    }


@dataclass
class PrometheusServer:
    targets: list[Target]
    workdir: Path
    scrape_interval_seconds: float = 2.0
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(self.targets,
                                                       self.scrape_interval_seconds)))
        log = (self.workdir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [prometheus_binary(), f"--config.file={config}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("prometheus exited: "
                                   + (self.workdir / "prometheus.log").read_text()[-2000:])
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    self.url + "/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
            time.sleep(0.3)
        raise TimeoutError("prometheus did not become ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@contextlib.contextmanager
def running_prometheus(targets: list[Target], scrape_interval_seconds: float = 2.0
                       ) -> Iterator[PrometheusServer]:
    with tempfile.TemporaryDirectory(prefix="pdserve-prometheus-") as workdir:
        server = PrometheusServer(targets, Path(workdir), scrape_interval_seconds)
        server.start()
        try:
            yield server
        finally:
            server.stop()


if __name__ == "__main__":  # `python -m e2e.prometheus`: install and print the binary
    print(prometheus_binary())
