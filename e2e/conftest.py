"""Fixtures of the end-to-end tests: a Kubernetes cluster (see e2e/cluster/session.py) and a
fresh namespace per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.cluster.session import Cluster, session_cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with session_cluster() as found:
        yield found


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    with cluster.namespace(request.node.name) as name:
        yield name
