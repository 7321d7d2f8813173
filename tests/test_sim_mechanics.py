"""The simulator's mechanics on small traces: requests flow, budgets and drains are accounted,
the observer behaves like Prometheus (lag, NaN averages, lingering series, outages)."""

import math
from dataclasses import replace

from bench.sim.perf import PROFILES
from bench.sim.scenarios import DEPLOYMENTS, planner_config
from pdserve.planning.sim.cluster import SimConfig, Simulation
from pdserve.planning.sim.observer import Observer, ObserverConfig
from pdserve.planning.sim.pods import DecodePod
from pdserve.planning.sim.policies import PlannerPolicy, StaticPolicy
from pdserve.planning.sim.report import report, slo_ratio
from pdserve.planning.sim.traces import Request, Trace, build_trace

PERF = PROFILES["h100-llama8b"]


def config(**overrides):
    values = dict(perf=PERF, budget=4, ttft_target=1.0, itl_target=0.05, pool_accelerators=6,
                  observer=ObserverConfig(noise=0.0), tail=120.0)
    values.update(overrides)
    return SimConfig(**values)


def tiny_trace(n=40, gap=0.5, prompt=500, output=50):
    return Trace("tiny", n * gap, [Request(i, i * gap, prompt, output, "story")
                                   for i in range(n)])


def test_every_request_finishes_with_consistent_timestamps():
    trace = tiny_trace()
    sim = Simulation(trace, config(), StaticPolicy(2, 2), (2, 2), warm=True).run()
    for r in trace.requests:
        assert r.arrival <= r.first_token <= r.finish
        assert not r.aborted
    assert report(sim, "static").attainment == 1.0


def test_decode_step_time_matches_the_model_for_a_lone_request():
    trace = tiny_trace(n=1, output=101)
    Simulation(trace, config(), StaticPolicy(1, 1), (1, 1), warm=True).run()
    r = trace.requests[0]
    tpot = (r.finish - r.first_token) / 100
    lone_step = PERF.decode_step_seconds(1, 600)
    transfer = PERF.kv_transfer_seconds(500) / 100
    assert math.isclose(tpot, lone_step + transfer, rel_tol=0.05)


def test_decode_pod_batches_and_reserves_kv():
    pod = DecodePod(0, 0.0, PERF)
    pod.state = "ready"
    for i in range(3):
        pod.admit(Request(i, 0.0, 100, 10 + i, "story"))
    assert len(pod.running) == 3 and pod.kv_reserved == 3 * 100 + 10 + 11 + 12
    when = pod.next_event_time()
    pod.sync(when)
    assert [r.id for r in pod.pop_finished()] == [0]
    assert pod.generation_tokens == 27  # 9 steps x 3 sequences


def test_no_ready_pod_means_requests_wait_for_startup():
    trace = tiny_trace(n=5)
    Simulation(trace, config(), StaticPolicy(1, 1), (1, 1), warm=False).run()
    assert min(r.first_token for r in trace.requests) >= PERF.startup_seconds


def test_accelerator_hours_count_every_allocated_pod():
    trace = tiny_trace(n=4)
    sim = Simulation(trace, config(), StaticPolicy(1, 2), (1, 2), warm=True).run()
    assert math.isclose(sim.accelerator_seconds, 3 * trace.duration)
    assert sim.over_budget_seconds == 0


def test_scale_down_drains_without_aborting_and_counts_drain_time():
    trace = tiny_trace(n=20, gap=0.2, output=400)
    sim = Simulation(trace, config(), StaticPolicy(1, 3), (1, 3), warm=True)
    sim.push(3.0, lambda: sim.set_replicas(1, 1))
    sim.run()
    assert sim.aborted == 0
    assert all(not math.isnan(r.finish) for r in trace.requests)
    assert sim.accelerator_seconds > 2 * trace.duration  # drained pods still held accelerators


def test_drain_past_grace_period_aborts_and_is_reported():
    trace = tiny_trace(n=4, output=3000)
    sim = Simulation(trace, config(drain_grace=5.0), StaticPolicy(1, 1), (1, 1), warm=True)
    sim.push(3.0, lambda: sim.set_replicas(1, 0))
    sim.run()
    assert sim.aborted > 0
    assert report(sim, "x").aborted == sim.aborted


