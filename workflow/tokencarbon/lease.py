"""Exclusive use of the devices a cell measures: GPU and CPU leases, and a cell that dies with the
process that started it.

    with lease_gpu(default_lock_dir(), cell="cpu/llama-7b/bs8") as lease:
        gpu = apply(lease)  # before anything initialises CUDA; gpu goes to the log and meta.json
        ...                 # the cell, which sees the leased GPU as CUDA device 0

    with lease_cpus(default_lock_dir(), 2, cell="cpu/tiny-llama/bs1") as lease:
        pin(lease.cpus)     # every thread of the process runs on the leased logical CPUs only
        ...

Snakemake's `resources: gpu=1` and `--cores` only count devices; a lease says which ones, and
keeps two measurements off the same device. A lease is an exclusive flock on one file per device
in the lock directory. The kernel drops it when its process dies, even on SIGKILL, so no stale
lease outlives a crashed cell and nothing ever needs cleaning up; while a process lives and holds
it (an orphaned cell, say), nothing else measures on that device.

die_with_supervisor() ends the calling process when whoever started it dies: Snakemake runs a
script job as `bash -c "set -euo pipefail; python script"`, and a SIGKILLed Snakemake leaves that
shell, and so its cell, running; the cell watches the shell and the first non-shell ancestor.

TOKENCARBON_FAKE_GPUS=N stands in for N GPUs where NVML is absent (tests on CPU machines);
TOKENCARBON_LEASE_DIR overrides the lock directory (tests keep their leases apart from real runs).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pynvml

from tokencarbon.errors import ConfigError, HardwareMismatchError, TokencarbonError

FAKE_GPUS_ENV = "TOKENCARBON_FAKE_GPUS"
LEASE_DIR_ENV = "TOKENCARBON_LEASE_DIR"
# A cell waits this long for its devices by default: a CPU cell may wait for another cell of the
# same CPUs to finish, which on the CPU default takes minutes, on a real model much longer.
CELL_LEASE_TIMEOUT_S = 6 * 3600.0


class LeaseTimeoutError(TokencarbonError):
    """Every device stayed leased by other cells for the whole wait."""


def default_lock_dir() -> Path:
    """$TOKENCARBON_LEASE_DIR, else /tmp/tokencarbon-leases-<uid>: node-local, one per user."""
    override = os.environ.get(LEASE_DIR_ENV)
    return Path(override) if override else Path(f"/tmp/tokencarbon-leases-{os.getuid()}")


# ---------------------------------------------------------------- one lock file per device


@dataclass
class _Lock:
    """An exclusive flock on one device's lock file, released by release() or process death."""

    path: Path
    fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        os.ftruncate(fd, 0)  # still locked, so no new holder's line is erased
        # LOCK_UN, not only close: a forked child shares the open file and would keep the lock.
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _mkdir(lock_dir: Path, what: str) -> None:
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{what} lock directory {lock_dir}: cannot be created ({exc}); expected a writable "
            "directory"
        ) from exc


def _try_lock(path: Path, cell: str, what: str) -> _Lock | None:
    """The lock on `path`, or None while another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise ConfigError(
            f"{what} lock file {path}: cannot be opened ({exc}); expected a writable lock directory"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        raise ConfigError(
            f"{what} lock file {path}: flock failed ({exc}); put the lock directory on a file "
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
    return _Lock(path, fd)


def _read_holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "a holder that has not written yet"
    except OSError as exc:
        return f"an unreadable holder ({exc})"


def _holders(paths: Sequence[Path]) -> str:
    return "; ".join(f"{path.name} held by {_read_holder(path)}" for path in paths)


# ---------------------------------------------------------------- GPUs


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
        lock, self._fd = _Lock(self.lock_path, self._fd), None
        lock.release()

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
    """CUDA_VISIBLE_DEVICES as NVML indices; its entries are indices or (prefixes of) GPU UUIDs.

    The project's one parser of CUDA_VISIBLE_DEVICES (the lease, the NVML power source and
    cuda_device_nvml_index all go through it). An empty entry or "-1" ends the list, as in CUDA.
    Raises HardwareMismatchError for an entry that names no single GPU.
    """
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
                f"entry {entry!r} in CUDA_VISIBLE_DEVICES={visible!r} names no single GPU; "
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


def cuda_device_nvml_index(device_index: int, uuids: list[str]) -> int:
    """The NVML index of CUDA device `device_index` under this process's CUDA_VISIBLE_DEVICES.

    NVML numbers every GPU of the host in PCI order, whatever CUDA_VISIBLE_DEVICES says; CUDA
    numbers only the visible ones, in the listed order. `uuids`: NVML's, by NVML index. Without
    CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA orders unlisted GPUs fastest first, which equals PCI order on
    the single-model nodes this project measures. Raises HardwareMismatchError when the device
    does not exist.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    indices = _parse_visible(visible, uuids) if visible is not None else list(range(len(uuids)))
    if not 0 <= device_index < len(indices):
        where = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "NVML"
        raise HardwareMismatchError(
            f"GPU device_index={device_index} does not exist: {where} makes {len(indices)} "
            f"device(s) visible (NVML indices {indices}); expected 0 <= device_index < "
            f"{len(indices)}"
        )
    return indices[device_index]


