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


def check_platform(platform: dict[str, Any], hardware: dict[str, Any]) -> None:
    """Raise HardwareMismatchError unless the detected device is the platform's."""
    name = hardware.get("device_name")
    if name is None:
        raise HardwareMismatchError(
            f"platform {platform['name']!r} needs a GPU whose name matches "
            f"{platform['device_name_pattern']!r}, but no CUDA device is visible here; run its cells "
            "on such a machine, or measure platform 'cpu' here"
        )
    if not re.search(platform["device_name_pattern"], name):
        raise HardwareMismatchError(
            f"platform {platform['name']!r} expects a device matching "
            f"{platform['device_name_pattern']!r} (resources/platforms.csv), but this machine's "
            f"device is {name!r}; configure the platform this machine is"
        )


def software_versions() -> dict[str, str]:
    import torch
    import transformers

    import tokencarbon

    return {
        "python": pyplatform.python_version(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "transformers": transformers.__version__,
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
