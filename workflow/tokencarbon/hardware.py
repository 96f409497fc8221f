"""What hardware and software a cell actually ran on, and the check that it is its platform."""

from __future__ import annotations

import os
import platform as pyplatform
import re
import subprocess
from pathlib import Path
from typing import Any

from tokencarbon.errors import HardwareMismatchError


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return pyplatform.processor() or pyplatform.machine()


def detect(kind: str) -> dict[str, Any]:
    """Describe the device a cell of a `kind` ("cpu" or "gpu") platform would run on."""
    import psutil

    info: dict[str, Any] = {
        "cpu_model": cpu_model_name(),
        "cpu_logical_cores": os.cpu_count(),
        "host_memory_bytes": psutil.virtual_memory().total,
    }
    if kind == "cpu":
        info["device_name"] = info["cpu_model"]
        return info
    import torch

    if not torch.cuda.is_available():
        info["device_name"] = None
        return info
    from tokencarbon.power.nvml import describe_gpu

    info["device_name"] = torch.cuda.get_device_name(0)
    info["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    info["gpu"] = describe_gpu(0)
    return info


def visible_devices() -> dict[str, Any]:
    """What this machine shows, without starting CUDA (the DAG's hardware check, issue 10 §4).

    Returns {"cpu": the CPU model (/proc/cpuinfo), "gpus": NVML names of the GPUs this process may
    use (CUDA_VISIBLE_DEVICES honoured, through lease.py's one parser; e.g. "NVIDIA H100 80GB
    HBM3"), "gpu_note": why the list is empty, or None}. NVML is initialised and shut down here;
    CUDA never is, so the Snakemake process stays free to fork jobs.
    """
    import pynvml

    out: dict[str, Any] = {"cpu": cpu_model_name(), "gpus": [], "gpu_note": None}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        out["gpu_note"] = f"NVML unavailable: {e}"
        return out
    try:
        from tokencarbon.lease import visible_gpu_indices

        out["gpus"] = [
            pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            for i in visible_gpu_indices()
        ]
        if not out["gpus"]:
            out["gpu_note"] = "NVML sees no GPU this process may use (CUDA_VISIBLE_DEVICES?)"
    finally:
        pynvml.nvmlShutdown()
    return out


def check_platform(platform: dict[str, Any], hardware: dict[str, Any]) -> None:
    """Raise HardwareMismatchError unless the detected device is the platform's.

    platform: a platform slice (plan.platform_slice / probe_platform_slice; "spec" holds config's
    overrides of the row, "hardware" the row a variant names, if any). The check is platforms.resolve_platform's: the row's device
    name pattern, or, for a cpu row, config overrides that describe the detected CPU.
    """
    from tokencarbon.platforms import resolve_platform

    name = hardware.get("device_name")
    if name is None:
        raise HardwareMismatchError(
            f"platform {platform['name']!r} needs a GPU whose name matches "
            f"{platform['device_name_pattern']!r}, but no CUDA device is visible here; run its cells "
            "on such a machine, or measure platform 'cpu' here"
        )
    if re.fullmatch(platform["device_name_pattern"], name):
        return  # the whole name, as platforms.rows_matching matches rows
    resolve_platform(platform["name"], name, platform.get("spec"), row=platform.get("hardware"))


def software_versions() -> dict[str, str]:
    """Versions a cell records: Python, torch and its CUDA, transformers, tokencarbon, and the git
    commit of this checkout. transformers' version is read from its installed metadata, not by
    importing it (about 0.9 s a cell on a CPU, for a version string); "not installed" where it
    is absent."""
    from importlib import metadata

    import torch

    import tokencarbon

    try:
        transformers_version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        transformers_version = "not installed"
    return {
        "python": pyplatform.python_version(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "transformers": transformers_version,
        "tokencarbon": tokencarbon.__version__,
        "git_commit": git_commit(),
    }


def git_commit() -> str:
    """HEAD of the tokencarbon checkout, with '+dirty' for uncommitted changes; 'unknown' outside git."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")
