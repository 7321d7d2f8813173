"""No silent CPU fallback: the device a worker computes on, from the accelerators its container
holds. `choose_device` is checked on every case; a real `pdserve worker` is checked to exit at
once, with one line, when it holds device files it cannot use (made in a private mount
namespace over /dev, so the host is untouched)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from pdserve.runtime.devices.probe import DeviceError, HostDevices, choose_device, probe

GPUS = ("/dev/nvidia0",)
CHIPS = ("/dev/vfio/0", "/dev/vfio/1", "/dev/vfio/2", "/dev/vfio/3")


@pytest.mark.parametrize(("requested", "host", "device"), [
    ("auto", HostDevices(), "cpu"),
    ("cpu", HostDevices(), "cpu"),
    ("auto", HostDevices(GPUS, cuda_devices=1), "cuda"),
    ("cuda", HostDevices(GPUS, cuda_devices=1), "cuda"),
    ("cpu", HostDevices(GPUS, cuda_devices=1), "cpu"),  # asked for explicitly
    ("auto", HostDevices(tpu_files=CHIPS[:1], torch_xla=True), "xla"),
    ("xla", HostDevices(tpu_files=CHIPS[:1], torch_xla=True), "xla"),
    ("xla", HostDevices(torch_xla=True), "xla"),  # XLA's CPU backend (PJRT_DEVICE=CPU)
])  # fmt: skip
def test_the_device_follows_what_the_container_holds(requested, host, device):
    assert choose_device(requested, host) == device


def test_tensor_parallelism_uses_every_device_the_pod_holds():
    eight = HostDevices(GPUS * 8, cuda_devices=8)
    assert choose_device("cuda", eight, devices=8) == "cuda"
    with pytest.raises(DeviceError, match="tensor parallel size is 4"):
        choose_device("cuda", eight, devices=4)
    assert choose_device("cpu", HostDevices(), devices=2) == "cpu"  # gloo on CPU
    with pytest.raises(DeviceError, match="tensor parallel size 4 on XLA is not supported"):
        choose_device("xla", HostDevices(tpu_files=CHIPS, torch_xla=True), devices=4)


@pytest.mark.parametrize(("requested", "host", "message"), [
    ("auto", HostDevices(GPUS, cuda_problem="no driver"),
     r"--device auto: found 1 NVIDIA device\(s\) \(/dev/nvidia0\) but torch cannot use CUDA "
     r"\(no driver\); it will not fall back to the host CPU"),
    ("cuda", HostDevices(), "found no NVIDIA device and torch sees no CUDA"),
    ("auto", HostDevices(tpu_files=CHIPS),
     r"--device auto: found 4 TPU chip\(s\) \(/dev/vfio/0, .*\) but torch_xla is not "
     r"installed in this image .*; it will not fall back to the host CPU"),
    ("xla", HostDevices(), "--device xla: torch_xla is not installed"),
    ("auto", HostDevices(tpu_files=CHIPS, torch_xla=True),
     r"holds 4 TPU chip\(s\) .* and the replica uses 1: they must match"),
    ("cuda", HostDevices(tpu_files=CHIPS), "--device cuda: found TPU chips"),
    ("auto", HostDevices(GPUS, CHIPS, cuda_devices=1), "name the one to use with --device"),
    ("auto", HostDevices(GPUS * 8, cuda_devices=8),
     r"holds 8 CUDA device\(s\) and the tensor parallel size is 1: they must match"),
    ("tpu", HostDevices(), "device must be one of auto, cpu, cuda, xla"),
])  # fmt: skip
def test_what_cannot_be_used_is_refused_in_one_line(requested, host, message):
    with pytest.raises(DeviceError, match=message) as caught:
        choose_device(requested, host)
    assert "\n" not in str(caught.value)


def test_probe_reads_the_device_files(tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "accel0", "vfio/0", "vfio/vfio"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    host = probe(tmp_path)
    assert host.nvidia_files == (f"{tmp_path}/nvidia0", f"{tmp_path}/nvidia1")
    assert host.tpu_files == (f"{tmp_path}/accel0", f"{tmp_path}/vfio/0")
    assert probe(tmp_path / "absent").nvidia_files == ()


def _worker_holding(files, *flags):
    """`pdserve worker` started where /dev also holds `files` (empty stand-ins)."""
    touch = " ".join(f"/dev/{name}" for name in files)
    script = ('set -e; mount --make-rprivate /; d=$(mktemp -d); mkdir $d/u $d/w; '
              'mount -t overlay overlay -o lowerdir=/dev,upperdir=$d/u,workdir=$d/w /dev; '
              f'mkdir -p /dev/vfio; touch {touch}; exec "$@"')
    command = ["unshare", "--mount", "sh", "-c", script, "sh", sys.executable, "-m", "pdserve",
               "worker", "--model", "builtin:tiny", "--port", "1", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="a private mount namespace needs root and unshare")


@needs_root
@pytest.mark.timeout(150)
def test_a_worker_holding_tpu_chips_exits_instead_of_computing_on_the_cpu():
    done = _worker_holding(["vfio/0", "vfio/1"])
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pdserve worker: --device auto: found 2 TPU chip(s) (/dev/vfio/0, "
                           "/dev/vfio/1) but torch_xla is not installed")
    assert "listening" not in done.stderr  # it never served


@needs_root
@pytest.mark.timeout(150)
def test_a_worker_holding_gpus_torch_cannot_use_exits():
    if probe().cuda_devices:
        pytest.skip("this machine's torch can use CUDA")
    done = _worker_holding(["nvidia0"], "--device", "auto")
    assert done.returncode == 1, done.stderr
    assert "found 1 NVIDIA device(s) (/dev/nvidia0) but torch cannot use CUDA" in done.stderr
    assert "will not fall back to the host CPU" in done.stderr
