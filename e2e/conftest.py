"""Fixtures of the end-to-end tests: a Kubernetes cluster (see e2e/cluster/session.py), a fresh
namespace per test, and for tests of real pods where they run and the image they run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.cluster.session import Cluster, session_cluster
from e2e.real_node import Placement


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with session_cluster() as found:
        yield found


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    with cluster.namespace(request.node.name) as name:
        yield name


@pytest.fixture(scope="session")
def placement(cluster: Cluster) -> Placement:
    if not cluster.local:
        return Placement()
    if cluster.node is None:
        pytest.fail("the local cluster runs without its real node (started with "
                    "PDSERVE_REAL_NODE=0): stop it (make cluster-down) to run pods")
    return Placement.real_node()


@pytest.fixture(scope="session")
def pdserve_image(cluster: Cluster, placement: Placement) -> str:
    """The image reference pods ask for, built from the Dockerfile (cached by content) and
    imported into the real node's containerd; on another cluster it must be loaded already."""
    from e2e import image

    reference = image.reference()
    if cluster.node is not None:
        archive = image.build()
        image.import_into_containerd(archive, cluster.tool("ctr"),
                                     cluster.node.containerd_socket)
    return reference
