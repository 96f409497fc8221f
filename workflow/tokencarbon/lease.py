"""GPU leases on one node: each cell running at the same time takes a distinct GPU.

    with lease_gpu(lock_dir, cell="torch/llama-7b/bs8") as lease:
        gpu = apply(lease)  # before anything initialises CUDA; gpu goes to the log and meta.json
        ...                 # the cell, which sees the leased GPU as CUDA device 0

Snakemake's `resources: gpu=1` only counts GPUs; the lease says which one. A lease is an
exclusive flock on a file in lock_dir. The kernel drops it when its process dies, even on
SIGKILL, so no stale lease outlives a crashed cell and nothing ever needs cleaning up.
TOKENCARBON_FAKE_GPUS=N stands in for N GPUs where NVML is absent (tests on CPU machines).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pynvml

from tokencarbon.errors import ConfigError, HardwareMismatchError, TokencarbonError

FAKE_GPUS_ENV = "TOKENCARBON_FAKE_GPUS"


class LeaseTimeoutError(TokencarbonError):
    """Every GPU stayed leased by other cells for the whole wait."""


@dataclass
class GpuLease:
    """A leased GPU: its NVML index and UUID (None without NVML), held until release()."""

    index: int
    uuid: str | None
    lock_path: Path
    _fd: int | None = field(default=None, repr=False)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.ftruncate(fd, 0)  # still locked, so no new holder's line is erased
        # LOCK_UN, not only close: a forked child shares the open file and would keep the lock.
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> GpuLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _nvml_uuids() -> list[str] | None:
    """UUIDs of the GPUs NVML sees, by NVML index; None where there is no NVIDIA driver."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        return [
            pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
            for i in range(pynvml.nvmlDeviceGetCount())
        ]
    finally:
        pynvml.nvmlShutdown()


def _parse_visible(visible: str, uuids: list[str] | None) -> list[int]:
    """CUDA_VISIBLE_DEVICES as NVML indices; its entries are indices or (prefixes of) GPU UUIDs."""
    indices = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry in ("", "-1"):  # CUDA ignores this entry and all after it
            break
        if entry.isdigit() and (uuids is None or int(entry) < len(uuids)):
            indices.append(int(entry))
            continue
        matches = (
            [i for i, u in enumerate(uuids) if u.startswith(entry)]
            if uuids is not None and entry.startswith("GPU-")
            else []
        )
        if len(matches) != 1:
            valid = (
                f"GPU indices 0..{len(uuids) - 1} or UUIDs {uuids}"
                if uuids is not None
                else "GPU indices (UUIDs need NVML, which is absent here)"
            )
            raise HardwareMismatchError(
                f"CUDA_VISIBLE_DEVICES={visible!r}: entry {entry!r} names no single GPU; "
                f"expected {valid}; MIG instances are not supported"
            )
        indices.append(matches[0])
    return indices


def _visible_indices(uuids: list[str] | None) -> list[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return _parse_visible(visible, uuids)
    if uuids is not None:
        return list(range(len(uuids)))
    fake = os.environ.get(FAKE_GPUS_ENV, "0").strip()
    if not fake.isdigit():
        raise ConfigError(
            f"environment variable {FAKE_GPUS_ENV}={fake!r}: expected a whole number >= 0 of "
            "fake GPUs (used only where NVML is absent)"
        )
    return list(range(int(fake)))


def visible_gpu_indices() -> list[int]:
    """NVML indices of the GPUs this job may use.

    From CUDA_VISIBLE_DEVICES where a scheduler set it (SLURM does for a gres job), else every GPU
    NVML sees, else TOKENCARBON_FAKE_GPUS fake ones, else none.
    """
    return _visible_indices(_nvml_uuids())


def _lock_name(index: int, uuid: str | None) -> str:
    # The UUID keeps leases apart where the same index means different GPUs: a lock_dir shared
    # by several nodes, or SLURM jobs that each see their own GPU as "0".
    return f"gpu{index}.lock" if uuid is None else f"gpu{index}-{uuid}.lock"


def _try_lock(path: Path, index: int, uuid: str | None, cell: str) -> GpuLease | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise ConfigError(
            f"GPU lock file {path}: cannot be opened ({exc}); expected a writable lock directory"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        raise ConfigError(
            f"GPU lock file {path}: flock failed ({exc}); put the lock directory on a file "
            "system with flock, e.g. a node-local one under /tmp"
        ) from exc
    holder = {
        "pid": os.getpid(),
        "cell": cell,
        "host": socket.gethostname(),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return GpuLease(index, uuid, path, fd)


def lease_gpu(
    lock_dir: str | Path,
    *,
    cell: str = "",
    devices: Sequence[int] | None = None,
    timeout_s: float = 600.0,
    poll_s: float = 0.1,
) -> GpuLease:
    """Lease the first free GPU of `devices` (default: visible_gpu_indices()).

    Waits up to timeout_s while all are leased, then raises LeaseTimeoutError naming the holders.
    `cell` names the holder in the lock file, for that message.
    """
    lock_dir = Path(lock_dir)
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"GPU lock directory {lock_dir}: cannot be created ({exc}); expected a writable "
            "directory"
        ) from exc
    uuids = _nvml_uuids()
    indices = _visible_indices(uuids) if devices is None else list(devices)
    if not indices:
        raise HardwareMismatchError(
            f"no GPU to lease: CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
            f"NVML {'sees no GPU' if uuids is not None else 'is absent'}, "
            f"{FAKE_GPUS_ENV}={os.environ.get(FAKE_GPUS_ENV)!r}; run GPU cells where a GPU is "
            "visible"
        )
    candidates = []
    for index in indices:
        uuid = uuids[index] if uuids is not None and index < len(uuids) else None
        candidates.append((index, uuid, lock_dir / _lock_name(index, uuid)))
    deadline = time.monotonic() + timeout_s
    while True:
        for index, uuid, path in candidates:
            lease = _try_lock(path, index, uuid, cell)
            if lease is not None:
                return lease
        if time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    holders = "; ".join(f"{path.name} held by {_read_holder(path)}" for _, _, path in candidates)
    raise LeaseTimeoutError(
        f"no GPU free after waiting {timeout_s:g} s: all {len(indices)} GPU(s) {indices} are "
        f"leased in {lock_dir} ({holders}); let those cells finish, run fewer at once "
        f"(snakemake --resources gpu=N with N <= {len(indices)}), or wait longer"
    )


def _read_holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "a holder that has not written yet"
    except OSError as exc:
        return f"an unreadable holder ({exc})"


def apply(lease: GpuLease) -> dict[str, Any]:
    """Make the leased GPU this process's CUDA device 0; call it before anything initialises CUDA.

    Returns {"gpu_index": NVML index, "gpu_uuid": UUID or None} for the log and meta.json.
    """
    if not lease.held:
        raise TokencarbonError(
            f"the GPU lease on {lease.lock_path} was released; apply() needs a held lease"
        )
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise TokencarbonError(
            f"CUDA is already initialised in this process, so leasing GPU {lease.index} cannot "
            f"take effect (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r} was "
            "read at initialisation); call tokencarbon.lease.apply() before any CUDA work"
        )
    # NVML numbers GPUs in PCI bus order; this makes CUDA read the index the same way, so the
    # power sidecar (NVML) and the model (CUDA) measure and use the same GPU.
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = str(lease.index)
    return {"gpu_index": lease.index, "gpu_uuid": lease.uuid}
