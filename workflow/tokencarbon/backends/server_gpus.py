"""The GPUs an OpenAI-compatible server runs on, and its processes, so that a server cell leases,
samples and watches them as a cell of our own engines does (tokencarbon.lease, the power sidecar,
tokencarbon.occupancy).

    gpus = resolve_gpus([0, "GPU-5f1c"])             # NVML: index, UUID and name of each
    own = server_processes(gpus, pid=4242)            # its process tree (or cgroup, or NVML)
    with lease_server_gpus(lock_dir, gpus, cell=...):  # no other cell measures on them meanwhile
        specs = sidecar_specs(gpus)                   # one nvml power source per GPU
        watch = ServerGpuWatch(gpus, own); watch.start() ... foreign = watch.stop()

Where the server runs matters for energy: NVML reads only this host's GPUs, so a server elsewhere
(check_server_host) is refused for energy unless a power log from its host is imported.

Processes. A server is several processes (transformers serve: the API server and a spawned model
process; vLLM: an API server and engine cores; TGI: a router and shards), and a GPU may be shared
with other work. How they are told apart, in this order:
- `pid`: the process the user names and every descendant (psutil), re-walked at each poll, so
  workers started later count too;
- `cgroup`: every process of a cgroup directory and its sub-cgroups (cgroup.procs), e.g.
  /sys/fs/cgroup/system.slice/docker-<id>.scope for a container;
- neither: the processes NVML lists on the server's GPUs when the cell starts, but the cell's own
  process (any process found there then is taken as the server's; one started later is foreign).
Inside a container NVML may list the host's pids, which match none of ours: as GpuWatch does, the
watch then says pids_mapped False.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pynvml

from tokencarbon.errors import ConfigError, HardwareMismatchError
from tokencarbon.lease import CELL_LEASE_TIMEOUT_S, GpuLease, _parse_visible, lease_gpu
from tokencarbon.occupancy import gpu_process_pids, tree_cpu_s

KEY = "backend.openai_server"


@dataclass(frozen=True)
class ServerGpu:
    """One GPU of the server: NVML index (PCI bus order, as nvidia-smi numbers them), UUID, name."""

    index: int
    uuid: str
    name: str


# ---------------------------------------------------------------- which GPUs


def _nvml_devices() -> list[tuple[str, str]]:
    """(UUID, name) of each GPU NVML sees, by NVML index. Raises HardwareMismatchError without
    NVML (no NVIDIA driver here)."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise HardwareMismatchError(
            f"{KEY}.gpus names GPUs but NVML (the NVIDIA driver's library) is unavailable here "
            f"({exc}): a server's GPUs are read on the host the server runs on; run the cell "
            f"there, or leave {KEY}.gpus empty and import a power log (docs/server.md)"
        ) from exc
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            out.append(
                (
                    pynvml.nvmlDeviceGetUUID(handle),
                    name.decode() if isinstance(name, bytes) else name,
                )
            )
        return out
    finally:
        pynvml.nvmlShutdown()


def match_gpus(entries: Sequence[int | str], devices: Sequence[tuple[str, str]]) -> list[ServerGpu]:
    """`entries` (config: NVML indices, as int or decimal text, or UUIDs, "GPU-..." whole or a
    unique prefix) matched against `devices` ((UUID, name) by NVML index). Order kept.

    Raises ConfigError naming the entry and the valid indices and UUIDs for an entry that names no
    GPU or several, or a GPU named twice; MIG instances ("MIG-...") are not supported."""
    valid = f"valid: indices 0..{len(devices) - 1} or UUIDs {[u for u, _ in devices]}"
    out: list[ServerGpu] = []
    for entry in entries:
        text = str(entry).strip()
        if isinstance(entry, bool) or not text:
            raise ConfigError(f"{KEY}.gpus: entry {entry!r} names no GPU; {valid}")
        if text.isdigit():
            index = int(text)
            if index >= len(devices):
                raise ConfigError(f"{KEY}.gpus: GPU index {index} does not exist here; {valid}")
        else:
            found = [i for i, (u, _) in enumerate(devices) if u.startswith(text)]
            if not text.startswith("GPU-") or len(found) != 1:
                count = len(found) if text.startswith("GPU-") else "no"
                raise ConfigError(
                    f"{KEY}.gpus: entry {text!r} names {count} GPU(s); expected an index or one "
                    f"UUID (or unique prefix, 'GPU-...'); {valid}; MIG instances are not supported"
                )
            index = found[0]
        if any(g.index == index for g in out):
            raise ConfigError(f"{KEY}.gpus: GPU {index} ({devices[index][0]}) is named twice")
        out.append(ServerGpu(index, *devices[index]))
    return out


