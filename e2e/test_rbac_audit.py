"""Least privilege, proven by the apiserver's audit log of this session (e2e/cluster/audit.py):
the operator's ServiceAccounts (install.yaml's, cluster-wide, and the namespaced releases' of
the chart) were refused nothing, and the chart grants nothing they did not use. Runs last in
the session (e2e/conftest.py), after the tests that drive those operators."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from e2e import rbac_audit
from e2e.cluster import audit
from e2e.cluster.session import Cluster

pytestmark = [pytest.mark.e2e]

KUBE_VERSION = "1.37.2"  # the chart requires 1.30+ (helm template assumes 1.20)
CHART = Path(__file__).resolve().parents[1] / "charts" / "pdserve"
# The modules whose operators together exercise every grant: children and status (install),
# the scale subresource and pod-deletion costs (planner), LeaderWorkerSets (multi-node), the
# namespaced releases' discovery (helm, and the chart's operator as a pod).
EXERCISING = ("test_operator_install.py", "test_autoscaling_planner.py",
              "test_operator_multi_node.py", "test_operator_helm.py", "test_real_planner.py")


def operator_accounts(usernames: set[str]) -> set[str]:
    """The chart's operator accounts among the users of the log: `<release>-operator`, in
    pdserve-system (install.yaml) or in a release's namespace."""
    return {name for name in usernames
            if name.startswith("system:serviceaccount:") and name.endswith("-operator")}


def chart_grants(cluster: Cluster) -> set[rbac_audit.Permission]:
    """What the chart's Roles and ClusterRoles grant, cluster-wide and namespaced together."""
    found: set[rbac_audit.Permission] = set()
    for namespaced in ("false", "true"):
        done = cluster.helm("template", "pdserve", str(CHART), "--namespace", "pdserve-system",
                            "--kube-version", KUBE_VERSION, "--set",
                            f"rbac.namespaced={namespaced}")
        assert done.returncode == 0, done.stderr
        found |= rbac_audit.granted(yaml.safe_load_all(done.stdout))
    return found


def test_the_operator_used_exactly_what_the_chart_grants(
    cluster: Cluster, request: pytest.FixtureRequest, session_started: float
) -> None:
    if cluster.state_dir is None:
        pytest.skip("the audit log is the local cluster's (KUBECONFIG names another)")
    events = list(audit.events(cluster.state_dir / "logs", since=session_started))
    accounts = operator_accounts({event["user"]["username"] for event in events})
    refused = rbac_audit.refused(events, accounts)
    assert not refused, f"RBAC refused the operator:\n{rbac_audit.table(refused)}"
    ran = {Path(str(item.fspath)).name for item in request.session.items}
    missing = [name for name in EXERCISING if name not in ran]
    if missing:
        pytest.skip(f"every grant is exercised only by the whole e2e suite: {missing} not run")
    used = rbac_audit.used(events, accounts)
    unused = chart_grants(cluster) - used - set(rbac_audit.CHECKED_NOT_REQUESTED)
    assert not unused, (
        f"the chart grants what no operator used ({sorted(accounts)}):\n"
        f"{rbac_audit.table(unused)}\nused:\n{rbac_audit.table(used)}")
