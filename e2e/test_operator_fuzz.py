"""LLMService specs generated from the CRD's own OpenAPI schema (e2e/spec_fuzz.py), created on the
real apiserver with the operator running (as install.yaml's ServiceAccount): each one is either
refused by the apiserver with a message, or reconciled by the operator to a status with a Ready
condition carrying a reason and a message (Ready or not), or to Degraded with a message (children
the apiserver refused: the operator then keeps observedGeneration where it was, by design). Never
an operator exit, a traceback in its log, or an accepted spec left without such a status.

Deterministic: a fixed seed ($PDSERVE_FUZZ_SEED) draws the same specs on every run.
$PDSERVE_FUZZ_SPECS (default 500) sets how many, $PDSERVE_FUZZ_BUDGET_S the time after which no
more are created (the test then fails, saying how far it got). Prints the figures (and writes
them to bench/out/operator_fuzz.json). Found so far: status writes of LLMServices deleted during a
pass logged tracebacks (tests/test_controller_sync_deleted.py), and a character beyond U+FFFF
anywhere in a spec failed every child's server-side apply
(tests/test_controller_kube_apply_body.py).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster.node.identity import TAINT as REAL_NODE_TAINT
from e2e.cluster.session import Cluster
from e2e.operator_harness import (
    OPERATOR,
    ROOT,
    SYSTEM_NAMESPACE,
    Api,
    OperatorProcess,
    condition,
    install_manifests,
    llmservice_manifest,
    running_operator,
    service_account_kubeconfig,
    wait_until,
)
from e2e.spec_fuzz import MINIMAL, generate
from pdserve.api.resource import GROUP, PLURAL, VERSION

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SPECS = int(os.environ.get("PDSERVE_FUZZ_SPECS", "500"))
SEED = int(os.environ.get("PDSERVE_FUZZ_SEED", "20261207"))
# About 200-400 s on the 2-core machine (load average 5-15): the budget leaves room for a
# busier one, and bounds a run whose operator slowed down.
BUDGET_S = float(os.environ.get("PDSERVE_FUZZ_BUDGET_S", "900"))
# An accepted LLMService without a status of its generation this long after its creation is stuck.
RECONCILE_BOUND_S = float(os.environ.get("PDSERVE_FUZZ_RECONCILE_S", "120"))
# Accepted LLMServices alive at once: created as others are deleted, so the cluster stays small.
IN_FLIGHT = 40
CREATE_CHUNK = 20
CREATORS = 6
# A reconciled LLMService stays this long (or until Ready) so some pods become ready on KWOK.
HOLD_S = 6.0
POLL_S = 1.0
# The pods all LLMServices of the test may have at once (replicas go up to 1,000 a role): the
# rest of a Deployment's pods are refused by the quota, which its ReplicaFailure reports.
POD_QUOTA = 150
# About half the fixed seed's specs are accepted; below this the mix no longer exercises the
# operator (e.g. a CRD change made most mutants invalid) and the generator needs a look.
MIN_ACCEPTED_SHARE = 0.2
LABEL = "pdserve.dev/fuzz"


def off_the_real_node(spec: Any) -> Any:
    """The spec without tolerations of the local cluster's real-node taint (an empty key with
    Exists tolerates every taint): its pods would run the image there, beside the tests that
    need that node. Everything else stays as drawn."""
    if isinstance(spec, list):
        return [off_the_real_node(item) for item in spec]
    if not isinstance(spec, dict):
        return spec
    kept = {key: off_the_real_node(value) for key, value in spec.items()}
    if isinstance(kept.get("tolerations"), list):
        kept["tolerations"] = [
            item for item in kept["tolerations"]
            if not isinstance(item, dict) or not (
                item.get("key") == REAL_NODE_TAINT["key"]
                or (not item.get("key") and item.get("operator") == "Exists"))]
    return kept


@dataclass
class Tally:
    generated: int = 0
    generate_s: float = 0.0
    refused: int = 0
    refused_without_message: list[str] = field(default_factory=list)
    unexpected_errors: list[str] = field(default_factory=list)
    accepted: int = 0
    ready: int = 0
    not_ready: int = 0
    degraded_apply_failed: int = 0
    invalid_spec: list[str] = field(default_factory=list)  # CRD accepted, models refused
    stuck: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    children_refused: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def fuzz_setup(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[str, OperatorProcess, Api]]:
    install_manifests(cluster)
    api = Api(cluster)
    workdir = tmp_path_factory.mktemp("operator-fuzz")
    kubeconfig = service_account_kubeconfig(cluster, SYSTEM_NAMESPACE, OPERATOR,
                                            workdir / "kubeconfig")
    with cluster.namespace("fuzz") as namespace:
        api.core.create_namespaced_resource_quota(namespace, {
            "metadata": {"name": "fuzz-pods"}, "spec": {"hard": {"pods": str(POD_QUOTA)}}})
        with running_operator(kubeconfig, [f"--namespace={namespace}"],
                              workdir / "operator.log") as operator:
            _warm_up(api, namespace, operator)
            yield namespace, operator, api
            api.custom.delete_collection_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, label_selector=LABEL)


def _warm_up(api: Api, namespace: str, operator: OperatorProcess) -> None:
    """Until a plain LLMService gets its children. Right after the CRD's creation the
    apiserver's owner-reference admission cannot map LLMServices yet ("cannot set
    blockOwnerDeletion ... cannot find RESTMapping"), and the operator reports ApplyFailed
    until it can: a cluster state, not an outcome of the specs under test."""
    manifest = llmservice_manifest("fz-warm-up", MINIMAL)
    manifest["metadata"]["labels"] = {LABEL: "true"}
    api.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)

    def served() -> bool:
        found = api.llmservice(namespace, "fz-warm-up")
        outcome = _settled(found) if found else None
        return outcome is not None and outcome != "Degraded/ApplyFailed"

    wait_until(served, 180, "a plain LLMService to get its children", operator, interval_s=1)
    api.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "fz-warm-up")


def _message(exc: client.ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or "")
    except ValueError:
        return ""


def _refusal_kind(message: str) -> str:
    """A refusal's first problem without its values, to group refusals by kind."""
    first = message.split(" is invalid: ", 1)[-1].lstrip("[").split(", spec.")[0]
    return re.sub(r'"[^"]*"', '"."', re.sub(r"\[\d+\]", "[]", first))[:100]


