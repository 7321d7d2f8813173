"""The simulator's synthetic trace of a `pdserve plan` workload: the workload's rate, lengths,
arrival variability and prefix hits, the same for the same seed."""

import itertools
import statistics
from dataclasses import replace

from pdserve.planning.sim.workload_trace import workload_trace
from pdserve.planning.workload import BUILTIN_WORKLOADS

SUMMARIZATION = BUILTIN_WORKLOADS["summarization"]
AGENTIC = BUILTIN_WORKLOADS["agentic"]


def test_the_trace_has_the_workload_s_rate_and_lengths() -> None:
    trace = workload_trace(SUMMARIZATION, 20.0, 200.0, seed=3)
    requests = trace.requests
    assert len(requests) == 4000
    assert abs(requests[-1].arrival / 200.0 - 1) < 0.1
    assert all(a.arrival <= b.arrival for a, b in itertools.pairwise(requests))
    prompts = statistics.fmean(r.prompt for r in requests)
    outputs = statistics.fmean(r.output for r in requests)
    assert abs(prompts / SUMMARIZATION.input_tokens.mean - 1) < 0.05
    assert abs(outputs / SUMMARIZATION.output_tokens.mean - 1) < 0.05
    assert trace.prefix_hit() == 0 and all(r.session == -1 for r in requests)


def test_the_same_seed_gives_the_same_trace_and_another_seed_another() -> None:
    def key(seed: int) -> list[tuple[float, int, int, int]]:
        trace = workload_trace(AGENTIC, 5.0, 120.0, seed)
        return [(r.arrival, r.prompt, r.output, r.shared_prefix) for r in trace.requests]

    assert key(1) == key(1)
    assert key(1) != key(2)


def test_sessions_repeat_the_workload_s_share_of_prompt_tokens() -> None:
    trace = workload_trace(AGENTIC, 20.0, 200.0, seed=0)
    assert abs(trace.prefix_hit() - AGENTIC.prefix_hit) < 0.02
    turns: dict[int, list[int]] = {}
    for r in trace.requests:
        turns.setdefault(r.session, []).append(r.prompt)
        assert r.shared_prefix <= r.prompt
    # Contexts grow turn by turn, as an agent's history does.
    assert all(prompts == sorted(prompts) for prompts in turns.values())


def test_bursty_arrivals_have_the_burst_factor_as_their_variability() -> None:
    bursty = replace(SUMMARIZATION, arrival_scv=4.0)
    requests = workload_trace(bursty, 50.0, 400.0, seed=0).requests
    gaps = [b.arrival - a.arrival for a, b in itertools.pairwise(requests)]
    scv = statistics.pvariance(gaps) / statistics.fmean(gaps) ** 2
    assert abs(scv - 4.0) < 0.6
    assert abs(len(requests) / requests[-1].arrival / 50.0 - 1) < 0.1