def test_observer_lag_nan_averages_lingering_series_and_outage():
    obs = Observer(ObserverConfig(noise=0.0, lag=5.0, outages=((100.0, 200.0),)), seed=0)
    pod = DecodePod(0, 0.0, PERF)
    pod.state = "ready"
    for t in (0.0, 15.0, 30.0):
        pod.generation_tokens = 100.0 * t
        obs.scrape(t, [pod], (0.0, 0.0, 0.0, 0.0, 0.0))
    snap = obs.snapshot(31.0)  # sees samples up to t=26 only
    assert math.isclose(snap.decode.token_rate, 100.0)
    assert math.isnan(snap.prefill.token_rate)  # no prefill series at all
    assert math.isnan(snap.decode.latency_seconds)  # no completions in the window
    pod.state = "gone"
    obs.scrape(45.0, [pod], (0.0, 0.0, 0.0, 0.0, 0.0))
    assert obs.snapshot(60.0).decode.running == 0.0  # the gone pod's gauge lingers
    assert obs.snapshot(150.0) is None


def test_traces_are_deterministic_and_open_loop():
    dep = DEPLOYMENTS["h100-llama8b"]
    def build(seed):
        return build_trace("t", 120.0, lambda t: 5.0, lambda t: (0.3, 0.3, 0.4), seed)
    a, b = build(7), build(7)
    assert [(r.arrival, r.prompt, r.output) for r in a.requests] == [
        (r.arrival, r.prompt, r.output) for r in b.requests]
    turns = [r for r in a.requests if r.kind == "agentic"]
    assert turns and any(r.shared_prefix > 0 for r in turns)
    assert dep.budget > 0


def test_planner_in_the_loop_stays_within_budget_and_never_acts_on_nan():
    dep = DEPLOYMENTS["h100-llama8b"]
    trace = build_trace("small", 300.0, lambda t: 20.0 if t < 150 else 40.0,
                        lambda t: (0.5, 0.5, 0.0), seed=3)
    cfg = config(budget=dep.budget, pool_accelerators=dep.budget * 2)
    policy = PlannerPolicy(planner_config(dep))
    sim = Simulation(trace, cfg, policy, (2, 2), warm=True).run()
    result = report(sim, "planner", policy.actions_on_nan)
    assert result.over_budget_accelerator_seconds == 0
    assert result.actions_on_nan == 0 and result.aborted == 0
    assert sim.peak_allocated <= dep.budget


def test_slo_ratio_counts_unfinished_requests_as_misses():
    r = Request(0, 0.0, 10, 10, "story")
    assert math.isinf(slo_ratio(r, 1.0, 0.05))
    r.first_token, r.finish = 0.5, 0.5 + 9 * 0.01
    assert math.isclose(slo_ratio(r, 1.0, 0.05), 0.5)


def test_prefill_pods_of_their_own_shape_hand_over_on_the_slower_link():
    prefill = replace(PERF, name="slow-prefill", peak_flops=PERF.peak_flops / 4,
                      kv_link_bandwidth=PERF.kv_link_bandwidth / 10)
    trace = tiny_trace(n=1, output=2)
    Simulation(trace, config(prefill_perf=prefill), StaticPolicy(1, 1), (1, 1), warm=True).run()
    r = trace.requests[0]
    assert math.isclose(r.first_token - r.arrival, prefill.prefill_seconds(500, 500 * 250),
                        rel_tol=1e-9)
    handoff_and_step = prefill.kv_transfer_seconds(500) + PERF.decode_step_seconds(1, 501)
    assert math.isclose(r.finish - r.first_token, handoff_and_step, rel_tol=1e-9)


def test_dynamo_10528_trace_swings_between_1_and_24_requests_a_second():
    from bench.sim.experiment import trace_for

    trace = trace_for("h100-llama8b-10528", "dynamo-10528", 14)
    assert {(r.prompt, r.output) for r in trace.requests} == {(8000, 1000)}
    trough = sum(1 for r in trace.requests if r.arrival < 60) / 60
    crest = sum(1 for r in trace.requests if 420 <= r.arrival < 480) / 60
    assert trough < 3 and 20 < crest < 28


def test_proportional_clamp_shrinks_both_roles_to_the_budget():
    from pdserve.planning.sim.policies import ProportionalClampPolicy

    policy = ProportionalClampPolicy(10_000, lambda context: 1_000.0, budget=12, max_replicas=11)
    assert policy.clamp(4, 6) == (4, 6)  # fits: unchanged
    assert policy.clamp(8, 16) == (4, 8)  # 24 wanted, scale 0.5 each
    assert policy.clamp(20, 2) == (10, 2)  # prefill leaves a decode replica; decode the rest
