"""Builds the pinned control-plane binaries from the Go module proxy, once, into the cache.

`k8s.io/kubernetes` and etcd's server module replace their sibling modules with local paths
(`./staging/...`, `../api`), so `go install module@version` refuses them. Each component is
therefore built inside a throwaway wrapper module that requires it and points every such sibling
at its published version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from e2e.cluster.versions import (
    COMPONENTS,
    KUBERNETES_STAGING_VERSION,
    Component,
    bin_dir,
    module_files_dir,
)

# KWOK's standalone binary has no default stages; these are the ones its module ships.
KWOK_STAGE_FILES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat/node-heartbeat.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)
_REPLACE_LINE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+\S+)?\s+=>\s+(\S+)\s*$")
_PROGRESS_EVERY_S = 30.0


class BuildError(RuntimeError):
    """A go command failed; the message names the step and the log file."""


def stages_dir() -> Path:
    return bin_dir().parent / "kwok-stages"


def local_replacements(gomod: str) -> list[str]:
    """Module paths that a go.mod replaces with a local directory (`=> ./x` or `=> ../x`).

    Replacements that point at a deliberately missing directory (etcd's FORBIDDEN_DEPENDENCY
    guard) are skipped: nothing may import those modules anyway.
    """
    modules: list[str] = []
    in_block = False
    for raw in gomod.splitlines():
        line = raw.split("//", 1)[0].strip()
        if line.startswith("replace ("):
            in_block = True
            continue
        if in_block and line == ")":
            in_block = False
            continue
        if not (in_block or line.startswith("replace ")):
            continue
        match = _REPLACE_LINE.match(line)
        if match is None:
            continue
        module, target = match.groups()
        if target.startswith((".", "/")) and "FORBIDDEN" not in target:
            modules.append(module)
    return modules


def published_version(component: Component, module: str) -> str:
    if component.module == "k8s.io/kubernetes" and module.startswith("k8s.io/"):
        return KUBERNETES_STAGING_VERSION
    return component.version


def wrapper_gomod(component: Component, upstream_gomod: str) -> str:
    """The go.mod of the throwaway module that builds `component`."""
    go_line = re.search(r"^go\s+(\S+)", upstream_gomod, re.M)
    godebug = re.findall(r"^godebug\s+.+$", upstream_gomod, re.M)
    lines = [f"module pdserve.local/build/{component.name}", ""]
    lines.append(f"go {go_line.group(1) if go_line else '1.26.0'}")
    lines += godebug
    lines += ["", f"require {component.module} {component.version}"]
    replaced = local_replacements(upstream_gomod)
    if replaced:
        lines += ["", "replace ("]
        lines += [f"\t{m} => {m} {published_version(component, m)}" for m in replaced]
        lines.append(")")
    return "\n".join(lines) + "\n"


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOFLAGS="-mod=mod", GOTOOLCHAIN="local", CGO_ENABLED="0")
    return env


def _log(message: str, started: float) -> None:
    print(f"[cluster-build {time.monotonic() - started:7.1f}s] {message}", flush=True)


def _report_progress(
    finished: threading.Event, output: list[str], what: str, started: float
) -> None:
    # go prints a package when it has compiled it (-v): its count shows the build advancing.
    while not finished.wait(_PROGRESS_EVERY_S):
        _log(f"{what}: still running, {len(output)} packages so far", started)


def _go(args: list[str], cwd: Path, log_path: Path, started: float, what: str) -> str:
    """Runs a go command at low priority, logging to `log_path` and printing progress."""
    command = ["nice", "-n", "10", "go", *args]
    with log_path.open("a") as log:
        log.write(f"\n$ {' '.join(command)}  (in {cwd})\n")
        log.flush()
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=go_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        output: list[str] = []
        finished = threading.Event()
        ticker = threading.Thread(
            target=_report_progress, args=(finished, output, what, started), daemon=True
        )
        ticker.start()
        for line in proc.stdout:
            log.write(line)
            output.append(line)
        finished.set()
        code = proc.wait()
    if code != 0:
        tail = "".join(output[-30:])
        raise BuildError(f"{what} failed (exit {code}); full log: {log_path}\n{tail}")
    return "".join(output)


def _download(component: Component, workdir: Path, log: Path, started: float) -> dict[str, str]:
    out = _go(
        ["mod", "download", "-json", f"{component.module}@{component.version}"],
        workdir,
        log,
        started,
        f"download {component.module}@{component.version}",
    )
    info: dict[str, str] = json.loads(out[out.index("{") :])
    return info


def _built(component: Component, target: Path) -> bool:
    binaries = all(os.access(target / name, os.X_OK) for name in component.binaries)
    return binaries and (not component.files or module_files_dir(component).is_dir())


def build_component(component: Component, target: Path, log: Path, started: float) -> None:
    with tempfile.TemporaryDirectory(prefix=f"pdserve-build-{component.name}-") as tmp:
        workdir = Path(tmp)
        info = _download(component, workdir, log, started)
        upstream = Path(info["GoMod"]).read_text()
        (workdir / "go.mod").write_text(wrapper_gomod(component, upstream))
        out = workdir / "out"
        out.mkdir()
        ldflags = " ".join(("-s", "-w", *component.ldflags))
        tags = ["-tags", ",".join(component.tags)] if component.tags else []
        _log(f"{component.name}: compiling {', '.join(component.binaries)}", started)
        if len(component.binaries) == 1:
            name, package = next(iter(component.binaries.items()))
            args = ["build", "-v", "-trimpath", *tags, "-ldflags", ldflags, "-o", str(out / name)]
            args.append(package)
        else:
            args = [
                "build",
                "-v",
                "-trimpath",
                *tags,
                "-ldflags",
                ldflags,
                "-o",
                f"{out}/",
                *component.binaries.values(),
            ]
        _go(args, workdir, log, started, f"{component.name}: go build")
        for name in component.binaries:
            os.replace(out / name, target / name)
        if component.name == "kwok":
            _copy_kwok_stages(Path(info["Dir"]))
        if component.files:
            _copy_module_files(component, Path(info["Dir"]))


def _copy_kwok_stages(module_dir: Path) -> None:
    stages = stages_dir()
    stages.mkdir(parents=True, exist_ok=True)
    for rel in KWOK_STAGE_FILES:
        shutil.copyfile(module_dir / rel, stages / Path(rel).name)


def _copy_module_files(component: Component, module_dir: Path) -> None:
    kept = module_files_dir(component)
    partial = kept.with_name(kept.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for rel in component.files:
        shutil.copyfile(module_dir / rel, partial / Path(rel).name)
    os.replace(partial, kept)


def build_all() -> Path:
    """Builds whatever is missing from the cache and returns the bin directory."""
    started = time.monotonic()
    target = bin_dir()
    target.mkdir(parents=True, exist_ok=True)
    log = target.parent / "build.log"
    if shutil.which("go") is None:
        raise BuildError("`go` is not on PATH: install Go 1.26 to build the local control plane")
    for component in COMPONENTS:
        if _built(component, target) and (component.name != "kwok" or stages_dir().is_dir()):
            _log(f"{component.name} {component.version}: cached", started)
            continue
        _log(f"{component.name} {component.version}: building (log: {log})", started)
        build_component(component, target, log, started)
        _log(f"{component.name} {component.version}: done", started)
    size_mib = sum(f.stat().st_size for f in target.iterdir()) / 2**20
    _log(f"all binaries in {target} ({size_mib:.0f} MiB)", started)
    return target


def main() -> int:
    try:
        build_all()
    except BuildError as err:
        print(f"cluster-build: {err}", file=sys.stderr)
        return 1
    return 0
