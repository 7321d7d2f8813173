"""`pdserve plan --from-prometheus`: the planner's inputs turned into a workload, and the
refusals when Prometheus has nothing to say."""

from __future__ import annotations

import math

import pytest

from pdserve.planning.cli import main
from pdserve.planning.observed import observed_workload
from pdserve.planning.shapes import PlanInputError

SERVING = {"arrival_rate": 2.0, "peak_arrival_rate": 5.0, "decode_request_rate": 2.0,
           "decode_prompt_rate": 6000.0, "decode_generation_rate": 240.0,
           "worker_cache_hit_rate": 1500.0}


def test_the_observed_means_rate_hits_and_bursts_become_the_workload() -> None:
    observed = observed_workload(SERVING, "team/chat")
    workload = observed.workload
    assert observed.rate == 2.0
    assert (observed.mean_input_tokens, observed.mean_output_tokens) == (3000.0, 120.0)
    assert workload.input_tokens.mean == pytest.approx(3000, rel=0.05)
    assert workload.prefix_hit == 0.25 and workload.arrival_scv == 2.5
    assert workload.profile == "input-heavy"


def test_no_cache_metrics_mean_no_hits() -> None:
    observed = observed_workload({**SERVING, "worker_cache_hit_rate": math.nan,
                                  "peak_arrival_rate": math.nan}, "team/chat")
    assert observed.workload.prefix_hit == 0.0 and observed.workload.arrival_scv == 1.0


@pytest.mark.parametrize("missing", ["arrival_rate", "decode_request_rate",
                                     "decode_generation_rate"])
def test_a_window_without_traffic_is_refused(missing: str) -> None:
    with pytest.raises(PlanInputError, match="no traffic"):
        observed_workload({**SERVING, missing: math.nan}, "team/chat")


TARGETS = ["--model", "qwen3-0.6b", "--ttft-ms", "1000", "--tpot-ms", "50"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--from-prometheus", "http://127.0.0.1:9"], "--llmservice NAMESPACE/NAME"),
    (["--from-prometheus", "http://127.0.0.1:9", "--llmservice", "team/chat"],
     "cannot read Prometheus at http://127.0.0.1:9"),
    (["--from-prometheus", "http://127.0.0.1:9", "--llmservice", "team/chat", "--workload",
      "story"], "not both"),
    ([], "give --workload and --rate"),
])
def test_from_prometheus_refusals_exit_2(capsys: pytest.CaptureFixture[str], extra: list[str],
                                         message: str) -> None:
    assert main([*TARGETS, *extra]) == 2
    assert message in capsys.readouterr().err
