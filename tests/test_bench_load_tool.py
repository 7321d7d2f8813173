"""bench/load_tool.py without guidellm: its report parser on a recorded guidellm 0.8.1 report,
the scenario it writes, and the refusal when guidellm cannot be installed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import load_tool
from bench.load_tool import Load, ToolUnavailable, backend_spec, parse_report, request_outcomes

REPORT = Path(__file__).parent / "guidellm_report_0.8.1.json"


def test_parse_recorded_report() -> None:
    (figures,) = parse_report(REPORT)
    assert figures.label == "poisson@5"
    assert figures.successes == 56 and figures.errors == 0 and figures.incomplete == 0
    assert figures.duration_s == 8.0
    assert figures.requests_per_s == pytest.approx(7.0)  # 56 requests in 8 s
    assert figures.output_tok_s == pytest.approx(224.0)  # 56 x 32 tokens in 8 s
    assert figures.ttft_p50 == pytest.approx(28.706, abs=1e-3)
    assert figures.ttft_p90 == pytest.approx(74.926, abs=1e-3)
    assert figures.ttft_p99 == pytest.approx(117.598, abs=1e-3)
    assert figures.itl_p50 == pytest.approx(9.762, abs=1e-3)
    assert figures.itl_p95 == pytest.approx(13.940, abs=1e-3)
    assert figures.ttft_p50 <= figures.ttft_p90 <= figures.ttft_p99
    assert figures.slo_attainment is None and figures.goodput is None  # no SLOs were set
    assert load_tool.guidellm_version_of(REPORT) == "0.8.1"


def test_missing_metrics_read_as_nan(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    report.write_text('{"benchmarks": [{"metrics": {"request_totals": {"successful": 0}}, '
                      '"config": {"strategy": {"type_": "concurrent", "streams": 4}}}]}')
    (figures,) = parse_report(report)
    assert figures.label == "concurrent@4" and figures.successes == 0
    assert math.isnan(figures.ttft_p50) and math.isnan(figures.requests_per_s)


def test_table_has_one_row_per_run() -> None:
    (figures,) = parse_report(REPORT)
    text = load_tool.table({"worker": figures, "router": figures})
    assert text.count("\n") == 3 and "| worker | 7.00 | 224.0 | 28.7 / 117.6 ms" in text


def test_scenario_spec() -> None:
    spec = Load(profile="concurrent", rate=4, prompt_tokens=64, output_tokens=8,
                max_seconds=10, seed=3).spec()
    assert spec["profile"] == {"kind": "concurrent", "streams": [4]}
    assert spec["data"] == [{"kind": "synthetic_text", "prompt_tokens": 64, "output_tokens": 8}]
    assert spec["constraints"] == [{"kind": "max_duration", "seconds": 10}]
    assert spec["seed"] == {"kind": "static", "value": 3}
    assert "slo" not in spec["metrics"]
    spec = Load(profile="poisson", rate=2.5, data_file=Path("rows.jsonl"), max_seconds=None,
                max_requests=40, ttft_slo_ms=500, itl_slo_ms=20).spec()
    assert spec["profile"] == {"kind": "poisson", "rate": [2.5]}
    assert spec["data"][0]["kind"] == "json_file"
    assert spec["data"][0]["path"].endswith("rows.jsonl")
    assert spec["constraints"] == [{"kind": "max_requests", "count": 40}]
    assert spec["metrics"]["slo"] == {"ttft_ms": 500, "tpot_ms": 20}
    with pytest.raises(ValueError, match="bound the load"):
        Load(max_seconds=None).spec()
    with pytest.raises(ValueError, match="needs a rate"):
        Load(profile="constant", rate=None).spec()
    with pytest.raises(ValueError, match="choose from"):
        Load(profile="sweep").spec()


def test_backend_sends_an_api_key_only_when_given() -> None:
    plain = backend_spec("http://h:1", "tiny", 30.0)
    assert plain == {"kind": "openai_http", "target": "http://h:1", "model": "tiny",
                     "request_format": "/v1/completions", "timeout": 30.0}
    assert backend_spec("http://h:1", "tiny", None, api_key="sk-1")["api_key"] == "sk-1"


def test_request_outcomes_count_http_statuses_of_errors(tmp_path: Path) -> None:
    def errored(message: str) -> dict:
        return {"info": {"status": "errored", "error": message}}

    shed = ("HTTPStatusError(\"Client error '429 Too Many Requests' for url "
            "'http://127.0.0.1:1/v1/completions'\")")
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"benchmarks": [{
        "start_time": 10.0, "end_time": 15.5,
        "requests": {
            "successful": [{"output_metrics": {"text_tokens": 24}},
                           {"output_metrics": {"text_tokens": 16}}],
            "errored": [errored(shed), errored(shed), errored("ReadTimeout('')"),
                        errored(shed.replace("429 Too Many Requests", "503 Service "
                                             "Unavailable"))],
            "incomplete": [], "total": None}}]}))
    (outcomes,) = request_outcomes(report)
    assert outcomes.answered == 2 and outcomes.output_tokens == 40
    assert outcomes.http_errors == {429: 2, 503: 1} and outcomes.other_errors == 1
    assert outcomes.incomplete == 0 and (outcomes.start, outcomes.end) == (10.0, 15.5)


def test_install_failure_is_tool_unavailable(tmp_path: Path, monkeypatch) -> None:
    def fail(cmd, **_):
        raise subprocess.CalledProcessError(1, cmd, stderr="no index reachable")

    monkeypatch.setattr(load_tool.subprocess, "run", fail)
    with pytest.raises(ToolUnavailable, match="no index reachable"):
        load_tool.ensure_guidellm(tmp_path / "venv", quiet=True)


def test_cli_exits_2_when_unavailable(monkeypatch, capsys) -> None:
    def unavailable(*_, **__):
        raise ToolUnavailable("offline")

    monkeypatch.setattr(load_tool, "ensure_guidellm", unavailable)
    monkeypatch.setattr(sys, "argv", ["load_tool", "--install-only"])
    with pytest.raises(SystemExit) as exit_info:
        load_tool.main()
    assert exit_info.value.code == 2
    assert "guidellm unavailable: offline" in capsys.readouterr().err
