"""The pieces of `pdserve plan`'s model: shapes, catalogue, workloads, replica performance and
queueing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pdserve.planning.catalog import default_catalog, load_catalog
from pdserve.planning.perf import replica_perf
from pdserve.planning.predict import Deployment, _erlang_c, _queue, predict
from pdserve.planning.shapes import KNOWN_SHAPES, PlanInputError, resolve_shape
from pdserve.planning.workload import BUILTIN_WORKLOADS, load_workload

CATALOG = default_catalog()
LLAMA_8B = KNOWN_SHAPES["llama-3.1-8b"]


@pytest.mark.parametrize(("name", "billions"), [
    ("qwen2.5-0.5b", 0.49), ("qwen3-0.6b", 0.60), ("llama-3.2-1b", 1.24),
    ("llama-3.1-8b", 8.03), ("qwen3-32b", 32.8), ("llama-3.1-70b", 70.6),
])
def test_known_shapes_have_their_published_parameter_counts(name: str, billions: float) -> None:
    assert KNOWN_SHAPES[name].params / 1e9 == pytest.approx(billions, rel=0.03)


def test_kv_bytes_per_token_follow_grouped_query_attention() -> None:
    # 32 layers x 8 KV heads x 128 dims x (K and V) x 2 bytes = 128 KiB.
    assert LLAMA_8B.kv_bytes_per_token("bfloat16") == 131072


def test_a_model_directory_is_read_from_its_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({
        "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000,
        "tie_word_embeddings": True}))
    shape = resolve_shape(str(tmp_path))
    assert (shape.layers, shape.head_dim, shape.kv_heads) == (2, 16, 2)
    assert shape.hf_repo is None and shape.name == str(tmp_path.resolve())


def test_a_config_without_layers_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64,
                                                           "num_attention_heads": 4}))
    with pytest.raises(PlanInputError, match="num_hidden_layers"):
        resolve_shape(str(tmp_path))


def test_the_default_catalogue_is_the_api_table_with_prices() -> None:
    h100 = CATALOG["nvidia-h100"]
    assert (h100.bf16_tflops, h100.memory_gb, h100.chip_counts) == (989, 80, (1, 2, 4, 8))
    # TPU pods of one chip: what the runtime serves on XLA today.
    assert CATALOG["tpu-v5e"].chip_counts == (1,)
    assert all(a.price_per_chip_hour > 0 for a in CATALOG.values())


def test_a_catalogue_file_overrides_fields_and_adds_kinds(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("accelerators:\n"
                    "- {kind: nvidia-h100, price_per_chip_hour: 2.5}\n"
                    "- {kind: mi300x, family: gpu, bf16_tflops: 1307, memory_tb_per_s: 5.3,\n"
                    "   memory_gb: 192, link_gb_per_s: 448, network_gb_per_s: 50,\n"
                    "   chip_counts: [1, 8], price_per_chip_hour: 6}\n")
    catalog = load_catalog(path)
    assert catalog["nvidia-h100"].price_per_chip_hour == 2.5
    assert catalog["nvidia-h100"].memory_gb == 80
    assert catalog["mi300x"].memory_gb == 192 and "tpu-v5e" in catalog


@pytest.mark.parametrize(("text", "message"), [
    ("accelerators: 3\n", "must be a list"),
    ("accelerators:\n- {kind: new-kind, family: gpu}\n", "bf16_tflops"),
    ("accelerators:\n- {kind: nvidia-h100, memory_gb: -1}\n", "memory_gb"),
    ("{{{", "not a readable"),
])
def test_a_malformed_catalogue_names_the_fault(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    with pytest.raises(PlanInputError, match=message):
        load_catalog(path)


def test_builtin_workloads_have_their_shapes() -> None:
    summarization, story = BUILTIN_WORKLOADS["summarization"], BUILTIN_WORKLOADS["story"]
    assert summarization.input_tokens.mean == pytest.approx(3000, rel=0.05)
    assert story.output_tokens.mean > 5 * summarization.output_tokens.mean
    assert BUILTIN_WORKLOADS["agentic"].prefix_hit > 0.5


def test_a_workload_file_with_buckets_and_bursts(tmp_path: Path) -> None:
    path = tmp_path / "chat.yaml"
    path.write_text("input_tokens: {buckets: [{le: 100, weight: 1}, {le: 300, weight: 1}]}\n"
                    "output_tokens: {samples: [10, 30]}\n"
                    "arrival: {pattern: bursty, burst_factor: 4}\n"
                    "priorities: [{name: interactive, share: 1}, {name: batch, share: 3}]\n")
    workload = load_workload(str(path))
    assert workload.input_tokens.mean == pytest.approx((50.5 + 200) / 2)
    assert workload.output_tokens.mean == 20 and workload.arrival_scv == 4
    assert [p.share for p in workload.priorities] == [0.25, 0.75]


@pytest.mark.parametrize(("text", "message"), [
    ("input_tokens: {samples: [10]}\n", "output_tokens"),
    ("input_tokens: {samples: [0]}\noutput_tokens: {samples: [1]}\n", "token counts"),
    ("input_tokens: {samples: [1], lognormal: {mean: 3, sigma: 1}}\n"
     "output_tokens: {samples: [1]}\n", "exactly one"),
    ("input_tokens: {samples: [1]}\noutput_tokens: {samples: [1]}\nprefix_hit: 1.5\n",
     "prefix_hit"),
    ("input_tokens: {samples: [1]}\noutput_tokens: {samples: [1]}\nspeed: 3\n", "speed"),
])
def test_a_malformed_workload_names_the_fault(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(text)
    with pytest.raises(PlanInputError, match=message):
        load_workload(str(path))


def test_erlang_c_matches_its_closed_forms() -> None:
    assert _erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    # M/M/2 at offered 1: C = 1/3.
    assert _erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert 0 < _erlang_c(2000, 1900.0) < 1  # large pools stay finite


def test_tensor_parallel_pods_hold_more_kv_and_step_faster() -> None:
    one = replica_perf(CATALOG["nvidia-h100"], LLAMA_8B, "bfloat16", 1)
    four = replica_perf(CATALOG["nvidia-h100"], LLAMA_8B, "bfloat16", 4)
    assert four.kv_capacity_tokens() > 4 * one.kv_capacity_tokens()
    assert four.decode_step_seconds(32, 32_000) < one.decode_step_seconds(32, 32_000)
    assert four.all_reduce_seconds(32) > 0 == one.all_reduce_seconds(32)


def test_cpu_pods_compute_in_float32() -> None:
    perf = replica_perf(CATALOG["cpu"], KNOWN_SHAPES["qwen3-0.6b"], "bfloat16", 1)
    assert perf.dtype == "float32"


def test_latency_grows_with_the_rate_until_the_pool_saturates() -> None:
    h100 = replica_perf(CATALOG["nvidia-h100"], LLAMA_8B, "bfloat16", 1)
    workload = BUILTIN_WORKLOADS["summarization"]
    deployment = Deployment(h100, 2, h100, 1)
    low, high = (predict(deployment, workload, rate, 1.0, 0.05) for rate in (1.0, 6.0))
    assert low.ttft_p90 < high.ttft_p90 and low.attainment >= high.attainment
    saturated = predict(deployment, workload, 100.0, 1.0, 0.05)
    assert not saturated.feasible and saturated.binding == "prefill compute"
    assert math.isinf(saturated.ttft_p90)


def test_kv_transfer_counts_in_disaggregated_ttft() -> None:
    h100 = replica_perf(CATALOG["nvidia-h100"], LLAMA_8B, "bfloat16", 1)
    workload = BUILTIN_WORKLOADS["summarization"]
    both = predict(Deployment(None, 0, h100, 3), workload, 0.5, 1.0, 0.05)
    split = predict(Deployment(h100, 2, h100, 1), workload, 0.5, 1.0, 0.05)
    # A 3,000-token KV of Llama-3.1-8B is 393 MB: ~180 ms over pdserve's TCP transport.
    assert split.ttft_p50 - both.ttft_p50 > 0.1


def test_priority_classes_wait_less_than_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("input_tokens: {lognormal: {mean: 3000, sigma: 0.3}}\n"
                    "output_tokens: {samples: [100]}\n"
                    "priorities: [{name: interactive, share: 1}, {name: batch, share: 1}]\n")
    workload = load_workload(str(path))
    h100 = replica_perf(CATALOG["nvidia-h100"], LLAMA_8B, "bfloat16", 1)
    queue = _queue(8.0, [(1.0, 0.2)], 2, workload)
    assert queue is not None and queue.scales[0] < queue.scales[1]
    assert predict(Deployment(h100, 2, h100, 1), workload, 8.0, 1.0, 0.05).feasible
