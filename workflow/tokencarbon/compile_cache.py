"""Persistent compilation caches shared by a study's jobs.

torch.compile (the continuous engine's decoder layer, flex attention's Triton kernels, the static
engine's compile_decode) costs seconds to tens of seconds per process when it starts cold: on this
project's 2-core CPU a one-matmul function took 17.8 s cold and 2.5 s with inductor's FX-graph cache
warm. Each cell is its own process, so without a cache on disk every cell pays it again. configure()
points inductor's caches (FX graphs, AOT autograd, its kernel files) and Triton's at one folder
under the study's results, so the first cell of a (torch version, device) compiles and every later
cell, job or rerun loads.

What a cache holds changes no result: inductor keys each entry by the graph, its inputs' shapes,
dtypes and strides, the inductor and Triton configuration, the torch and Triton versions and the
device's properties, and misses on any change. The folder is further split by torch version and
device name, so a results folder carried to another machine never mixes kernels. A cell records
where its cache was and whether it held anything when the cell began (meta.json "compile_cache").
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

# The variables torch 2.x (torch/_inductor/config.py, runtime/cache_dir_utils.py) and Triton read;
# a value already set in the environment is the user's choice and is kept.
INDUCTOR_DIR_VAR = "TORCHINDUCTOR_CACHE_DIR"
TRITON_DIR_VAR = "TRITON_CACHE_DIR"
CACHE_SWITCHES = {"TORCHINDUCTOR_FX_GRAPH_CACHE": "1", "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}


def cache_key(torch_version: str, device_name: str) -> str:
    """The cache folder's name for a torch version and a device: 'torch-<version>_<device>', each
    reduced to letters, digits, '.', '+' and '-' (e.g. 'torch-2.11.0+cu130_NVIDIA-H100-80GB-HBM3').
    Raises ValueError for an empty torch version or device name."""
    if not torch_version or not device_name:
        raise ValueError(f"cache_key: torch version {torch_version!r}, device {device_name!r}")

    def slug(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9.+-]+", "-", text.strip()).strip("-")

    return f"torch-{slug(torch_version)}_{slug(device_name)}"


def configure(root: str | Path, device_name: str, environ: dict | None = None) -> dict[str, Any]:
    """Point torch's and Triton's compilation caches at <root>/<cache_key(torch, device_name)>/
    (inductor/ and triton/), creating it, unless the environment already names a cache folder;
    turn inductor's FX-graph and AOT-autograd caches on. Call it before the first torch.compile of
    the process (inductor reads the folder when it first writes or looks up). environ: the mapping
    to change (default os.environ).

    Returns what a cell records: {"dir", "key", "warm" (the folder held cache files before this
    call), "set_by" ("tokencarbon" or "environment")}."""
    env = os.environ if environ is None else environ
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:  # torch imported from a path without metadata
        import torch

        torch_version = torch.__version__
    key = cache_key(torch_version, device_name)
    if INDUCTOR_DIR_VAR in env:
        folder = Path(env[INDUCTOR_DIR_VAR])
        set_by = "environment"
    else:
        folder = Path(root) / key
        set_by = "tokencarbon"
        env[INDUCTOR_DIR_VAR] = str(folder / "inductor")
        env.setdefault(TRITON_DIR_VAR, str(folder / "triton"))
    for name, value in CACHE_SWITCHES.items():
        env.setdefault(name, value)
    warm = folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))
    folder.mkdir(parents=True, exist_ok=True)
    return {"dir": str(folder), "key": key, "warm": warm, "set_by": set_by}


@contextlib.contextmanager
def configured(root: str | Path, device_name: str) -> Iterator[dict[str, Any]]:
    """configure() on os.environ for the block, the variables it set or changed restored after it
    (a process that runs several cells, such as a test, never carries one cell's cache folder into
    the next). Yields configure()'s record."""
    names = [INDUCTOR_DIR_VAR, TRITON_DIR_VAR, *CACHE_SWITCHES]
    before = {name: os.environ.get(name) for name in names}
    try:
        yield configure(root, device_name)
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
