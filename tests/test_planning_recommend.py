"""status.recommendation's pure part: the served workload planned at the LLMService's targets,
beside what its current pods cost."""

from __future__ import annotations

import pytest

from pdserve.api.spec import LLMServiceSpec
from pdserve.api.status import LLMServiceStatus
from pdserve.controller.recommendation import _as_status, recommendation_status
from pdserve.planning.recommend import recommend, service_shape
from pdserve.planning.shapes import PlanInputError

SERVING = {"arrival_rate": 4.0, "peak_arrival_rate": 6.0, "decode_request_rate": 4.0,
           "decode_prompt_rate": 8000.0, "decode_generation_rate": 800.0,
           "worker_cache_hit_rate": 0.0}


def _spec(source: dict[str, str], kind: str = "nvidia-h100") -> LLMServiceSpec:
    count = 1 if kind == "cpu" else 8
    return LLMServiceSpec.model_validate({
        "model": {"source": source},
        "prefill": {"accelerator": {"kind": kind, "count": count}},
        "decode": {"accelerator": {"kind": kind, "count": count}},
        "autoscaling": {"enabled": True, "prometheusUrl": "http://p:9090",
                        "slo": {"ttftMilliseconds": 1000, "tpotMilliseconds": 50}}})


def test_an_oversized_deployment_gets_a_cheaper_recommendation() -> None:
    spec = _spec({"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"})
    found = recommend(spec, SERVING, {"prefill": 2, "decode": 2}, "team/chat")
    # 32 H100s for 4 req/s of an 8B model: far more than needed.
    assert found.current_cost_per_hour == pytest.approx(32 * 11.0)
    assert found.saving > 0.8 and found.candidate.prediction.attainment >= 0.9
    status = recommendation_status(found, "2026-12-04T10:00:00Z")
    assert status.observed is not None and status.observed.rate_rps == 4.0
    assert status.observed.mean_input_tokens == 2000 and status.decode is not None
    assert "saving" in status.message and "$" in status.message
    # It is a valid part of the status the CRD describes; the patch names every field.
    LLMServiceStatus.model_validate({"recommendation": _as_status(status)})
    assert set(_as_status(status)) >= {"prefill", "decode", "costPerHour", "saving", "observed"}


def test_builtin_models_have_the_runtime_presets_shape() -> None:
    shape = service_shape(_spec({"builtin": "tiny"}, "cpu"))
    assert shape.layers == 2 and shape.hidden == 64


def test_a_model_of_unknown_shape_is_said_in_words() -> None:
    with pytest.raises(PlanInputError, match="shape is unknown"):
        recommend(_spec({"uri": "s3://bucket/model"}), SERVING, {}, "team/chat")


def test_no_traffic_is_said_in_words() -> None:
    with pytest.raises(PlanInputError, match="no traffic"):
        recommend(_spec({"uri": "hf://Qwen/Qwen3-0.6B"}),
                  {**SERVING, "arrival_rate": float("nan")}, {}, "team/chat")
