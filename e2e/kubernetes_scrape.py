"""manifests/prometheus/scrape-config.yaml for a Prometheus outside the cluster.

The file is written for Prometheus in a pod; its only in-cluster settings are each pod
discovery's api_server, authorization.credentials_file and tls_config.ca_file, which this
replaces. Debian's prometheus package is built without Kubernetes discovery: these scrape
configurations need an upstream Prometheus build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SCRAPE_CONFIG = Path(__file__).resolve().parents[1] / "manifests/prometheus/scrape-config.yaml"


def scrape_configs(api_server: str, token_file: Path, ca_file: Path,
                   namespaces: list[str] | None = None) -> list[dict[str, Any]]:
    """The file's scrape_configs, every pod discovery pointed at `api_server` with that token
    and CA, and limited to `namespaces` when given."""
    configs: list[dict[str, Any]] = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]
    for job in configs:
        for discovery in job["kubernetes_sd_configs"]:
            discovery["api_server"] = api_server
            discovery["authorization"]["credentials_file"] = str(token_file)
            discovery["tls_config"]["ca_file"] = str(ca_file)
            if namespaces is not None:
                discovery["namespaces"] = {"names": list(namespaces)}
    return configs