def _gpu_lock_name(index: int, uuid: str | None) -> str:
    # The UUID keeps leases apart where the same index means different GPUs: a lock_dir shared
    # by several nodes, or SLURM jobs that each see their own GPU as "0".
    return f"gpu{index}.lock" if uuid is None else f"gpu{index}-{uuid}.lock"


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
    _mkdir(lock_dir, "GPU")
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
        candidates.append((index, uuid, lock_dir / _gpu_lock_name(index, uuid)))
    deadline = time.monotonic() + timeout_s
    while True:
        for index, uuid, path in candidates:
            lock = _try_lock(path, cell, "GPU")
            if lock is not None:
                return GpuLease(index, uuid, path, lock.fd)
        if time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    raise LeaseTimeoutError(
        f"no GPU free after waiting {timeout_s:g} s: all {len(indices)} GPU(s) {indices} are "
        f"leased in {lock_dir} ({_holders([p for _, _, p in candidates])}); let those cells "
        f"finish, run fewer at once (snakemake --resources gpu=N with N <= {len(indices)}), or "
        "wait longer"
    )


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


# ---------------------------------------------------------------- CPUs


@dataclass
class CpuLease:
    """Leased logical CPUs (the kernel's CPU numbers, as sched_getaffinity gives them)."""

    cpus: tuple[int, ...]
    _locks: list[_Lock] = field(default_factory=list, repr=False)

    @property
    def held(self) -> bool:
        return bool(self._locks) and all(lock.fd is not None for lock in self._locks)

    def release(self) -> None:
        for lock in self._locks:
            lock.release()

    def record(self) -> dict[str, Any]:
        """What meta.json records of the lease."""
        return {"cpus": list(self.cpus)}

    def __enter__(self) -> CpuLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def lease_cpus(
    lock_dir: str | Path,
    n: int,
    *,
    cell: str = "",
    allowed: Sequence[int] | None = None,
    timeout_s: float = 600.0,
    poll_s: float = 0.1,
    on_wait=None,
) -> CpuLease:
    """Lease n logical CPUs of `allowed` (default: the CPUs this process may run on), all at once.

    CPUs are taken lowest first among the free ones, so two cells of n CPUs each get disjoint sets
    where 2n CPUs are allowed and run one after the other where fewer are. The choice is made under
    a directory-wide allocation lock, so two cells never each hold part of what both need. Waits up
    to timeout_s, calling on_wait(holders text) about once a minute, then raises
    LeaseTimeoutError naming the holders; HardwareMismatchError when fewer than n are allowed.
    """
    lock_dir = Path(lock_dir)
    allowed = sorted(os.sched_getaffinity(0) if allowed is None else allowed)
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"CPU lease: n={n!r} logical CPUs; expected a whole number >= 1")
    if len(allowed) < n:
        raise HardwareMismatchError(
            f"the platform describes {n} logical CPUs (resources/platforms.csv, logical_cpus) but "
            f"this process may use only {len(allowed)}: {allowed}; run it where {n} are allowed "
            "or describe this CPU's slice in the platform row"
        )
    _mkdir(lock_dir, "CPU")
    paths = {cpu: lock_dir / f"cpu{cpu}.lock" for cpu in allowed}
    deadline = time.monotonic() + timeout_s
    next_note = time.monotonic() + 60.0
    while True:
        allocation = _try_lock(lock_dir / "cpus.alloc.lock", cell, "CPU")
        if allocation is not None:
            taken: list[tuple[int, _Lock]] = []
            try:
                for cpu in allowed:
                    lock = _try_lock(paths[cpu], cell, "CPU")
                    if lock is not None:
                        taken.append((cpu, lock))
                        if len(taken) == n:
                            return CpuLease(tuple(c for c, _ in taken), [lk for _, lk in taken])
                for _, lock in taken:
                    lock.release()
            finally:
                allocation.release()
        now = time.monotonic()
        if now >= deadline:
            break
        if on_wait is not None and now >= next_note:
            on_wait(_holders(list(paths.values())))
            next_note = now + 60.0
        time.sleep(poll_s)
    raise LeaseTimeoutError(
        f"fewer than {n} of the logical CPUs {allowed} free after waiting {timeout_s:g} s, leased "
        f"in {lock_dir} ({_holders(list(paths.values()))}); let those cells finish (a holder "
        f"whose Snakemake is gone is an orphan: end it by its pid), or wait longer"
    )