def resolve_gpus(entries: Sequence[int | str]) -> list[ServerGpu]:
    """The server's GPUs named in config (NVML indices or UUIDs) as NVML sees them on this host.
    Raises HardwareMismatchError without NVML, ConfigError for an entry that names no single GPU
    (match_gpus)."""
    if not entries:
        return []
    return match_gpus(entries, _nvml_devices())


# ---------------------------------------------------------------- which processes


def cgroup_pids(directory: str | Path) -> set[int]:
    """pids of every process in a cgroup directory and its sub-cgroups (each one's cgroup.procs;
    cgroup v1 or v2). Raises ConfigError naming the key for a folder that is no cgroup."""
    root = Path(directory)
    if not (root / "cgroup.procs").is_file():
        raise ConfigError(
            f"{KEY}.server_cgroup: {str(directory)!r} is not a cgroup directory (no cgroup.procs "
            "in it); expected e.g. /sys/fs/cgroup/system.slice/docker-<id>.scope (see "
            "/proc/<server pid>/cgroup for the server's)"
        )
    pids: set[int] = set()
    for procs in root.rglob("cgroup.procs"):
        try:
            pids |= {int(line) for line in procs.read_text().split()}
        except OSError:
            continue  # a sub-cgroup removed meanwhile
    return pids


def process_tree(pid: int) -> set[int]:
    """pid and every live descendant of it (psutil). Raises ConfigError when pid does not run."""
    try:
        root = psutil.Process(pid)
        return {root.pid} | {child.pid for child in root.children(recursive=True)}
    except psutil.NoSuchProcess as exc:
        raise ConfigError(
            f"{KEY}.server_pid: no process {pid} runs here; give the pid of the server's main "
            "process on this host (e.g. `pgrep -f 'vllm serve'`), or leave it null"
        ) from exc


@dataclass(frozen=True)
class ServerProcesses:
    """How the server's processes are found (`how`: "pid", "cgroup" or "nvml") and, for pid and
    cgroup, what; pids() gives the set now."""

    how: str
    pid: int | None = None
    cgroup: str | None = None
    found_at_start: frozenset[int] = frozenset()

    def pids(self) -> set[int]:
        """The server's pids now: the tree of `pid` (workers started since count), the cgroup's
        processes, or those NVML listed on its GPUs when identified."""
        if self.how == "pid":
            try:
                return process_tree(self.pid)
            except ConfigError:
                return set()  # it ended: nothing of it is on the GPU any more
        if self.how == "cgroup":
            return cgroup_pids(self.cgroup)
        return set(self.found_at_start)

    def record(self) -> dict[str, Any]:
        """For meta.json."""
        return {"how": self.how, "pid": self.pid, "cgroup": self.cgroup,
                "pids": sorted(self.pids())}  # fmt: skip


def server_processes(
    gpus: Sequence[ServerGpu], pid: int | None = None, cgroup: str | None = None
) -> ServerProcesses:
    """The server's processes: the tree of `pid`, or the processes of the cgroup directory
    `cgroup`, or (neither given) every process NVML lists on `gpus` now but this process.

    Raises ConfigError when both pid and cgroup are given, when the pid does not run or the cgroup
    is no cgroup directory, and (NVML identification) when no process is on the GPUs: a server
    that has not loaded its model yet, or GPUs that are not the server's. NVML identification
    takes every process there but this one, children included (a server this process started)."""
    if pid is not None and cgroup is not None:
        raise ConfigError(
            f"{KEY}: server_pid ({pid}) and server_cgroup ({cgroup!r}) both given; name the "
            "server's processes one way"
        )
    if pid is not None:
        process_tree(pid)  # raises when it does not run
        return ServerProcesses("pid", pid=pid)
    if cgroup is not None:
        cgroup_pids(cgroup)
        return ServerProcesses("cgroup", cgroup=str(cgroup))
    pynvml.nvmlInit()
    try:
        listed = set()
        for gpu in gpus:
            listed |= set(gpu_process_pids(gpu.index))
    finally:
        pynvml.nvmlShutdown()
    # Only this process is left out: the client holds no CUDA context, its sidecar none either,
    # and a server it started itself (a test, a cell that launches its server) is a child of it.
    found = listed - {os.getpid()}
    if not found:
        raise ConfigError(
            f"{KEY}.gpus: NVML lists no process on GPU(s) {[g.index for g in gpus]} but this "
            "one; start the server (with its model loaded) before the cell, check the indices "
            f"(nvidia-smi), or name its processes with {KEY}.server_pid or server_cgroup"
        )
    return ServerProcesses("nvml", found_at_start=frozenset(found))


