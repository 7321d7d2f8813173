"""etcd and kube-apiserver restarted while the operator runs, briefly and for ten minutes: it
stays up (the same process), its watches resume, and drift made right after the control plane
returns is repaired within 70 s (e2e/outage_scenario.py, which runs beside the other tests
from the end of collection; this test waits for it)."""

from __future__ import annotations

import time

import pytest

from e2e import outage_scenario

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.timeout(int(outage_scenario.DEADLINE_S) + 60)
def test_operator_repairs_drift_after_control_plane_outages() -> None:
    scenario = outage_scenario.RUNNING.get("scenario")
    if scenario is None:
        pytest.skip(outage_scenario.RUNNING.get("skipped") or "the scenario was not started")
    started = outage_scenario.RUNNING["started"]
    scenario.join(max(0.0, started + outage_scenario.DEADLINE_S - time.monotonic()))
    assert not scenario.is_alive(), (
        f"the outage scenario did not end within {outage_scenario.DEADLINE_S:.0f} s")
    assert scenario.error is None, scenario.error
    print("outages (s) -> repaired after (s):",
          ", ".join(f"{o:.0f} -> {r:.1f}" for o, r in scenario.figures))
