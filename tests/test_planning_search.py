"""`pdserve plan`'s search and command: the properties the issue names, the output schema, and
bad input refused with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pdserve.api.resource import LLMService
from pdserve.planning.catalog import Accelerator, default_catalog
from pdserve.planning.cli import main
from pdserve.planning.search import Candidate, Targets, candidates, pod_shapes
from pdserve.planning.shapes import KNOWN_SHAPES
from pdserve.planning.workload import BUILTIN_WORKLOADS

TARGETS = Targets(ttft_seconds=1.0, tpot_seconds=0.05, attainment=0.9)


def _catalog(*kinds: str) -> dict[str, Accelerator]:
    full = default_catalog()
    return {kind: full[kind] for kind in kinds}


def _best(model: str, workload: str, rate: float, catalog: dict[str, Accelerator],
          mode: str = "auto") -> Candidate:
    w = BUILTIN_WORKLOADS[workload]
    shapes = pod_shapes(catalog, KNOWN_SHAPES[model], "bfloat16", w)
    found = candidates(shapes, w, rate, TARGETS, mode, None)  # type: ignore[arg-type]
    assert found, f"no candidate for {model} {workload} at {rate}"
    return found[0]


def _prefill_chip_share(candidate: Candidate) -> float:
    d = candidate.deployment
    prefill = d.prefill.chips * d.prefill_replicas if d.prefill else 0
    return prefill / d.chips


def test_summarization_gives_prefill_a_larger_share_of_chips_than_story() -> None:
    h100 = _catalog("nvidia-h100")
    summarization = _best("llama-3.1-8b", "summarization", 20, h100, "disaggregated")
    story = _best("llama-3.1-8b", "story", 20, h100, "disaggregated")
    assert _prefill_chip_share(summarization) > _prefill_chip_share(story)


def test_decode_bound_work_picks_the_kind_with_cheaper_bandwidth() -> None:
    base = default_catalog()["nvidia-h100"]
    # Same compute and memory; `cheap-bw` sells bandwidth at half the price per TB/s.
    cheap = base.model_copy(update={"kind": "cheap-bw", "memory_tb_per_s": 3.0,
                                    "bf16_tflops": 400, "price_per_chip_hour": 4.0})
    dear = base.model_copy(update={"kind": "dear-bw", "memory_tb_per_s": 3.0,
                                   "bf16_tflops": 989, "price_per_chip_hour": 8.0})
    best = _best("llama-3.1-8b", "story", 10, {"cheap-bw": cheap, "dear-bw": dear})
    assert best.decode_shape.accelerator.kind == "cheap-bw"


def test_a_70b_model_gets_at_least_two_chips_per_pod_on_80gb_gpus() -> None:
    w = BUILTIN_WORKLOADS["story"]
    shapes = pod_shapes(_catalog("nvidia-h100", "nvidia-a100"), KNOWN_SHAPES["llama-3.1-70b"],
                        "bfloat16", w)
    assert shapes and min(s.perf.chips for s in shapes) >= 2
    best = _best("llama-3.1-70b", "story", 2, _catalog("nvidia-h100", "nvidia-a100"))
    assert best.decode_shape.perf.chips >= 2


@pytest.mark.parametrize("workload", ["summarization", "story", "agentic"])
def test_doubling_the_rate_never_lowers_the_cost_nor_more_than_doubles_it(workload: str) -> None:
    catalog = _catalog("nvidia-h100", "nvidia-l4")
    for rate in (1.0, 4.0, 16.0):
        once = _best("llama-3.1-8b", workload, rate, catalog)
        twice = _best("llama-3.1-8b", workload, 2 * rate, catalog)
        one_pod_per_role = once.decode_shape.cost_per_hour + (
            once.prefill_shape.cost_per_hour if once.prefill_shape else 0.0)
        assert once.cost_per_hour <= twice.cost_per_hour + 1e-9
        assert twice.cost_per_hour <= 2 * once.cost_per_hour + one_pod_per_role + 1e-9


PLAN = ["--model", "llama-3.1-8b", "--workload", "story", "--rate", "5", "--ttft-ms", "1000",
        "--tpot-ms", "50", "--catalog"]


@pytest.fixture()
def gpu_catalog(tmp_path: Path) -> str:
    path = tmp_path / "catalog.yaml"
    path.write_text("replace: true\naccelerators:\n- {kind: nvidia-h100}\n- {kind: tpu-v5e}\n")
    return str(path)


def test_json_output_has_the_documented_schema(gpu_catalog: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*PLAN, gpu_catalog, "--output", "json", "--growth", "1,2"]) == 0
    plan = json.loads(capsys.readouterr().out)
    first = plan["candidates"][0]
    assert set(first["prefill"]) == set(first["decode"]) == {"accelerator", "count", "replicas"}
    assert {"ttft_p90_ms", "tpot_p90_ms", "goodput_rps"} <= set(first["predicted"])
    assert first["predicted"]["ttft_p90_ms"] <= 1000 and first["predicted"]["goodput_rps"] >= 5
    assert first["cost_per_hour"] == min(c["cost_per_hour"] for c in plan["candidates"])
    assert [g["multiple"] for g in plan["growth"]] == [1, 2]
    assert plan["growth"][1]["cost_per_hour"] >= plan["growth"][0]["cost_per_hour"]


def test_yaml_output_is_an_llmservice_of_the_winner(gpu_catalog: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*PLAN, gpu_catalog, "--output", "yaml", "--name", "stories"]) == 0
    manifest = yaml.safe_load(capsys.readouterr().out)
    service = LLMService.model_validate(manifest)
    assert service.metadata["name"] == "stories" and service.spec.profile == "output-heavy"
    assert manifest["spec"]["model"]["source"] == {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"}


def test_table_output_names_the_binding_resource(gpu_catalog: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*PLAN, gpu_catalog]) == 0
    out = capsys.readouterr().out
    assert "decode pods" in out and "growth" in out
    assert any(word in out for word in ("decode bandwidth", "KV memory", "prefill compute"))


# Written beside the catalogue of each bad-input case; `{tmp}` in a flag's value is that folder.
MALFORMED_FILES = {
    "unclosed-workload.yaml": "input_tokens: {samples: [100, 200\n",
    "scalar-lengths-workload.yaml": "input_tokens: 100\noutput_tokens: 50\n",
    "unclosed-catalog.yaml": "accelerators: [{kind: nvidia-h100\n",
    "new-kind-catalog.yaml": "accelerators:\n- {kind: nvidia-b200, price_per_chip_hour: 9}\n",
}


@pytest.mark.parametrize(("change", "message"), [
    ({"--model": "gpt-17"}, "unknown model"),
    ({"--workload": "/nonexistent.yaml"}, "unknown workload"),
    ({"--workload": "{tmp}/unclosed-workload.yaml"},
     "not a readable YAML or JSON file (line 2, column 1: expected ',' or ']'"),
    ({"--workload": "{tmp}/scalar-lengths-workload.yaml"}, "input_tokens: Input should be"),
    ({"--catalog": "{tmp}/unclosed-catalog.yaml"},
     "not a readable YAML or JSON file (line 2, column 1: expected ',' or '}'"),
    ({"--catalog": "{tmp}/new-kind-catalog.yaml"},
     "accelerators[0] (nvidia-b200): an unknown kind (not one of nvidia-h100, "),
    ({"--rate": "-3"}, "--rate must be a positive"),
    ({"--rate": "fast"}, "invalid float"),
    ({"--ttft-ms": "1"}, "no configuration meets the targets: the best achievable p90 TTFT"),
    ({"--growth": "1,x"}, "--growth"),
    ({"--dtype": "float8", "--output": "yaml"}, "not float8"),
    ({"--name": "Bad_Name", "--output": "yaml"}, "DNS label"),
])
def test_bad_input_is_one_message_and_exit_code_2(
        gpu_catalog: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        change: dict[str, str], message: str) -> None:
    for name, text in MALFORMED_FILES.items():
        (tmp_path / name).write_text(text)
    args = dict(zip(PLAN[::2], [*PLAN[1::2], gpu_catalog], strict=True))
    args.update({flag: value.format(tmp=tmp_path) for flag, value in change.items()})
    assert main([part for pair in args.items() for part in pair]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""


def test_a_model_that_fits_no_pod_is_refused(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("replace: true\naccelerators:\n- {kind: nvidia-l4, chip_counts: [1]}\n")
    assert main(["--model", "llama-3.1-70b", "--workload", "story", "--rate", "1",
                 "--ttft-ms", "1000", "--tpot-ms", "50", "--catalog", str(catalog)]) == 2
    assert "fits no pod of the catalogue" in capsys.readouterr().err


def test_the_pdserve_command_dispatches_plan(capsys: pytest.CaptureFixture[str]) -> None:
    from pdserve.cli import main as pdserve

    assert pdserve(["plan", "--model", "nope"]) == 2
    assert "pdserve plan:" in capsys.readouterr().err
