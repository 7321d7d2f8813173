"""The apiserver's audit log of the local cluster: every request of a ServiceAccount outside
kube-system (the operator's among them), at Metadata level, so that a test can derive what an
account used and what it was refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

POLICY_FILE = "audit-policy.yaml"
LOG_NAME = "audit.log"
# Rotated at this size (lumberjack cannot keep one endless file); every backup is read.
MAX_SIZE_MB = 100
MAX_BACKUPS = 20

POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "omitManagedFields": True,
    "rules": [
        # The controller-manager's controllers act as kube-system accounts: many, and not ours.
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


def flags(state_dir: Path) -> list[str]:
    """kube-apiserver's flags for the log, kept in the cluster's logs directory."""
    return [
        f"--audit-policy-file={state_dir / POLICY_FILE}",
        f"--audit-log-path={state_dir / 'logs' / LOG_NAME}",
        f"--audit-log-maxsize={MAX_SIZE_MB}",
        f"--audit-log-maxbackup={MAX_BACKUPS}",
    ]


def write_policy(state_dir: Path) -> None:
    (state_dir / POLICY_FILE).write_text(yaml.safe_dump(POLICY, sort_keys=False))


def events(log_dir: Path, since: float = 0.0) -> Iterator[dict[str, Any]]:
    """The logged events whose request arrived at or after `since` (Unix time), oldest file
    first (backups are named audit-<time>.log)."""
    stem = Path(LOG_NAME).stem
    for path in [*sorted(log_dir.glob(f"{stem}-*.log")), log_dir / LOG_NAME]:
        if not path.is_file():
            continue
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line being written as we read
                received = datetime.fromisoformat(event["requestReceivedTimestamp"])
                if received.timestamp() >= since:
                    yield event