def _children_refused(message: str) -> str:
    """What the apiserver said of the first child it refused, without names and values."""
    found = re.search(r'"message":"((?:[^"\\]|\\.)*)"', message)
    text = found.group(1) if found else message
    return re.sub(r'\\?"[^"\\]*\\?"', '"."', text.split(" is invalid: ", 1)[-1])[:120]


def _settled(item: dict[str, Any]) -> str | None:
    """The outcome of an accepted LLMService's reconcile, None while it has none."""
    status = item.get("status") or {}
    degraded = condition(item, "Degraded")
    if (degraded and degraded["status"] == "True" and degraded.get("reason") == "ApplyFailed"
            and degraded.get("message")):
        return "Degraded/ApplyFailed"
    if status.get("observedGeneration") != item["metadata"]["generation"]:
        return None
    ready = condition(item, "Ready")
    if not ready or not ready.get("reason") or not ready.get("message"):
        return None
    outcome = f"Ready={ready['status']}/{ready['reason']}"
    if degraded and degraded["status"] == "True":
        if not degraded.get("message"):
            return None
        outcome += f" Degraded/{degraded['reason']}"
    return outcome


def _tracebacks(log: str) -> list[str]:
    lines = log.splitlines()
    return ["\n".join(lines[max(0, i - 3): i + 25]) for i, line in enumerate(lines)
            if line.startswith("Traceback")]


