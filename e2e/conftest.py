"""Fixtures of the end-to-end tests: a Kubernetes cluster (see e2e/cluster/session.py), a fresh
namespace per test, and for tests of real pods where they run and the image they run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import outage_scenario, real_stack
from e2e.cluster.session import Cluster, session_cluster
from e2e.operator_harness import Api
from e2e.real_node import Placement

SESSION_STARTED = time.time()
# Last: the test that reads what the whole session did (the apiserver's audit log); before it,
# the one that waits for the outage scenario run beside the others since collection ended.
ORDER_AT_END = {"test_control_plane_outage.py": 1, "test_rbac_audit.py": 2}


def _module(item: pytest.Item) -> str:
    return Path(str(item.fspath)).name


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: ORDER_AT_END.get(_module(item), 0))


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any(_module(item) == "test_control_plane_outage.py" for item in session.items):
        outage_scenario.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    outage_scenario.stop()


@pytest.fixture(scope="session")
def session_started() -> float:
    return SESSION_STARTED


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


@pytest.fixture(scope="session")
def real_release(cluster: Cluster, placement: Placement, pdserve_image: str,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The chart installed with `helm install`, its operator a pod: yields its namespace."""
    with real_stack.release(cluster, placement, tmp_path_factory.mktemp("release")) as found:
        yield found


@pytest.fixture(scope="session")
def chat_service(cluster: Cluster, placement: Placement, real_release: str) -> str:
    """A CPU LLMService (tiny model, one router, prefill and decode pod) serving on real pods:
    its name, in the release's namespace."""
    real_stack.apply_and_wait_ready(cluster, Api(cluster), real_release, "chat",
                                    real_stack.cpu_service_spec(placement), pods=3)
    return "chat"


@pytest.fixture(scope="session")
def cluster_prometheus(cluster: Cluster, real_release: str,
                       tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[real_stack.ClusterPrometheus]:
    with real_stack.cluster_prometheus(cluster, [real_release],
                                       tmp_path_factory.mktemp("prometheus")) as found:
        yield found
