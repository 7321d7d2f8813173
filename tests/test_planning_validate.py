"""`pdserve plan` checks its cheapest candidates in the simulator: a candidate the model
judges too kindly drops below the ones that meet the targets; the JSON carries the simulated
attainment; `--no-simulate` skips it; a seed fixes it."""

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pdserve.planning.catalog import default_catalog
from pdserve.planning.cli import main
from pdserve.planning.perf import replica_perf
from pdserve.planning.predict import predict
from pdserve.planning.search import Candidate, PodShape, Targets, size_disaggregated
from pdserve.planning.shapes import KNOWN_SHAPES
from pdserve.planning.validate import validate
from pdserve.planning.workload import BUILTIN_WORKLOADS

TARGETS = Targets(ttft_seconds=1.0, tpot_seconds=0.05, attainment=0.9)
SUMMARIZATION = BUILTIN_WORKLOADS["summarization"]
RATE = 20.0
H100 = default_catalog()["nvidia-h100"]
SHAPE = PodShape(H100, replica_perf(H100, KNOWN_SHAPES["llama-3.1-8b"], "bfloat16", 1))


def _sized() -> Candidate:
    deployment = size_disaggregated(SHAPE, SHAPE, 0, SUMMARIZATION, RATE, TARGETS,
                                    float("inf"))
    assert deployment is not None and deployment.prefill_replicas >= 2
    prediction = predict(deployment, SUMMARIZATION, RATE, TARGETS.ttft_seconds,
                         TARGETS.tpot_seconds)
    return Candidate(deployment, SHAPE, SHAPE, prediction)


def test_a_candidate_the_model_is_optimistic_about_is_ranked_below_one_that_meets() -> None:
    sized = _sized()
    # The model's figures kept, one prefill pod for the whole rate: cheaper, and it claims to
    # meet the targets.
    optimistic = replace(sized, deployment=replace(sized.deployment, prefill_replicas=1))
    assert optimistic.cost_per_hour < sized.cost_per_hour
    assert optimistic.prediction.attainment >= TARGETS.attainment

    validation = validate([optimistic, sized], SUMMARIZATION, RATE, TARGETS, seed=0)

    [first], [last] = validation.meeting, validation.missing
    assert first.candidate is sized and last.candidate is optimistic
    assert first.simulated_attainment is not None
    assert first.simulated_attainment >= TARGETS.attainment
    assert last.simulated_attainment is not None
    assert last.simulated_attainment < TARGETS.attainment
    assert validation.trace.requests > 1000


def test_the_same_seed_gives_the_same_simulated_attainment() -> None:
    sized = _sized()
    runs = [validate([sized], BUILTIN_WORKLOADS["agentic"], RATE, TARGETS, seed)
            for seed in (5, 5, 6)]
    attainments = [(run.meeting + run.missing)[0].simulated_attainment for run in runs]
    assert attainments[0] == attainments[1]
    assert runs[0].trace == runs[1].trace != runs[2].trace


@pytest.fixture
def small_catalog(tmp_path: Path) -> Path:
    """Two kinds of one-chip pods: a quick search with aggregated and P/D candidates."""
    path = tmp_path / "catalog.yaml"
    path.write_text("replace: true\naccelerators:\n- {kind: nvidia-h100, chip_counts: [1]}\n"
                    "- {kind: nvidia-l4, chip_counts: [1]}\n")
    return path


def _plan(capsys: pytest.CaptureFixture[str], catalog: Path, *extra: str) -> dict[str, Any]:
    assert main(["--model", "llama-3.1-8b", "--workload", "agentic", "--rate", "10",
                 "--ttft-ms", "1000", "--tpot-ms", "50", "--catalog", str(catalog),
                 "--output", "json", *extra]) == 0
    plan: dict[str, Any] = json.loads(capsys.readouterr().out)
    return plan


def test_json_carries_the_simulated_attainment_and_the_trace(
        capsys: pytest.CaptureFixture[str], small_catalog: Path) -> None:
    plan = _plan(capsys, small_catalog, "--seed", "3")
    simulated = [c for c in plan["candidates"]
                 if c["predicted"]["simulated_attainment"] is not None]
    assert simulated and all(c["disaggregated"] and not c["short_prompt_threshold"]
                             for c in simulated)
    assert all(0 <= c["predicted"]["simulated_attainment"] <= 1 for c in simulated)
    aggregated = [c for c in plan["candidates"] if not c["disaggregated"]]
    assert aggregated and all(c["predicted"]["simulated_attainment"] is None
                              for c in aggregated)
    assert plan["simulation"]["seed"] == 3 and plan["simulation"]["requests"] > 1000
    # Cheapest first among those meeting the targets; the simulator's misses after them.
    simulated_attainments = [c["predicted"]["simulated_attainment"] for c in plan["candidates"]]
    met = [a is None or a >= 0.9 for a in simulated_attainments]
    assert met == sorted(met, reverse=True)
    meeting = [c["cost_per_hour"] for c, ok in zip(plan["candidates"], met, strict=True) if ok]
    assert meeting == sorted(meeting)
    assert plan == _plan(capsys, small_catalog, "--seed", "3")


def test_no_simulate_ranks_by_the_model_alone(capsys: pytest.CaptureFixture[str],
                                              small_catalog: Path) -> None:
    plan = _plan(capsys, small_catalog, "--no-simulate")
    assert plan["simulation"] is None
    assert all(c["predicted"]["simulated_attainment"] is None for c in plan["candidates"])
    costs = [c["cost_per_hour"] for c in plan["candidates"]]
    assert costs == sorted(costs)


def test_the_table_has_a_simulated_column_unless_skipped(capsys: pytest.CaptureFixture[str],
                                                         small_catalog: Path) -> None:
    args = ["--model", "llama-3.1-8b", "--workload", "story", "--rate", "5", "--ttft-ms",
            "1000", "--tpot-ms", "50", "--catalog", str(small_catalog)]
    assert main(args) == 0
    simulated = capsys.readouterr().out
    assert "sim attain" in simulated.splitlines()[2] and "request trace" in simulated
    assert main([*args, "--no-simulate"]) == 0
    assert "sim attain" not in capsys.readouterr().out
