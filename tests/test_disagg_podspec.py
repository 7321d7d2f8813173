"""Pod-spec check: the prefill, decode and router containers the operator renders for a sample,
run as local processes with their exact command and env, answer a request end to end.

Substituted only where a laptop differs from a pod: container ports (several "pods" share one
loopback), mounted paths (the engine ConfigMap and the cache emptyDir become temp dirs),
downward-API env values, and the headless Services' DNS names, answered through
PDSERVE_RESOLVE_OVERRIDE by the ports of the local "pods".
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import openai
import pytest
import yaml

from e2e.local_processes import Process, free_port, metric, running, wait_for_tiers
from pdserve.api.spec import LLMServiceSpec
from pdserve.controller.context import Owner
from pdserve.controller.kv_auth import kv_auth_secret
from pdserve.controller.names import KV_AUTH_DIR
from pdserve.controller.render import render_children
from pdserve.router.discovery import RESOLVE_OVERRIDE_ENV

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SAMPLE = Path(__file__).parents[1] / "manifests" / "samples" / "agentic-chat.yaml"
PORT_FLAGS = ("--port", "--kv-port")


def rendered(name: str = "agentic-chat", namespace: str = "default") -> dict:
    spec = LLMServiceSpec.model_validate(yaml.safe_load(SAMPLE.read_text())["spec"])
    children = render_children(spec, Owner(name, namespace, "uid-podspec"), "pdserve:test")
    return {(c["kind"], c["metadata"]["name"]): c for c in children}


def container_process(deployment: dict, replica: int, mounts: dict[str, Path],
                      logs: Path, extra_env: dict[str, str] | None = None) -> Process:
    """The deployment's single container as a local process: same command, args and env."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pod_name = f"{deployment['metadata']['name']}-{replica}"
    cache = logs / pod_name / "cache"
    cache.mkdir(parents=True)
    paths = {**mounts, "/cache": cache, "/tmp": logs / pod_name}

    def local(value: str) -> str:
        for mount, path in paths.items():
            if value == mount or value.startswith(mount + "/"):
                return str(path) + value[len(mount):]
        return value

    argv = [local(a) for a in container["command"] + container.get("args", [])]
    port = 0
    for flag in PORT_FLAGS:  # several pods share one loopback interface
        if flag in argv:
            new = free_port()
            argv[argv.index(flag) + 1] = str(new)
            port = port or new
    downward = {"metadata.name": pod_name, "metadata.namespace": "default",
                "status.podIP": "127.0.0.1"}
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = local(item["value"])
        else:
            env[item["name"]] = downward[item["valueFrom"]["fieldRef"]["fieldPath"]]
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env.update(extra_env or {})
    assert argv[0] == "pdserve"
    return Process(pod_name, argv, logs / f"{pod_name}.log", env, port)


def test_rendered_containers_serve_a_request(tmp_path):
    objects = rendered()
    configmap = objects[("ConfigMap", "agentic-chat-engine")]
    config_dir = tmp_path / "engine-config"
    config_dir.mkdir()
    for filename, text in configmap["data"].items():
        (config_dir / filename).write_text(text)
    # The Secret the operator creates beside the children, as kubelet mounts it.
    secret = kv_auth_secret(Owner("agentic-chat", "default", "uid"))
    secret_dir = tmp_path / "kv-auth"
    secret_dir.mkdir()
    for key, value in secret["stringData"].items():
        (secret_dir / key).write_text(value)
    mounts = {"/etc/pdserve": config_dir, KV_AUTH_DIR: secret_dir}
    workers = {role: [container_process(objects[("Deployment", f"agentic-chat-{role}")], i,
                                        mounts, tmp_path)
                      for i in range(objects[("Deployment", f"agentic-chat-{role}")]["spec"]
                                     .get("replicas", 1))]
               for role in ("prefill", "decode")}
    router_deployment = objects[("Deployment", "agentic-chat-router")]
    command = router_deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    override = {}
    for role in ("prefill", "decode"):
        service = command[command.index(f"--{role}-service") + 1]
        assert service.startswith(f"agentic-chat-{role}-workers.")
        override[service] = [p.address for p in workers[role]]
    gateway = container_process(router_deployment, 0, mounts, tmp_path,
                                {RESOLVE_OVERRIDE_ENV: json.dumps(override)})
    every_worker = workers["prefill"] + workers["decode"]
    assert len(workers["decode"]) == 2
    with running(*every_worker), running(gateway):
        wait_for_tiers(gateway)
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")
        served = command[command.index("--served-model-name") + 1]
        reply = client.chat.completions.create(
            model=served, max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": "Plan a trip to the sea, step by step."}])
        assert reply.choices[0].message.content
        assert reply.usage.completion_tokens == 8
        moved = sum(metric(p.url, "pdserve_kv_transfer_bytes_total") for p in workers["prefill"])
        assert moved > 0  # it went router -> prefill -> decode
