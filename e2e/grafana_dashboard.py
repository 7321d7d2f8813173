"""The chart's Grafana dashboard as queries: every panel's PromQL, and the same PromQL with the
dashboard's variables filled in, ready for a real Prometheus."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHART = Path(__file__).resolve().parents[1] / "charts" / "pdserve"
DASHBOARD = CHART / "dashboards" / "pdserve.json"
# Grafana variables look like $name or ${name}.
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str
    legend: str


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row, rows' nested panels included."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panels(panel)
        else:
            yield panel


def panel_queries(dashboard: Mapping[str, Any] | None = None) -> list[PanelQuery]:
    return [PanelQuery(panel["title"], target["refId"], target["expr"],
                       target.get("legendFormat", ""))
            for panel in panels(dashboard or load()) for target in panel["targets"]]


def variables(dashboard: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The dashboard's template variables by name."""
    return {variable["name"]: variable
            for variable in (dashboard or load())["templating"]["list"]}


def concrete(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with each Grafana variable replaced, e.g. {"namespace": "team-a",
    "llmservice": "chat", "__rate_interval": "1m"}; a variable without a value is an error."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(value, expr)
