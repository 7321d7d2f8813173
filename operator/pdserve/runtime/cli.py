"""`pdserve worker`: one inference worker (role prefill, decode or both) behind HTTP.

Settings come from `--config FILE.json` (the operator's ConfigMap; keys are the flag names in
kebab-, snake- or camelCase, booleans for on/off flags) and then the flags, which override the
file. The file is turned into flags and parsed by the same parser, so both are checked alike.
Each role's routes come from its own module's `install(app, state)`, imported only for that role.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from pdserve.runtime.compression.config import METHODS as KV_COMPRESSION_METHODS
from pdserve.runtime.compression.config import KVCompression
from pdserve.runtime.devices.probe import DEVICE_CHOICES, DeviceError, choose_device, probe
from pdserve.runtime.disagg.kv_transfer.auth import read_secret
from pdserve.runtime.disagg.kv_transfer.transport import NIXL_PACKAGE, TRANSPORTS
from pdserve.runtime.grammar.compiler import DEFAULT_COMPILE_TIMEOUT
from pdserve.runtime.grammar.spec import DEFAULT_MAX_WHITESPACE

ROLE_ROUTES = {
    "both": "pdserve.runtime.serving.openai_routes",
    "prefill": "pdserve.runtime.disagg.prefill",
    "decode": "pdserve.runtime.disagg.decode",
}
DEFAULTS: dict[str, Any] = {
    "role": "both", "model": None, "served_model_name": None, "host": "0.0.0.0", "port": 8000,
    "kv_port": 9000, "device": "auto", "dtype": "auto", "max_model_len": None,
    "max_num_seqs": None, "max_num_batched_tokens": None, "block_size": None,
    "num_kv_blocks": None, "enable_prefix_caching": None, "kv_transport": "tcp",
    "kv_timeout": 30.0, "kv_fallback": "recompute", "drain_timeout": 30.0, "log_level": "info",
    "threads": None, "tensor_parallel_size": 1, "num_nodes": 1, "node_rank": 0,
    "rendezvous": None, "kv_compression_method": "none", "kv_compression_ratio": None,
    "kv_compression_budget_tokens": None, "kv_compression_window_tokens": None,
    "kv_compression_sink_tokens": None, "grammar_cache_mb": 256,
    "grammar_compile_timeout": DEFAULT_COMPILE_TIMEOUT,
    "grammar_max_whitespace": DEFAULT_MAX_WHITESPACE, "kv_auth_secret_file": None,
}


class WorkerSetupError(Exception):
    """A setting the worker cannot start with; reported as one line, exit code 2."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    # SUPPRESS: only settings actually given appear, so the file and DEFAULTS fill the rest.
    parser = argparse.ArgumentParser(prog="pdserve worker", description=__doc__,
                                     argument_default=argparse.SUPPRESS)
    add = parser.add_argument
    add("--config", metavar="FILE.json", help="JSON file with the same settings (flags win)")
    add("--role", choices=sorted(ROLE_ROUTES), help="default: both")
    add("--model", help="model directory (Hugging Face layout) or builtin:NAME")
    add("--served-model-name", help="the model name clients use (default: --model)")
    add("--host", help="HTTP bind address (default: 0.0.0.0)")
    add("--port", type=_positive_int, help="HTTP port (default: 8000)")
    add("--kv-port", type=_positive_int, help="KV transfer port (default: 9000)")
    add("--device", choices=DEVICE_CHOICES,
        help="default: auto (the accelerator the container holds, else the CPU)")
    add("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="default: auto")
    add("--max-model-len", type=_positive_int, help="context length (default: the model's)")
    add("--max-num-seqs", type=_positive_int, help="most sequences running at once")
    add("--max-num-batched-tokens", type=_positive_int, help="token budget of one step")
    add("--block-size", type=_positive_int, help="tokens per KV block")
    add("--num-kv-blocks", type=_positive_int, help="KV blocks (default: sized from memory)")
    add("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
        help="reuse KV blocks of shared prompt prefixes")
    add("--tensor-parallel-size", type=_positive_int,
        help="devices (processes) one model replica spans (default: 1)")
    add("--num-nodes", type=_positive_int,
        help="nodes (pods) one replica spans, each with tensor-parallel-size / num-nodes "
        "devices (default: 1)")
    add("--node-rank", type=int,
        help="this node's place in the replica: 0 runs the engine and serves HTTP, the others "
        "only compute their ranks (default: 0)")
    add("--rendezvous", metavar="HOST:PORT",
        help="where the nodes of a replica meet: node 0's address and a port it listens on")
    add("--kv-transport", choices=TRANSPORTS,
        help="how a prefill worker moves KV to decode workers: tcp (framed bytes over a socket) "
        "or nixl (the decode worker reads with NIXL/UCX: shared memory, RDMA, GPU memory); "
        "default: tcp")
    add("--kv-timeout", type=_positive_float, help="seconds to wait for KV (default: 30)")
    add("--kv-fallback", choices=["recompute", "fail"], help="when KV does not arrive")
    add("--kv-auth-secret-file", metavar="FILE",
        help="a secret shared by the LLMService's prefill and decode workers: KV peers prove it "
        "to each other at the handshake (default: none, peers unauthenticated)")
    add("--kv-compression-method", choices=KV_COMPRESSION_METHODS,
        help="prune KV: snapkv after a prompt's prefill, streaming (sinks + recent window) as a "
        "sequence grows (default: none; a request opts out with header "
        "x-pdserve-kv-compression: none)")
    add("--kv-compression-ratio", type=_positive_float,
        help="snapkv: fraction of a prompt's KV to keep, in (0, 1)")
    add("--kv-compression-budget-tokens", type=_positive_int,
        help="snapkv: prompt tokens to keep (instead of a ratio)")
    add("--kv-compression-window-tokens", type=_positive_int,
        help="snapkv: observation window (default 32); streaming: recent window (default 1024)")
    add("--kv-compression-sink-tokens", type=int,
        help="streaming: leading tokens always kept (default 4)")
    add("--grammar-cache-mb", type=_positive_int,
        help="memory for compiled grammars of tool calls and JSON schemas, reused across "
        "requests (default: 256)")
    add("--grammar-compile-timeout", type=_positive_float,
        help="seconds a request's grammar may take to compile before it is refused with 400 "
        "(default: 10)")
    add("--grammar-max-whitespace", type=int,
        help="consecutive whitespace characters constrained JSON may hold (default: 4)")
    add("--drain-timeout", type=_positive_float,
        help="on SIGTERM, seconds to let in-flight requests finish (default: 30)")
    add("--threads", type=_positive_int,
        help="torch CPU threads (default: the container's CPU limit, or every core)")
    add("--log-level", choices=["debug", "info", "warning", "error"], help="default: info")
    return parser


def _flag_name(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", key).lower().replace("_", "-")


def config_file_argv(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """The settings of a JSON config file, as command-line flags."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WorkerSetupError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise WorkerSetupError(f"config file {path} must hold a JSON object")
    known = {option for action in parser._actions for option in action.option_strings}
    argv: list[str] = []
    for key, value in data.items():
        flag = "--" + _flag_name(str(key))
        if flag not in known or flag == "--config":
            raise WorkerSetupError(f"config file {path}: unknown setting {key!r}")
        if value is None:
            continue
        if isinstance(value, bool):
            if f"--no-{flag[2:]}" not in known:
                raise WorkerSetupError(f"config file {path}: {key!r} is not an on/off setting")
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, int | float | str):
            argv += [flag, str(value)]
        else:
            raise WorkerSetupError(f"config file {path}: {key!r} must be a number, string or "
                                   f"boolean, got {value!r}")
    return argv


def parse_settings(argv: list[str]) -> dict[str, Any]:
    """DEFAULTS, overridden by the config file, overridden by the flags."""
    parser = build_parser()
    first = vars(parser.parse_args(argv))
    file_argv = config_file_argv(first["config"], parser) if "config" in first else []
    given = vars(parser.parse_args(file_argv + argv))
    given.pop("config", None)
    settings = {**DEFAULTS, **given}
    if not settings["model"]:
        raise WorkerSetupError("--model is required (a model directory or builtin:tiny)")
    settings["served_model_name"] = settings["served_model_name"] or settings["model"]
    if settings["kv_auth_secret_file"]:
        try:
            read_secret(settings["kv_auth_secret_file"])
        except ValueError as exc:
            raise WorkerSetupError(str(exc)) from None
    if settings["grammar_max_whitespace"] < 0:
        raise WorkerSetupError("--grammar-max-whitespace must be 0 or more, got "
                               f"{settings['grammar_max_whitespace']}")
    _check_replica_layout(settings)
    _check_kv_transport(settings)
    try:
        kv_compression(settings).validate()
    except ValueError as exc:
        raise WorkerSetupError(str(exc)) from None
    return settings


def kv_compression(settings: dict[str, Any]) -> KVCompression:
    return KVCompression(settings["kv_compression_method"], settings["kv_compression_ratio"],
                         settings["kv_compression_budget_tokens"],
                         settings["kv_compression_window_tokens"],
                         settings["kv_compression_sink_tokens"])


def _check_kv_transport(settings: dict[str, Any]) -> None:
    if settings["kv_transport"] != "nixl":
        return
    if settings["tensor_parallel_size"] > 1 or settings["device"] == "xla":
        raise WorkerSetupError("--kv-transport nixl needs the KV pool in one host or CUDA tensor:"
                               " a tensor-parallel replica or an XLA device moves KV with tcp")
    if importlib.util.find_spec(NIXL_PACKAGE) is None:
        raise WorkerSetupError(f"--kv-transport nixl needs the {NIXL_PACKAGE} module "
                               "(pdserve's runtime extra installs it); or use tcp")


def _check_replica_layout(settings: dict[str, Any]) -> None:
    nodes, rank = settings["num_nodes"], settings["node_rank"]
    size = settings["tensor_parallel_size"]
    if size % nodes:
        raise WorkerSetupError(f"--tensor-parallel-size {size} does not divide into "
                               f"--num-nodes {nodes}")
    if not 0 <= rank < nodes:
        raise WorkerSetupError(f"--node-rank {rank} must be in 0..{nodes - 1}")
    address = settings["rendezvous"]
    if nodes > 1 and not address:
        raise WorkerSetupError("--num-nodes > 1 needs --rendezvous HOST:PORT (node 0's address)")
    if address:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise WorkerSetupError(f"--rendezvous must be HOST:PORT, got {address!r}")


def load_role(role: str) -> Any:
    module_name = ROLE_ROUTES[role]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise WorkerSetupError(f"role {role!r} is not available in this build") from None


def main(argv: list[str]) -> int:
    try:
        settings = parse_settings(argv)
        role_module = load_role(settings["role"])
    except WorkerSetupError as exc:
        print(f"pdserve worker: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings["log_level"].upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pdserve.runtime.worker import run_worker  # imports torch: only once flags are valid

    try:  # before listening: a pod that cannot compute fails at once, its reason in the log
        settings["device"] = choose_device(
            settings["device"], probe(), settings["tensor_parallel_size"] // settings["num_nodes"])
    except DeviceError as exc:
        print(f"pdserve worker: {exc}", file=sys.stderr)
        return 1
    if settings["node_rank"] > 0:
        return _follower_node(settings)
    try:
        asyncio.run(run_worker(settings, role_module.install))
    except (OSError, ValueError) as exc:  # e.g. a missing model directory, a port in use
        print(f"pdserve worker: {exc}", file=sys.stderr)
        return 1
    return 0


def _follower_node(settings: dict[str, Any]) -> int:
    from pdserve.runtime.parallel.replica import run_follower_node
    from pdserve.runtime.worker import engine_config

    logging.getLogger(__name__).info(
        "node %d of %d: ranks of the replica whose rank 0 is at %s", settings["node_rank"],
        settings["num_nodes"], settings["rendezvous"])
    try:
        return run_follower_node(engine_config(settings), settings["node_rank"])
    except (OSError, ValueError) as exc:
        print(f"pdserve worker: {exc}", file=sys.stderr)
        return 1