@pytest.mark.timeout(int(BUDGET_S + RECONCILE_BOUND_S + 300))
def test_generated_specs_are_refused_or_reconciled(
    fuzz_setup: tuple[str, OperatorProcess, Api],
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace, operator, api = fuzz_setup
    tally = Tally()
    started = time.monotonic()
    specs = generate(SPECS, SEED)
    tally.generated = len(specs)
    tally.generate_s = time.monotonic() - started
    assert len(specs) == SPECS, f"only {len(specs)} distinct specs generated"
    by_name = {f"fz-{index:04d}": spec for index, spec in enumerate(specs)}
    pending = list(by_name)
    in_flight: dict[str, float] = {}  # name -> when created
    settled_at: dict[str, float] = {}
    outcome_of: dict[str, str] = {}
    degraded_message: dict[str, str] = {}

    def create(name: str) -> tuple[str, str, str]:
        manifest = llmservice_manifest(name, off_the_real_node(by_name[name].spec))
        manifest["metadata"]["labels"] = {LABEL: "true"}
        try:
            api.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, manifest, field_validation="Strict")
        except client.ApiException as exc:
            kind = "refused" if exc.status in (400, 422) else f"error {exc.status}"
            return name, kind, _message(exc) or str(exc)
        return name, "accepted", ""

    def delete(name: str) -> None:
        try:
            api.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def finish(name: str, outcome: str) -> None:
        in_flight.pop(name)
        outcome_of[name] = outcome
        tally.outcomes[outcome] += 1
        if outcome.startswith("Ready=True"):
            tally.ready += 1
        elif outcome == "Degraded/ApplyFailed":
            tally.degraded_apply_failed += 1
            tally.children_refused[_children_refused(degraded_message.get(name, ""))] += 1
        else:
            tally.not_ready += 1

    with ThreadPoolExecutor(CREATORS) as pool:
        while pending or in_flight:
            assert operator.alive(), f"the operator exited:\n{operator.log_tail()}"
            now = time.monotonic()
            if pending and len(in_flight) < IN_FLIGHT and now - started < BUDGET_S:
                chunk, pending = pending[:CREATE_CHUNK], pending[CREATE_CHUNK:]
                for name, kind, message in pool.map(create, chunk):
                    origin = by_name[name].origin
                    if kind == "accepted":
                        tally.accepted += 1
                        in_flight[name] = time.monotonic()
                    elif kind == "refused":
                        tally.refused += 1
                        tally.refusals[_refusal_kind(message)] += 1
                        if not message.strip():
                            tally.refused_without_message.append(f"{name} ({origin})")
                    else:
                        tally.unexpected_errors.append(f"{name} ({origin}): {kind}: {message}")
            elif pending and now - started >= BUDGET_S and not in_flight:
                break
            listed = json.loads(api.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, label_selector=LABEL,
                _preload_content=False).data)["items"]
            now = time.monotonic()
            done = []
            for item in listed:
                name = item["metadata"]["name"]
                if name not in in_flight:
                    continue
                outcome = _settled(item)
                if outcome is None:
                    if now - in_flight[name] > RECONCILE_BOUND_S:
                        tally.stuck.append(f"{name} ({by_name[name].origin}): "
                                           f"{json.dumps(by_name[name].spec)}\nstatus: "
                                           f"{json.dumps(item.get('status'))}")
                        finish(name, "stuck")
                        done.append(name)
                    continue
                if "InvalidSpec" in outcome and name not in settled_at:
                    tally.invalid_spec.append(
                        f"{name} ({by_name[name].origin}): {json.dumps(by_name[name].spec)}: "
                        f"{condition(item, 'Degraded')['message']}")  # type: ignore[index]
                settled_at.setdefault(name, now)
                degraded_message[name] = (condition(item, "Degraded") or {}).get("message", "")
                if outcome.startswith("Ready=True") or now - settled_at[name] >= HOLD_S:
                    finish(name, outcome)
                    done.append(name)
            listed_names = {item["metadata"]["name"] for item in listed}
            for name in [n for n in in_flight if n not in listed_names]:
                if now - in_flight[name] > RECONCILE_BOUND_S:  # gone without our deleting it
                    tally.stuck.append(f"{name} ({by_name[name].origin}): vanished")
                    finish(name, "stuck")
            list(pool.map(delete, done))
            if not done:
                time.sleep(POLL_S)

    wall_s = time.monotonic() - started
    assert operator.healthy(), f"the operator's /healthz fails:\n{operator.log_tail()}"
    log = operator.log_path.read_text(errors="replace")
    tracebacks = _tracebacks(log)
    errors = Counter(line.split(" ERROR ", 1)[1][:160] for line in log.splitlines()
                     if " ERROR " in line)
    checked = tally.refused + tally.accepted
    figures = {
        "seed": SEED,
        "specs_generated": tally.generated,
        "generate_s": round(tally.generate_s, 1),
        "specs_checked": checked,
        "refused_by_apiserver": tally.refused,
        "accepted": tally.accepted,
        "accepted_share": round(tally.accepted / max(1, checked), 2),
        "reconciled_ready": tally.ready,
        "reconciled_not_ready_with_message": tally.not_ready,
        "degraded_children_refused": tally.degraded_apply_failed,
        "accepted_by_crd_refused_by_models": len(tally.invalid_spec),
        "operator_exits": 0 if operator.alive() else 1,
        "operator_tracebacks": len(tracebacks),
        "operator_error_lines": sum(errors.values()),
        "stuck": len(tally.stuck),
        "unexpected_api_errors": len(tally.unexpected_errors),
        "wall_s": round(wall_s, 1),
    }
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "operator_fuzz.json").write_text(json.dumps(figures, indent=2) + "\n")
    with capsys.disabled():
        print("\noperator fuzz figures (timings of this machine, not asserted):")
        for key, value in figures.items():
            print(f"  {key}: {value}")
        print("  outcomes of accepted specs:")
        for outcome, count in tally.outcomes.most_common():
            print(f"    {count:4d}  {outcome}")
        print("  most frequent refusals:")
        for message, count in tally.refusals.most_common(12):
            if count:
                print(f"    {count:4d}  {message}")
        print("  children the apiserver refused (Degraded/ApplyFailed):")
        for message, count in tally.children_refused.most_common(8):
            print(f"    {count:4d}  {message}")
        for line, count in errors.most_common(10):
            print(f"  operator ERROR x{count}: {line}")
        for item in tally.invalid_spec[:5]:
            print(f"  accepted by the CRD, refused by the models: {item[:600]}")

    assert not tracebacks, "tracebacks in the operator's log:\n" + "\n----\n".join(tracebacks[:3])
    assert not tally.stuck, (f"{len(tally.stuck)} accepted LLMServices without a status after "
                             f"{RECONCILE_BOUND_S:.0f}s:\n" + "\n".join(tally.stuck[:5])
                             + f"\noperator log:\n{operator.log_tail()}")
    assert not tally.unexpected_errors, "\n".join(tally.unexpected_errors[:10])
    assert not tally.refused_without_message, tally.refused_without_message[:10]
    assert checked == SPECS, (f"only {checked} of {SPECS} specs created within the budget of "
                              f"{BUDGET_S:.0f}s")
    assert tally.accepted >= MIN_ACCEPTED_SHARE * SPECS, figures