# ---------------------------------------------------------------- leases and power sources


@contextmanager
def lease_server_gpus(
    lock_dir: str | Path,
    gpus: Sequence[ServerGpu] | Sequence[int],
    *,
    cell: str,
    timeout_s: float = CELL_LEASE_TIMEOUT_S,
) -> Iterator[list[GpuLease]]:
    """Lease every GPU of the server (tokencarbon.lease's flocks, one per GPU) for the block, so
    that no other cell measures on them meanwhile. Unlike a cell of our own engines, nothing is
    made CUDA device 0 (the client starts no CUDA). Each lease waits up to timeout_s; raises
    LeaseTimeoutError naming the holders. All are released on leaving, also on error."""
    indices = [g.index if isinstance(g, ServerGpu) else int(g) for g in gpus]
    with ExitStack() as stack:
        leases = [
            stack.enter_context(lease_gpu(lock_dir, cell=cell, devices=[i], timeout_s=timeout_s))
            for i in indices
        ]
        yield leases


def sidecar_specs(
    gpus: Sequence[ServerGpu], uuids: Sequence[str], visible: str | None = None
) -> list[dict[str, Any]]:
    """One power-source spec ({"kind": "nvml", "device_index": d}) per server GPU, for a
    PowerSidecar each. The nvml source reads CUDA device d under this process's
    CUDA_VISIBLE_DEVICES (`visible`; None: unset), so d is the GPU's position among the visible
    ones (its NVML index where none is set). `uuids`: NVML's, by index. Raises
    HardwareMismatchError naming the variable when a server GPU is not visible to this process."""
    order = list(range(len(uuids))) if visible is None else _parse_visible(visible, list(uuids))
    specs = []
    for gpu in gpus:
        if gpu.index not in order:
            raise HardwareMismatchError(
                f"{KEY}.gpus: GPU {gpu.index} ({gpu.uuid}) is not visible to this process "
                f"(CUDA_VISIBLE_DEVICES={visible!r}); a server cell samples the server's GPUs "
                "through NVML, so unset CUDA_VISIBLE_DEVICES for it or list them there"
            )
        specs.append({"kind": "nvml", "device_index": order.index(gpu.index)})
    return specs


# ---------------------------------------------------------------- foreign processes


def classify_gpu_processes(
    seen: Mapping[int, float], own: set[int], server: set[int]
) -> dict[str, Any]:
    """Split the processes seen on the server's GPUs (pid -> most GPU memory seen, bytes, NaN where
    NVML withholds it) into the cell's own (this process's tree and the server's) and foreign ones.

    Where none of the seen pids is ours or the server's although some were seen, NVML reports
    another pid namespace (a container): then nothing can be told apart and pids_mapped is False,
    with foreign_gpu_processes NaN rather than a guess. Returns {"foreign_gpu_processes",
    "processes": [{"pid", "used_gpu_memory_bytes", "own", "server"}], "pids_mapped"}."""
    mine = own | server
    mapped = not seen or bool(mine & set(seen))
    foreign = [pid for pid in seen if pid not in mine]
    return {
        "foreign_gpu_processes": len(foreign) if mapped else math.nan,
        "processes": [
            {"pid": pid, "used_gpu_memory_bytes": memory, "own": pid in own,
             "server": pid in server}
            for pid, memory in sorted(seen.items())
        ],  # fmt: skip
        "pids_mapped": mapped,
    }


