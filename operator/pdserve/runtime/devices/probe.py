"""What accelerators this container was given, and the device a worker computes on.

The device files say what Kubernetes handed the pod (the device plugins mount `/dev/nvidiaN`
for GPUs, `/dev/accelN` or `/dev/vfio/N` for TPU chips); torch says what it can use. A worker
never computes on the host CPU beside accelerators it holds: `auto` resolves only when one
answer is unambiguous, and every mismatch is one `DeviceError` line naming what was found and
what was expected. `choose_device` is pure; `probe` reads the machine."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from pdserve.api.accelerators import XLA_MAX_CHIPS_PER_REPLICA

DEVICE_CHOICES = ("auto", "cpu", "cuda", "xla")
NVIDIA_FILE = re.compile(r"nvidia\d+")
TPU_FILES = (("", re.compile(r"accel\d+")), ("vfio", re.compile(r"\d+")))


class DeviceError(ValueError):
    """The worker cannot compute on what it was given."""


@dataclass(frozen=True)
class HostDevices:
    nvidia_files: tuple[str, ...] = ()  # /dev/nvidiaN
    tpu_files: tuple[str, ...] = ()  # /dev/accelN, /dev/vfio/N
    cuda_devices: int = 0  # what torch can use
    cuda_problem: str = ""  # why torch cannot use CUDA, when it cannot
    torch_xla: bool = False


def choose_device(requested: str, host: HostDevices, devices: int = 1) -> str:
    """The torch device type ("cpu", "cuda" or "xla") a replica over `devices` devices (its
    tensor parallel size) computes on, or a DeviceError."""
    if requested not in DEVICE_CHOICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {requested!r}")
    if requested == "xla" or (host.tpu_files and requested == "auto"):
        return _xla(requested, host, devices)
    if host.tpu_files and requested != "cpu":
        raise DeviceError(f"--device {requested}: found TPU chips ({_listing(host.tpu_files)})"
                          + (f" and NVIDIA devices ({_listing(host.nvidia_files)})"
                             if host.nvidia_files else "")
                          + "; name the one to use with --device")
    if requested == "cpu":
        return "cpu"
    if requested == "auto" and not host.nvidia_files and host.cuda_devices == 0:
        return "cpu"
    if host.cuda_devices == 0:
        given = (f"found {len(host.nvidia_files)} NVIDIA device(s) "
                 f"({_listing(host.nvidia_files)}) but torch cannot use CUDA"
                 if host.nvidia_files else "found no NVIDIA device and torch sees no CUDA")
        reason = f" ({host.cuda_problem})" if host.cuda_problem else ""
        raise DeviceError(f"--device {requested}: {given}{reason}; it will not fall back to "
                          "the host CPU")
    if host.cuda_devices != devices:
        raise DeviceError(f"this container holds {host.cuda_devices} CUDA device(s) and the "
                          f"tensor parallel size is {devices}: they must match (accelerator."
                          "count sets both), so that no reserved device sits idle")
    return "cuda"


def _xla(requested: str, host: HostDevices, devices: int) -> str:
    if host.nvidia_files and requested == "auto":
        raise DeviceError(f"--device auto: found NVIDIA devices ({_listing(host.nvidia_files)}) "
                          f"and TPU chips ({_listing(host.tpu_files)}); name the one to use "
                          "with --device")
    if not host.torch_xla:
        found = (f"found {len(host.tpu_files)} TPU chip(s) ({_listing(host.tpu_files)}) but "
                 if host.tpu_files else "")
        raise DeviceError(f"--device {requested}: {found}torch_xla is not installed in this "
                          "image (the TPU image has it: pdserve[tpu]); it will not fall back "
                          "to the host CPU")
    if devices > XLA_MAX_CHIPS_PER_REPLICA:
        raise DeviceError(f"tensor parallel size {devices} on XLA is not supported yet: an XLA "
                          f"replica runs on {XLA_MAX_CHIPS_PER_REPLICA} chip (accelerator.count "
                          f"{XLA_MAX_CHIPS_PER_REPLICA})")
    if host.tpu_files and len(host.tpu_files) != devices:
        raise DeviceError(f"this container holds {len(host.tpu_files)} TPU chip(s) "
                          f"({_listing(host.tpu_files)}) and the replica uses {devices}: they "
                          "must match, so that no reserved chip sits idle")
    return "xla"


def probe(dev: Path = Path("/dev")) -> HostDevices:
    """The accelerators of this container: its device files and what torch can use."""
    import torch  # only here: choose_device stays importable without torch

    nvidia = _device_files(dev, "", NVIDIA_FILE)
    tpu = tuple(path for folder, pattern in TPU_FILES
                for path in _device_files(dev, folder, pattern))
    problem = ""
    count = 0
    if torch.version.cuda is None:
        problem = f"this torch {torch.__version__} is built without CUDA"
    elif torch.cuda.is_available():
        count = torch.cuda.device_count()
    else:
        problem = "torch.cuda.is_available() is false: no driver in the container?"
    return HostDevices(nvidia, tpu, count, problem,
                       importlib.util.find_spec("torch_xla") is not None)


def _device_files(dev: Path, folder: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
    root = dev / folder if folder else dev
    try:
        names = sorted(entry.name for entry in root.iterdir() if pattern.fullmatch(entry.name))
    except OSError:
        return ()
    return tuple(str(root / name) for name in names)


def _listing(paths: tuple[str, ...], shown: int = 4) -> str:
    more = f", ... ({len(paths)} in all)" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more
