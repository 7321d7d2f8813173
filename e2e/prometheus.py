"""A real Prometheus for end-to-end tests: upstream Prometheus built from the Go module proxy
with the cluster's binaries (`make cluster-build`; Debian's package lacks Kubernetes service
discovery), started on a free port with a generated configuration, stopped (and restartable,
for outage tests) on demand.

Two kinds of targets: local processes, each carrying the labels Kubernetes relabeling would
give a pod (namespace, llmservice, role, pod), or real pods found through the apiserver with
the scrape configuration users run (manifests/prometheus/scrape-config.yaml)."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster.versions import bin_dir
from e2e.local_processes import free_port


@dataclass(frozen=True)
class Target:
    address: str  # host:port
    labels: dict[str, str]


def prometheus_binary() -> str:
    binary = bin_dir() / "prometheus"
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: run `make cluster-build`")
    return str(binary)


def static_scrape_configs(targets: list[Target]) -> list[dict[str, Any]]:
    return [{
        "job_name": "pdserve",
        "static_configs": [{"targets": [t.address], "labels": t.labels} for t in targets],
    }]


@dataclass
class PrometheusServer:
    scrape_configs: list[dict[str, Any]]
    workdir: Path
    scrape_interval_seconds: float = 2.0
    # 0.0.0.0 when pods must reach it (the real node's pods see the host at its link address).
    listen_host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        config = self.workdir / "prometheus.yml"
        interval = f"{self.scrape_interval_seconds:g}s"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": self.scrape_configs,
        }))
        log = (self.workdir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [prometheus_binary(), f"--config.file={config}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address={self.listen_host}:{self.port}"],
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
    """Prometheus scraping local processes under the labels their pods would carry."""
    with running_prometheus_for(static_scrape_configs(targets),
                                scrape_interval_seconds) as server:
        yield server


@contextlib.contextmanager
def running_prometheus_for(scrape_configs: list[dict[str, Any]],
                           scrape_interval_seconds: float = 2.0,
                           listen_host: str = "127.0.0.1") -> Iterator[PrometheusServer]:
    with tempfile.TemporaryDirectory(prefix="pdserve-prometheus-") as workdir:
        server = PrometheusServer(scrape_configs, Path(workdir), scrape_interval_seconds,
                                  listen_host)
        server.start()
        try:
            yield server
        finally:
            server.stop()