class ServerGpuWatch:
    """Other processes on the server's GPUs between start() and stop(), polled every interval_s
    from a daemon thread (as occupancy.GpuWatch for one GPU of our own engines): the server's
    processes (ServerProcesses, re-read at each poll) and this process's tree are the cell's own."""

    def __init__(self, gpus: Sequence[ServerGpu], processes: ServerProcesses,
                 interval_s: float = 1.0) -> None:  # fmt: skip
        self.gpus, self.processes, self.interval_s = list(gpus), processes, interval_s
        self._seen: dict[int, float] = {}
        self._server: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = None

    def _poll(self) -> None:
        self._server |= self.processes.pids()
        for gpu in self.gpus:
            try:
                for pid, memory in gpu_process_pids(gpu.index).items():
                    self._seen[pid] = max(memory, self._seen.get(pid, -math.inf))
            except pynvml.NVMLError as exc:
                self._error = str(exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._poll()

    def start(self) -> None:
        pynvml.nvmlInit()
        self._poll()
        self._thread = threading.Thread(target=self._run, name="server-gpu-watch", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """classify_gpu_processes over the window, plus "gpus" (indices), "server" (how its
        processes were found, ServerProcesses.record) and "error" (NVML's, or None)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._poll()
        pynvml.nvmlShutdown()
        _, own = tree_cpu_s()
        return classify_gpu_processes(self._seen, own, self._server) | {
            "gpus": [g.index for g in self.gpus],
            "server": self.processes.record(),
            "error": self._error,
        }


# ---------------------------------------------------------------- where the server runs


def _local_addresses() -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out = set()
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    out.add(ipaddress.ip_address(a.address.split("%", 1)[0]))
                except ValueError:
                    continue
    return out


def server_host_is_local(base_url: str) -> bool:
    """Whether base_url's host is this machine: a loopback address, one of this host's interface
    addresses (psutil), or a name that resolves only to such addresses (getaddrinfo; no
    connection is made). A name that does not resolve is not local."""
    host = urlsplit(base_url).hostname or ""
    if host in ("localhost", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        addresses = {ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos}
    local = _local_addresses()
    return bool(addresses) and all(a.is_loopback or a in local for a in addresses)


def check_server_host(
    base_url: str,
    gpus: Sequence[Any],
    imported_power_log: str | None,
    platform: str = "<platform>",
    platform_kind: str = "gpu",
) -> str:
    """How a server cell gets its energy: "nvml" (the server is on this host and its GPUs are
    named), "modeled_cpu" (a CPU platform: the server on this host, its process tree's CPU time
    through the modeled CPU source, ServerProcesses giving the tree) or "imported" (a power log of
    the server's host is given). Raises ConfigError naming the keys otherwise: a server on another
    host without an imported power log (this host cannot read its devices), or a local GPU
    server whose GPUs are not named."""
    if imported_power_log:
        return "imported"
    local = server_host_is_local(base_url)
    if not local:
        raise ConfigError(
            f"{KEY}.base_url: {base_url!r} is a server on another host, whose GPUs this host "
            f"cannot read: its energy needs a power log written on that host (nvidia-smi, dcgmi or "
            f"CodeCarbon), imported with platforms.{platform}.imported.power_log and "
            f"platforms.{platform}.imported.timing (docs/import.md); or run the cell on the "
            "server's host"
        )
    if platform_kind == "cpu":
        return "modeled_cpu"
    if not gpus:
        raise ConfigError(
            f"{KEY}.gpus: empty for the local server {base_url!r}; name the GPUs it runs on (NVML "
            "indices or UUIDs, as nvidia-smi -L lists them) so they are leased and sampled, or "
            f"import a power log with platforms.{platform}.imported.power_log"
        )
    return "nvml"


def nvml_uuids_here() -> list[str]:
    """NVML's GPU UUIDs by index (for sidecar_specs). Raises HardwareMismatchError without NVML."""
    return [u for u, _ in _nvml_devices()]


def visible_devices() -> str | None:
    """This process's CUDA_VISIBLE_DEVICES (None: unset), for sidecar_specs."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")
