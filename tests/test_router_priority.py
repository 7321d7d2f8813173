"""The router's priority queues (router/priority.py) as pure logic: strict order, the starvation
guard, shedding rules, bounded sizes, class selection; and the API/rendering of the classes."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from pdserve.api.roles import RouterSpec
from pdserve.router.priority import (
    ApiKeyTable,
    PriorityClass,
    PriorityConfig,
    PriorityConfigError,
    UnknownClass,
    build_config,
)
from pdserve.router.priority_queues import (
    Entry,
    PriorityGate,
    PriorityQueues,
    RequestShed,
    worker_slots,
)

HIGH = PriorityClass("high", 0, max_queue=4)
MID = PriorityClass("mid", 5, max_queue=4)
LOW = PriorityClass("low", 10, max_queue=4, ttft_target_seconds=None)


def queues(*classes: PriorityClass, capacity: int = 1, every: int = 10) -> PriorityQueues:
    state = PriorityQueues(build_config(list(classes or (HIGH, LOW)), starvation_guard_every=every))
    state.set_capacity(capacity)
    return state


def fill(state: PriorityQueues) -> None:
    while state.in_flight < state.capacity:
        assert state.offer(LOW, 0.0).admitted


def test_admits_at_once_while_slots_are_free():
    state = queues(capacity=2)
    assert state.offer(LOW, 0.0).admitted and state.offer(HIGH, 0.0).admitted
    offer = state.offer(HIGH, 0.0)
    assert not offer.admitted and offer.entry is not None and state.queued() == 1


def test_unknown_capacity_admits_everything():
    state = queues(capacity=0)
    assert all(state.offer(LOW, 0.0).admitted for _ in range(100))


def test_strict_priority_order_and_fifo_within_a_class():
    state = queues(HIGH, MID, LOW, capacity=1)
    fill(state)
    order = [state.offer(cls, float(i), token=f"{cls.name}{i}").entry
             for i, cls in enumerate([LOW, MID, LOW, HIGH, MID, HIGH])]
    admitted = []
    for _ in order:
        (entry,) = state.release()
        admitted.append(entry.token)
    assert admitted == ["high3", "high5", "mid1", "mid4", "low0", "low2"]


def test_starvation_guard_gives_the_oldest_low_one_of_every_n():
    state = queues(capacity=1, every=3)
    fill(state)
    low = [state.offer(LOW, float(i), token=f"low{i}").entry for i in range(3)]
    assert all(e is not None for e in low)
    admitted = []
    for _ in range(9):  # high requests keep arriving, one a slot
        state.offer(HIGH, 0.0, token="high")
        (entry,) = state.release()
        admitted.append(entry.token)
    # every third admission goes to the oldest waiting low request
    assert admitted == ["high", "high", "low0", "high", "high", "low1", "high", "high", "low2"]


def test_without_low_waiting_high_is_never_held_back():
    state = queues(capacity=1, every=2)
    fill(state)
    for _ in range(5):
        state.offer(HIGH, 0.0, token="high")
        assert [e.token for e in state.release()] == ["high"]


def test_low_is_shed_when_its_queue_is_full():
    state = queues(capacity=1)
    fill(state)
    for _ in range(LOW.max_queue):
        assert state.offer(LOW, 0.0).entry is not None
    offer = state.offer(LOW, 0.0)
    assert offer.shed is not None and offer.shed.reason == "queue_full"
    assert offer.shed.retry_after >= 1 and "'low'" in offer.shed.message
    assert state.queued() == LOW.max_queue


def test_low_is_shed_when_its_expected_wait_exceeds_its_ttft_target():
    low = PriorityClass("low", 10, max_queue=100, ttft_target_seconds=2.0)
    state = queues(HIGH, low, capacity=2)
    state.service_seconds = 1.0  # two slots, one second each: two queued ahead -> 1.5 s
    fill_with = [state.offer(low, 0.0) for _ in range(2)]
    assert all(o.admitted for o in fill_with)
    assert state.offer(low, 0.0).entry is not None  # 0.5 s
    assert state.offer(low, 0.0).entry is not None  # 1.0 s
    assert state.offer(low, 0.0).entry is not None  # 1.5 s
    assert state.offer(low, 0.0).entry is not None  # 2.0 s: not beyond
    offer = state.offer(low, 0.0)  # 2.5 s
    assert offer.shed is not None and offer.shed.reason == "ttft_target"
    assert offer.shed.retry_after == 3 and "TTFT target" in offer.shed.message
    # a high request is queued whatever the wait
    assert state.offer(HIGH, 0.0).entry is not None


def test_high_with_a_full_queue_evicts_the_newest_low_and_is_never_shed_while_low_queues():
    state = queues(capacity=1)
    fill(state)
    lows = [state.offer(LOW, float(i), token=f"low{i}").entry for i in range(LOW.max_queue)]
    for _ in range(HIGH.max_queue):
        assert state.offer(HIGH, 0.0).entry is not None
    evicted = []
    for _ in range(LOW.max_queue):
        offer = state.offer(HIGH, 0.0, token="high")
        assert offer.entry is not None and offer.shed is None
        evicted += [(e.token, shed.reason) for e, shed in offer.evicted]
    assert evicted == [(f"low{i}", "evicted") for i in reversed(range(LOW.max_queue))]
    assert lows  # all gone now: the next high request is shed itself (bounded memory)
    offer = state.offer(HIGH, 0.0)
    assert offer.shed is not None and offer.shed.reason == "queue_full"
    assert state.queued() <= HIGH.max_queue + LOW.max_queue


def test_bounded_under_any_sequence():
    state = queues(HIGH, MID, LOW, capacity=3, every=4)
    bound = HIGH.max_queue + MID.max_queue + LOW.max_queue
    classes = [HIGH, MID, LOW]
    for i in range(2000):
        state.offer(classes[(i * 7) % 3], float(i))
        if i % 5 == 0:
            state.release(0.5)
            state.in_flight = max(state.in_flight, 0)
        assert state.queued() <= bound
        assert state.in_flight <= state.capacity


def test_cancel_drops_a_queued_entry():
    state = queues(capacity=1)
    fill(state)
    entry = state.offer(LOW, 0.0).entry
    assert entry is not None and state.cancel(entry) and not state.cancel(entry)
    assert state.release() == [] and state.in_flight == 0


def test_worker_slots_are_its_batch_and_a_quarter_more():
    assert [worker_slots(n) for n in (0, 1, 2, 8, 256)] == [0, 2, 3, 10, 320]


def test_service_time_moves_toward_what_requests_hold():
    state = queues(capacity=1)
    fill(state)
    state.release(11.0)
    assert state.service_seconds == pytest.approx(2.0)


def test_class_selection_key_then_header_then_body_then_default():
    config = build_config([HIGH, LOW])
    config.api_keys.replace(ApiKeyTable.of({"sk-gold": "high", "sk-free": "low"}).digests)
    assert config.default_class == "low" and config.classes[0] == HIGH
    assert config.class_of({}, {}).name == "low"
    assert config.class_of({}, {"priority_class": "high"}).name == "high"
    assert config.class_of({"x-pdserve-priority-class": "high"},
                           {"priority_class": "low"}).name == "high"
    assert config.class_of({"Authorization": "Bearer sk-gold"}, {}).name == "high"
    # a key's class is not raised by the header
    assert config.class_of({"Authorization": "Bearer sk-free",
                            "x-pdserve-priority-class": "high"}, {}).name == "low"
    assert config.class_of({"Authorization": "Bearer other"}, {}).name == "low"
    with pytest.raises(UnknownClass, match="unknown priority class 'gold'"):
        config.class_of({"x-pdserve-priority-class": "gold"}, {})
    with pytest.raises(UnknownClass, match="must be a string"):
        config.class_of({}, {"priority_class": 3})


@pytest.mark.parametrize(("classes", "kwargs", "message"), [
    ([], {}, "at least one"),
    ([HIGH, PriorityClass("high", 3)], {}, "names must be unique"),
    ([HIGH, PriorityClass("x", 0)], {}, "priorities must be unique"),
    ([HIGH, LOW], {"default_class": "gold"}, "default priority class 'gold'"),
    ([HIGH, LOW], {"starvation_guard_every": 1}, "starvationGuardEvery"),
    ([HIGH, LOW], {"max_in_flight_per_worker": 0}, "maxInFlightPerWorker"),
])
def test_config_errors_are_clear(classes, kwargs, message):
    with pytest.raises(PriorityConfigError, match=message):
        build_config(classes, **kwargs)


def test_router_json_from_the_api_round_trips_without_the_secrets():
    spec = RouterSpec.model_validate({
        "priorityClasses": [{"name": "batch", "priority": 10},
                            {"name": "interactive", "priority": 0, "ttftTargetSeconds": 1.5,
                             "maxQueue": 32, "apiKeysSecretRef": {"name": "team-keys"}}],
        "defaultPriorityClass": "batch", "starvationGuardEvery": 5,
        "maxInFlightPerWorker": 8})
    assert spec.api_keys_secrets() == {"interactive": "team-keys"}
    rendered = json.dumps(spec.priority_config())
    assert "team-keys" not in rendered and "apiKeys" not in rendered  # mounted, not passed
    config = PriorityConfig.from_json(rendered)
    assert [c.name for c in config.classes] == ["interactive", "batch"]
    assert config.classes[0].ttft_target_seconds == 1.5 and config.classes[0].max_queue == 32
    assert config.default_class == "batch" and config.starvation_guard_every == 5
    assert config.max_in_flight_per_worker == 8
    assert RouterSpec().priority_config() is None and RouterSpec().api_keys_secrets() == {}


@pytest.mark.parametrize(("router", "message"), [
    ({"priorityClasses": [{"name": "a", "priority": 0}, {"name": "a", "priority": 1}]},
     "names must be unique"),
    ({"priorityClasses": [{"name": "a", "priority": 0}, {"name": "b", "priority": 0}]},
     "priorities must be unique"),
    ({"priorityClasses": [{"name": "a", "priority": 0}], "defaultPriorityClass": "b"},
     "defaultPriorityClass 'b' must name one of"),
    ({"priorityClasses": [{"name": "a", "priority": 0, "apiKeysSecretRef": {"name": "k"}},
                          {"name": "b", "priority": 1, "apiKeysSecretRef": {"name": "k"}}]},
     "each apiKeysSecretRef must name a different Secret"),
    ({"priorityClasses": [{"name": "a", "priority": 0, "apiKeysSecretRef": {"name": "K_1"}}]},
     "pattern"),
    ({"priorityClasses": [{"name": "a", "priority": 0, "apiKeysSecretRef": {}}]}, "name"),
    ({"priorityClasses": [{"name": "a", "priority": 0}], "apiKeys": {"k": "a"}},
     "Extra inputs"),  # keys live in Secrets only
    ({"maxInFlightPerWorker": 4}, "applies only with priorityClasses"),
    ({"priorityClasses": [{"name": "Not_A_Label", "priority": 0}]}, "pattern"),
    ({"priorityClasses": [{"name": "a", "priority": 0, "extra": 1}]}, "Extra inputs"),
    ({"priorityClasses": [{"name": "a", "priority": 0, "maxQueue": -1}]}, "greater than"),
])
def test_api_rejects_inconsistent_classes(router, message):
    with pytest.raises(ValidationError, match=message):
        RouterSpec.model_validate(router)


def test_crd_carries_the_cel_rules_for_classes():
    from pdserve.api.crd import custom_resource_definition

    schema = custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    router = schema["properties"]["spec"]["properties"]["router"]
    messages = [rule["message"] for rule in router["x-kubernetes-validations"]]
    for fragment in ("names must be unique", "priorities must be unique",
                     "defaultPriorityClass must name", "must name a different Secret"):
        assert any(fragment in m for m in messages), fragment
    item = router["properties"]["priorityClasses"]["items"]["properties"]
    assert item["maxQueue"]["default"] == 256 and "pattern" in item["name"]
    # bounded sizes keep the rules' estimated CEL cost within the apiserver's budget
    assert router["properties"]["priorityClasses"]["maxItems"] == 16
    assert "apiKeys" not in router["properties"]
    ref = item["apiKeysSecretRef"]
    assert ref["required"] == ["name"] and ref["properties"]["name"]["maxLength"] == 253


async def test_gate_wakes_waiters_in_priority_order_and_sheds_with_an_exception():
    gate = PriorityGate(build_config([HIGH, LOW]))
    gate.set_capacity(1)
    await gate.acquire(LOW)  # holds the only slot
    order: list[str] = []

    async def request(cls: PriorityClass) -> None:
        try:
            await gate.acquire(cls)
        except RequestShed as exc:
            order.append(f"shed-{cls.name}-{exc.shed.reason}")
            return
        order.append(cls.name)
        await asyncio.sleep(0)
        gate.release(0.01)

    tasks = [asyncio.create_task(request(cls)) for cls in [LOW, LOW, HIGH]]
    await asyncio.sleep(0.01)
    cancelled = asyncio.create_task(request(LOW))
    await asyncio.sleep(0.01)
    cancelled.cancel()  # a client that leaves while queued frees its place
    await asyncio.sleep(0.01)
    gate.release(0.01)
    await asyncio.gather(*tasks)
    assert order == ["high", "low", "low"]
    assert gate.state.in_flight == 0 and gate.state.queued() == 0


def router_pod(router: dict) -> dict:
    from pdserve.api import LLMServiceSpec
    from pdserve.controller.context import Owner
    from pdserve.controller.render import render_children

    spec = LLMServiceSpec.model_validate({"model": {"source": {"builtin": "tiny"}},
                                          "router": router})
    children = render_children(spec, Owner("chat", "ns", "uid"), "img:1", None)
    (deployment,) = [c for c in children if c["kind"] == "Deployment"
                     and c["metadata"]["name"] == "chat-router"]
    pod: dict = deployment["spec"]["template"]["spec"]
    return pod


def test_operator_renders_the_classes_into_the_router_command_line():
    from pdserve.router.cli import parser

    plain = router_pod({})
    assert "--priority-classes" not in plain["containers"][0]["command"]  # as before
    assert [v["name"] for v in plain["volumes"]] == ["tmp", "cache"]
    command = router_pod({
        "priorityClasses": [{"name": "interactive", "priority": 0, "ttftTargetSeconds": 2},
                            {"name": "batch", "priority": 10, "maxQueue": 64}],
        "maxInFlightPerWorker": 16})["containers"][0]["command"]
    assert "--api-keys-dir" not in command  # no class names a Secret
    args = parser().parse_args(command[2:])  # the router's own parser takes it
    config = PriorityConfig.from_json(args.priority_classes)
    assert [c.name for c in config.classes] == ["interactive", "batch"]
    assert config.default_class == "batch" and config.max_in_flight_per_worker == 16


def test_operator_mounts_each_classs_key_secret_for_the_router():
    from pdserve.controller.names import API_KEYS_DIR
    from pdserve.router.cli import parser

    pod = router_pod({"priorityClasses": [
        {"name": "interactive", "priority": 0, "apiKeysSecretRef": {"name": "team-keys"}},
        {"name": "standard", "priority": 5},
        {"name": "batch", "priority": 10, "apiKeysSecretRef": {"name": "batch-keys"}}]})
    (container,) = pod["containers"]
    args = parser().parse_args(container["command"][2:])
    assert str(args.api_keys_dir) == API_KEYS_DIR
    assert "team-keys" not in " ".join(container["command"])
    secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"api-keys-0": {"secretName": "team-keys", "defaultMode": 0o440},
                       "api-keys-1": {"secretName": "batch-keys", "defaultMode": 0o440}}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["api-keys-0"] == {"name": "api-keys-0", "readOnly": True,
                                    "mountPath": f"{API_KEYS_DIR}/interactive"}
    assert mounts["api-keys-1"]["mountPath"] == f"{API_KEYS_DIR}/batch"
    assert mounts["api-keys-1"]["readOnly"] is True
    # without a key Secret the pod mounts nothing more and the router gets no directory
    assert "--api-keys-dir" not in router_pod({"priorityClasses": [
        {"name": "a", "priority": 0}]})["containers"][0]["command"]


async def test_gate_evicting_a_low_request_whose_client_left_is_harmless():
    config = build_config([PriorityClass("high", 0, max_queue=0), PriorityClass("low", 10, 1)])
    gate = PriorityGate(config)
    gate.set_capacity(1)
    await gate.acquire(config.lowest)
    # a queued low request whose client just left: its future is cancelled, its handler has
    # not yet taken it out of the queue
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    gone.cancel()
    gate.state.queues["low"].append(Entry(config.lowest, 0.0, gone))
    high = asyncio.create_task(gate.acquire(config.classes[0]))  # evicts it: no error
    await asyncio.sleep(0.01)
    assert not high.done() and gate.state.queued() == 1
    gate.release(0.01)
    await asyncio.wait_for(high, 1)
    gate.release(0.01)
    assert gate.state.in_flight == 0 and gate.state.queued() == 0