def pin(cpus: Sequence[int]) -> None:
    """Run every thread of this process, and any it starts later, on `cpus` only.

    os.sched_setaffinity(0, ...) moves only the calling thread; threads a library started before
    (a torch or OpenMP pool) keep their old CPUs, so each thread in /proc/self/task is moved too.
    """
    cpus = set(cpus)
    os.sched_setaffinity(0, cpus)
    task_dir = Path("/proc/self/task")
    for task in task_dir.iterdir() if task_dir.is_dir() else []:
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (ProcessLookupError, FileNotFoundError):
            continue  # the thread ended meanwhile


# ---------------------------------------------------------------- dying with the supervisor

# Programs that only relay a job: a shell, `time`, `env`, `nice`; the supervisor is above them.
_RELAYS = {"sh", "bash", "dash", "zsh", "ksh", "fish", "busybox", "time", "env", "nice", "timeout"}


def supervisor_chain(pid: int | None = None) -> list[psutil.Process]:
    """The ancestors of `pid` (default: this process) up to and including the first one that is
    not a relay program (a shell, time, env, nice): [parent, ..., supervisor].

    For a Snakemake script job: [bash, snakemake]. Empty for a process whose parent is init.
    """
    chain = []
    proc = psutil.Process(pid)
    while True:
        parent = proc.parent()
        if parent is None or parent.pid <= 1:
            return chain
        chain.append(parent)
        try:
            name = os.path.basename(parent.exe() or parent.name())
        except psutil.Error:
            name = parent.name()
        if name not in _RELAYS:
            return chain
        proc = parent


def die_with_supervisor(on_death=None, poll_s: float = 0.5) -> list[int]:
    """End this process with SIGKILL as soon as its parent or its supervisor (supervisor_chain)
    exits; returns the watched pids.

    PR_SET_PDEATHSIG alone would not do: the parent is the shell Snakemake starts, which outlives
    a SIGKILLed Snakemake. A daemon thread waits on pidfds (Linux >= 5.3) of the whole chain, or
    polls every poll_s elsewhere. SIGKILL, because a measurement whose driver is gone must stop at
    once; the kernel then drops the process's leases and its sidecar stops on its closed stdin.
    on_death(pid) runs first, in that thread (tests and logs).
    """
    chain = supervisor_chain()
    if not chain:
        return []

    def end(pid: int) -> None:
        if on_death is not None:
            on_death(pid)
        os.kill(os.getpid(), signal.SIGKILL)

    pidfds: dict[int, int] = {}
    if hasattr(os, "pidfd_open"):
        for proc in chain:
            try:
                pidfds[os.pidfd_open(proc.pid)] = proc.pid
            except ProcessLookupError:
                end(proc.pid)  # died before the watch began
            except OSError:
                pidfds.clear()  # no pidfds here (old kernel, seccomp): poll instead
                break

    def watch() -> None:
        if pidfds:
            poller = select.poll()
            for fd in pidfds:
                poller.register(fd, select.POLLIN)
            events = poller.poll()
            end(pidfds[events[0][0]])
        while True:
            for proc in chain:
                if not proc.is_running():  # compares start times too: no pid-reuse confusion
                    end(proc.pid)
            time.sleep(poll_s)

    threading.Thread(target=watch, name="die-with-supervisor", daemon=True).start()
    return [proc.pid for proc in chain]


@contextmanager
def cell_leases(
    platform: dict[str, Any],
    *,
    cell: str,
    lock_dir: str | Path | None = None,
    timeout_s: float = CELL_LEASE_TIMEOUT_S,
    log=None,
) -> Iterator[dict[str, Any]]:
    """The devices a cell (or probe) of `platform` measures, leased and applied for the block.

    GPU platform: a GPU, made CUDA device 0 (call before CUDA starts); yields {"gpu_index",
    "gpu_uuid"}. CPU platform: platform["logical_cpus"] CPUs, every thread pinned to them for the
    block (the previous CPUs restored after it); yields {"cpus": [...]}. log(text) receives the
    lease and any wait.
    """
    lock_dir = default_lock_dir() if lock_dir is None else Path(lock_dir)
    say = log or (lambda text: None)
    if platform["kind"] == "gpu":
        with lease_gpu(lock_dir, cell=cell, timeout_s=timeout_s) as lease:
            record = apply(lease)
            say(f"{cell}: leased GPU {record} in {lock_dir}")
            yield record
        return
    with lease_cpus(
        lock_dir,
        platform["logical_cpus"],
        cell=cell,
        timeout_s=timeout_s,
        on_wait=lambda holders: say(f"{cell}: waiting for CPUs: {holders}"),
    ) as lease:
        before = os.sched_getaffinity(0)
        pin(lease.cpus)
        say(f"{cell}: leased CPUs {list(lease.cpus)} in {lock_dir}")
        try:
            yield lease.record()
        finally:
            pin(before)  # a process that goes on (a test, an API caller) gets its CPUs back
