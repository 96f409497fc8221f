"""One cell: a model on a platform at one batch size (static, bs{n}) or one max_num_seqs
(continuous batching, cb{n}), its work timed and its power sampled.

Order of events: check the workload, the serving settings and (TensorRT-LLM) the engine against the
cell; lease the devices it measures (tokencarbon.lease: a GPU, or the platform's logical CPUs, every
thread pinned to them); check the hardware and point torch's compilation caches at the study's
results/.cache (tokencarbon.compile_cache); launch the power sidecar, whose start-up then overlaps
the engine's build; build the engine; warm it up (the torch engines: 8 tokens per request with the
cache and graphs sized for the full lengths); sample idle power for `idle_s`, or reuse the idle
window the device sampled less than `idle_share_s` before (tokencarbon.idle_share); watch for
other processes on the devices; run the measured work `run.repeats` times (static: every batch of
the workload; continuous: the whole request set, served by the engine's serve()), each repeat its
own window; stop both; then write batches.parquet (and, continuous, requests.parquet and
steps.parquet), power.parquet and meta.json, each atomically and meta.json last: a cell killed
part-way leaves no file that looks finished. meta.json's "timeline" says how long each of these
steps took (tokencarbon.timeline). Progress goes to the console (stdout, which Snakemake shows)
and to the log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tokencarbon import idle_share, parts, tables
from tokencarbon.arrivals import arrival_times_s
from tokencarbon.backends import Request, ServingResult
from tokencarbon.compile_cache import configured as compile_cache_configured
from tokencarbon.config import PAGED_DEFAULTS
from tokencarbon.energy import idle_power
from tokencarbon.errors import ConfigError, InputError, TokencarbonError
from tokencarbon.hardware import check_platform, detect, software_versions
from tokencarbon.lease import CELL_LEASE_TIMEOUT_S, cell_leases
from tokencarbon.models import resolve_architecture
from tokencarbon.records import CellMeta, gpu_uuid
from tokencarbon.layout import CONTINUOUS, MODE_PREFIX, STATIC, CellKey
from tokencarbon.quantization import of_model
from tokencarbon.quantization import record as quantization_record
from tokencarbon.timeline import Timeline

# Progress on the console: a line when a repeat starts and ends, and at most one per this many
# seconds in between, so long cells show they are alive without burying Snakemake's messages.
PROGRESS_INTERVAL_S = 10.0
# A console line when other processes took more than this share of the cell's CPUs (a few ticks of
# kernel threads are always there), or the hypervisor stole more than it; the QA flags' own
# thresholds are metrics'.
FOREIGN_NOTE_SHARE = 0.05


def group_batches(workload: pd.DataFrame, batch_size: int) -> list[pd.DataFrame]:
    """The workload in order, cut into static batches of batch_size (the last may be smaller)."""
    return [workload.iloc[i : i + batch_size] for i in range(0, len(workload), batch_size)]


def serving_settings(serving: Mapping[str, Any] | None, batch_size: int) -> dict[str, Any]:
    """Params `serving` checked and completed: {"mode", "max_num_seqs", "arrival",
    "request_rate_per_s", "seed"} and, continuous, the paged engine's gpu_memory_utilization,
    block_size and max_num_batched_tokens (config.PAGED_DEFAULTS where absent). None (the params of cells made before continuous batching) and
    {"mode": "static"} mean a static cell. A continuous cell's max_num_seqs is its batch_size (the
    cb{n} of its folder). Raises ConfigError naming the key and the valid values."""
    if serving is None:
        serving = {"mode": STATIC}
    if not isinstance(serving, Mapping):
        raise ConfigError(f"params serving: {serving!r}; expected a mapping with a 'mode' key")
    known = {"mode", "max_num_seqs", "arrival", "request_rate_per_s", "seed", *PAGED_DEFAULTS}
    unknown = sorted(set(serving) - known)
    if unknown:
        raise ConfigError(f"params serving: unknown key(s) {unknown}; expected some of {sorted(known)}")
    mode = serving.get("mode", STATIC)
    if mode not in MODE_PREFIX:
        raise ConfigError(f"serving.mode: {mode!r}; expected one of {sorted(MODE_PREFIX)}")
    if mode == STATIC:
        # every request of a batch is there when it starts: offline, in the serving sense
        return {"mode": STATIC, "max_num_seqs": None, "arrival": "offline",
                "request_rate_per_s": None, "seed": None}  # fmt: skip
    max_num_seqs = serving.get("max_num_seqs", batch_size)
    if max_num_seqs != batch_size:
        raise ConfigError(
            f"serving.max_num_seqs: {max_num_seqs!r} for the continuous cell cb{batch_size}; a "
            f"continuous cell's max_num_seqs is its batch size ({batch_size})"
        )
    arrival = serving.get("arrival", "offline")
    rate = serving.get("request_rate_per_s")
    seed = serving.get("seed", 0)
    arrival_times_s(0, arrival, rate, seed)  # checks the three keys
    paged = {key: serving.get(key, default) for key, default in PAGED_DEFAULTS.items()}
    return {"mode": CONTINUOUS, "max_num_seqs": batch_size, "arrival": arrival,
            "request_rate_per_s": rate, "seed": seed, **paged}  # fmt: skip


def build_requests(workload: pd.DataFrame, settings: Mapping[str, Any]) -> list[Request]:
    """The workload as the request set of a continuous cell, in workload order, with the arrival
    times of settings (tokencarbon.arrivals)."""
    times = arrival_times_s(
        len(workload), settings["arrival"], settings["request_rate_per_s"], settings["seed"]
    )
    return [
        Request(str(rid), tuple(int(t) for t in ids), int(n_out), float(at))
        for rid, ids, n_out, at in zip(
            workload["request_id"], workload["prompt_token_ids"], workload["output_tokens"], times
        )
    ]


def check_serving_result(result: ServingResult, requests: Sequence[Request], where: str) -> None:
    """Refuse a serving result whose records cannot be true: every request served exactly once
    with its own prompt and output lengths; arrival <= first token <= finish, on both clocks;
    nothing before the window's start or after its end; no arrival earlier than its schedule;
    steps in order inside the window. Raises TokencarbonError naming the request or step."""
    if not result.start_ns <= result.end_ns or not result.start_wall_ns <= result.end_wall_ns:
        raise TokencarbonError(f"{where}: the serving window ends before it starts ({result})")
    expected = {r.request_id: r for r in requests}
    seen: set[str] = set()
    for rec in result.requests:
        req = expected.get(rec.request_id)
        if req is None or rec.request_id in seen:
            raise TokencarbonError(
                f"{where}: request {rec.request_id!r} is "
                f"{'served twice' if req is not None else 'not in the request set'}"
            )
        seen.add(rec.request_id)
        if (rec.input_tokens, rec.output_tokens) != (len(req.prompt), req.output_len):
            raise TokencarbonError(
                f"{where}: request {rec.request_id!r} served {rec.input_tokens} prompt and "
                f"{rec.output_tokens} output tokens; its request has {len(req.prompt)} and "
                f"{req.output_len} (every request generates exactly its reference length)"
            )
        for clock, (a, f, e, start, end) in {
            "monotonic": (rec.arrival_ns, rec.first_token_ns, rec.finish_ns,
                          result.start_ns, result.end_ns),
            "wall": (rec.arrival_wall_ns, rec.first_token_wall_ns, rec.finish_wall_ns,
                     result.start_wall_ns, result.end_wall_ns),
        }.items():  # fmt: skip
            if not start <= a <= f <= e <= end:
                raise TokencarbonError(
                    f"{where}: request {rec.request_id!r}, {clock} clock: expected window start "
                    f"{start} <= arrival {a} <= first token {f} <= finish {e} <= window end {end}"
                )
        # An arrival is when the request entered the queue: never before its schedule (1 ms of
        # slack for reading the clock).
        scheduled_ns = result.start_ns + round(req.arrival_s * 1e9)
        if rec.arrival_ns < scheduled_ns - 1_000_000:
            raise TokencarbonError(
                f"{where}: request {rec.request_id!r} arrived at {rec.arrival_ns} ns, before its "
                f"scheduled {req.arrival_s:.6f} s after the start ({scheduled_ns} ns)"
            )
    missing = sorted(set(expected) - seen)
    if missing:
        raise TokencarbonError(f"{where}: {len(missing)} request(s) never served: {missing[:5]}")
    previous = result.start_wall_ns
    for k, step in enumerate(result.steps):
        if step.step_index != k or not previous <= step.start_wall_ns <= step.end_wall_ns:
            raise TokencarbonError(
                f"{where}: step {step.step_index} (position {k}) starts at {step.start_wall_ns} "
                f"ns; steps must be numbered 0.. in order, each starting at or after the previous "
                f"one ({previous}) and ending after it starts"
            )
        if step.end_wall_ns > result.end_wall_ns or len(step.request_ids) != len(step.request_tokens):
            raise TokencarbonError(
                f"{where}: step {k} ends after the window or lists {len(step.request_ids)} "
                f"requests with {len(step.request_tokens)} token counts"
            )
        previous = step.start_wall_ns


def max_concurrent_requests(result: ServingResult) -> int:
    """The most requests served at once: the largest step where the engine reports steps, else
    the most requests between their first token and finish at any one time (a lower bound: a
    request is in flight from its prefill on)."""
    if result.steps:
        return max(len(step.request_ids) for step in result.steps)
    events = sorted(
        [(r.first_token_ns, 1) for r in result.requests]
        + [(r.finish_ns, -1) for r in result.requests],
        key=lambda e: (e[0], e[1]),  # a finish before a start at the same time
    )
    most = current = 0
    for _, change in events:
        current += change
        most = max(most, current)
    return most


class Progress:
    """Progress lines for the console and the log: `[tokencarbon] <cell> ...`.

    A script job's stdout is Snakemake's own console (its stderr goes to the rule's log), so lines
    printed to stdout show while Snakemake runs; each starts with the cell, to stay apart from
    Snakemake's messages and from other cells' lines under --cores N. Lines between a repeat's start
    and end come at most every interval_s.
    """

    def __init__(self, cell: str, stream=None, log=None, interval_s: float = PROGRESS_INTERVAL_S):
        self.cell = cell
        self.stream = sys.stdout if stream is None else stream
        self.log = sys.stderr if log is None else log
        self.interval_s = interval_s
        self._last = -math.inf

    def __call__(self, text: str, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        line = f"[tokencarbon] {self.cell}: {text}"
        for stream in {id(self.stream): self.stream, id(self.log): self.log}.values():
            print(line, file=stream, flush=True)


# ---------------------------------------------------------------- devices


class CpuDevice:
    """A CPU platform's cell: the platform's logical CPUs leased and every thread pinned to them,
    power modeled (TDP x CPU utilisation of the cell's process tree), other processes' CPU time
    and the hypervisor's steal on those CPUs watched."""

    kind, torch_device = "cpu", "cpu"

    def power_source(self, platform: Mapping[str, Any]) -> dict[str, Any]:
        return {"kind": "modeled_cpu", "tdp_w": platform["tdp_w"]}

    def state(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """CPU frequencies of the leased CPUs, now."""
        from tokencarbon.power.modeled import cpu_state

        return cpu_state(lease["cpus"])

    def watch(self, lease: Mapping[str, Any]):
        from tokencarbon.occupancy import CpuWatch

        return CpuWatch(lease["cpus"])

    def use(self, lease: Mapping[str, Any], stack: contextlib.ExitStack) -> None:
        """torch's threads on the leased CPUs while the cell runs (restored after it)."""
        import torch

        stack.callback(torch.set_num_threads, torch.get_num_threads())
        torch.set_num_threads(len(lease["cpus"]))

    def leases(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        return {"gpu_lease": None, "cpu_lease": lease}

    def lease(self, platform: Mapping[str, Any], cell: str, lock_dir, timeout_s: float, log):
        """The cell's devices leased for a with-block (lease.cell_leases): the platform's CPUs,
        this process pinned to them; yields {"cpus": [...]}."""
        return cell_leases(platform, cell=cell, lock_dir=lock_dir, timeout_s=timeout_s, log=log)

    def hardware(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """meta.json's "hardware": hardware.detect of this device's kind."""
        return detect(self.kind)

    def target_pid(self) -> int:
        """The process tree the modeled CPU power source samples: the cell's own."""
        return os.getpid()


class GpuDevice:
    """A GPU platform's cell: one GPU leased (CUDA_VISIBLE_DEVICES set before CUDA starts, so it
    is device 0), power and energy read through NVML, other processes on it watched."""

    kind, torch_device = "gpu", "cuda"

    def power_source(self, platform: Mapping[str, Any]) -> dict[str, Any]:
        return {"kind": "nvml", "device_index": 0}

    def state(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """Power limit, clocks and throttle reasons of the GPU, now."""
        from tokencarbon.power.nvml import gpu_state

        return gpu_state(0)

    def watch(self, lease: Mapping[str, Any]):
        from tokencarbon.occupancy import GpuWatch

        return GpuWatch(lease["gpu_index"])

    def use(self, lease: Mapping[str, Any], stack: contextlib.ExitStack) -> None:
        pass

    def leases(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        return {"gpu_lease": lease, "cpu_lease": None}

    def lease(self, platform: Mapping[str, Any], cell: str, lock_dir, timeout_s: float, log):
        """A free GPU leased and made CUDA device 0 (lease.cell_leases); yields {"gpu_index",
        "gpu_uuid"}."""
        return cell_leases(platform, cell=cell, lock_dir=lock_dir, timeout_s=timeout_s, log=log)

    def target_pid(self) -> int:
        return os.getpid()

    def hardware(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """meta.json's "hardware": hardware.detect of this device's kind (CUDA device 0 is the
        leased GPU: lease.apply made it so)."""
        return detect(self.kind)


DEVICES = {"cpu": CpuDevice(), "gpu": GpuDevice()}


class ServerCpuDevice(CpuDevice):
    """A server cell on a CPU platform (backend openai_server): the platform's CPUs leased as for
    our CPU cells (no other CPU cell measures beside it), power modeled from the CPU time of the
    server's process tree (server_pid: the server does the work, the cell only sends requests),
    and the server's processes counted as the cell's own, not as foreign use of the CPUs."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = int(server_pid)

    def target_pid(self) -> int:
        return self.server_pid

    def watch(self, lease: Mapping[str, Any]):
        from tokencarbon.occupancy import CpuWatch

        return CpuWatch(lease["cpus"], also_own=self.server_pid)

    def use(self, lease: Mapping[str, Any], stack: contextlib.ExitStack) -> None:
        pass  # the cell runs no torch: the server computes


class ServerGpuDevice(GpuDevice):
    """A server cell on a GPU platform (backend openai_server): the server's one GPU (gpus in its
    settings, resolved through NVML) leased without touching CUDA_VISIBLE_DEVICES (the client
    starts no CUDA), sampled by the power sidecar through NVML, and watched with the server's
    processes (server_pid, server_cgroup, or those on the GPU at the start) as the cell's own
    (server_gpus.ServerGpuWatch). Not run here yet: no GPU on the machines this was written on."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.gpus: list = []
        self.spec: dict[str, Any] | None = None

    @contextlib.contextmanager
    def lease(self, platform: Mapping[str, Any], cell: str, lock_dir, timeout_s: float, log):
        """Yields {"gpu_index", "gpu_uuid", "server_gpus": [...]} while the server's GPU is leased
        (server_gpus.lease_server_gpus)."""
        from tokencarbon.backends import server_gpus
        from tokencarbon.lease import default_lock_dir

        self.gpus = server_gpus.resolve_gpus(self.settings.gpus)
        uuids = server_gpus.nvml_uuids_here()
        self.spec = server_gpus.sidecar_specs(self.gpus, uuids, server_gpus.visible_devices())[0]
        lock_dir = default_lock_dir() if lock_dir is None else lock_dir
        with server_gpus.lease_server_gpus(lock_dir, self.gpus, cell=cell, timeout_s=timeout_s):
            gpu = self.gpus[0]
            log(f"{cell}: leased the server's GPU {gpu.index} ({gpu.uuid}) in {lock_dir}")
            yield {"gpu_index": gpu.index, "gpu_uuid": gpu.uuid,
                   "server_gpus": [vars(g) for g in self.gpus]}  # fmt: skip

    def power_source(self, platform: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.spec) if self.spec is not None else {"kind": "nvml", "device_index": 0}

    def state(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        from tokencarbon.power.nvml import gpu_state

        return gpu_state(self.power_source({})["device_index"])

    def hardware(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """meta.json's "hardware": the host (hardware.detect("cpu")) and the server's GPU read
        through NVML, as the sidecar reads it: not hardware.detect("gpu"), which starts CUDA in
        this client (a context on CUDA device 0) and describes CUDA device 0, another card than
        the server's where several are visible."""
        from tokencarbon.power.nvml import describe_gpu

        gpu = self.gpus[0]
        return detect("cpu") | {
            "device_name": gpu.name,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu": describe_gpu(self.power_source({})["device_index"]),
        }

    def watch(self, lease: Mapping[str, Any]):
        from tokencarbon.backends import server_gpus

        s = self.settings
        own = server_gpus.server_processes(self.gpus, s.server_pid, s.server_cgroup)
        return server_gpus.ServerGpuWatch(self.gpus, own)


def server_device(platform: Mapping[str, Any], settings):
    """The device of a server cell on `platform` (ServerCpuDevice, ServerGpuDevice). Raises
    ConfigError naming the key where the settings do not say how its energy is read."""
    if platform["kind"] == "cpu":
        if settings.server_pid is None:
            raise ConfigError(
                f"backend.openai_server.server_pid: null on the CPU platform {platform['name']!r};"
                " its power is modeled from the server's process tree: name its main process"
            )
        return ServerCpuDevice(settings.server_pid)
    if len(settings.gpus) != 1:
        raise ConfigError(
            f"backend.openai_server.gpus: {list(settings.gpus)}; a server cell on a GPU platform "
            "samples exactly one GPU, the server's: name it (NVML index or UUID)"
        )
    return ServerGpuDevice(settings)


# ---------------------------------------------------------------- engines


def backend_options(run: dict[str, Any], engine_manifest: str | Path) -> dict[str, Any]:
    """The engine stage's backend options (the transformers manifest's "options"); {} for others."""
    if run["backend"] != "transformers":
        return {}
    import json

    path = Path(engine_manifest)
    try:
        return dict(json.loads(path.read_text())["options"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path}: not a transformers engine manifest with 'options' ({exc}); rebuild it "
            "with the engine rule"
        ) from exc


def _static_engine(arch, model, run, device, trt_engine, options, max_cache_len, stack,
                   batch_cache_len=None):  # fmt: skip
    if trt_engine is not None:
        from tokencarbon.backends import tensorrt_llm as trtllm_backend

        # The Executor holds the GPU and a worker thread until shut down, also on failure.
        return stack.enter_context(
            contextlib.closing(trtllm_backend.TrtllmEngine(trt_engine["engine_dir"]))
        )
    if run["backend"] == "transformers":
        from tokencarbon.backends.transformers_backend import engine_for_cell

        return engine_for_cell(arch, model, options, device, max_cache_len=max_cache_len)
    from tokencarbon.backends.static import TorchEngine

    return TorchEngine(
        arch,
        model["dtype"],
        device,
        seed=model["seed"],
        checkpoint=model["checkpoint"],
        cuda_graphs=run["cuda_graphs"],
        compile_decode=run["compile_decode"] and device == "cuda",
        quantization=of_model(model),
        min_cache_len=batch_cache_len,
    )


def default_serving_engine(
    arch,
    model: dict,
    run: dict,
    device: str,
    max_num_seqs: int,
    options: dict | None = None,
    max_model_len: int | None = None,
    paged: dict | None = None,
):
    """The continuous-batching engine of run["backend"]: torch's TorchServingEngine
    (tokencarbon.backends.serving; max_model_len: prompt + output tokens of the cell's longest
    request, so its cache is sized once, before the warm-up; paged: its gpu_memory_utilization,
    block_size and max_num_batched_tokens, config.PAGED_DEFAULTS where absent) or transformers'
    (TransformersEngine with max_num_seqs, its ContinuousBatchingManager) with the engine stage's
    options."""
    if run["backend"] == "transformers":
        from tokencarbon.backends.transformers_backend import engine_for_cell

        return engine_for_cell(arch, model, options, device, max_num_seqs=max_num_seqs)
    if run["backend"] != "torch":
        raise ConfigError(
            f"backend.name: {run['backend']!r} has no continuous-batching engine wired into cells; "
            "continuous cells (sweep.max_num_seqs) run with backend.name torch or transformers"
        )
    from tokencarbon.backends.serving import TorchServingEngine

    return TorchServingEngine(
        arch,
        model["dtype"],
        device,
        seed=model["seed"],
        checkpoint=model["checkpoint"],
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        cuda_graphs=run["cuda_graphs"],
        quantization=of_model(model),
        **(PAGED_DEFAULTS | (paged or {})),
    )


# ---------------------------------------------------------------- modes


@dataclasses.dataclass
class Repeat:
    """What one repeat of a cell's measured work recorded: its BATCHES rows, REQUESTS and STEPS
    rows (continuous), the most requests served at once, its output tokens and the token ids it
    generated, request by request in workload order (None where the engine returns none)."""

    batch_rows: list[dict[str, Any]]
    request_rows: list[dict[str, Any]]
    step_rows: list[dict[str, Any]]
    most_at_once: int
    tokens: int
    token_ids: list | None
    # token_digest(token_ids), where a repeat kept by an earlier job (tokencarbon.parts) has only it
    digest: str | None = None

    def token_digest(self) -> str | None:
        """SHA-256 of the tokens generated (token_digest), None where the engine returned none."""
        return self.digest if self.token_ids is None else token_digest(self.token_ids)


class StaticMode:
    """Static cells (bs{n}, the study's method): the workload cut into batches of n, each batch
    running until its longest request ends; one BATCHES row per batch."""

    name = STATIC

    def __init__(self, workload: pd.DataFrame, n: int) -> None:
        self.n = n
        self.batches = group_batches(workload, n)
        self.n_windows = len(self.batches)  # measured windows per repeat (meta.json n_batches)
        # the KV slots the longest batch needs (its longest prompt, padded to, + longest output):
        # the torch engine's cache for every batch (TorchEngine min_cache_len)
        self.cache_need = max(
            int(b["prompt_token_ids"].map(len).max()) + int(b["output_tokens"].max())
            for b in self.batches
        )

    def engine(self, cell: _Cell, device: str, options: dict, stack: contextlib.ExitStack):
        return _static_engine(cell.arch, cell.model, cell.run, device, cell.trt_engine, options,
                              cell.longest, stack, self.cache_need)  # fmt: skip

    def warm_up(self, engine, run: dict[str, Any]) -> dict[str, Any]:
        return warm_up(engine, run, [], self.batches, self.n)

    def repeat(self, engine, repeat: int, label: str, cell: _Cell) -> Repeat:
        """One repeat of the measured work: every batch in workload order, each its window."""
        say = cell.say
        say(f"{label}: {len(self.batches)} batches of up to {self.n}")
        rows, tokens, most, ids = [], 0, 0, []
        for i, batch in enumerate(self.batches):
            r = run_static_batch(engine, batch)
            rows.append({
                "repeat": repeat, "batch_index": i, **_batch_record(r),
                "prompt_lens": [len(x) for x in batch["prompt_token_ids"]],
                "output_lens": [int(n) for n in batch["output_tokens"]],
            })  # fmt: skip
            most = max(most, r.n_requests)
            tokens += r.output_tokens
            returned = ids is not None and getattr(r, "token_ids", None)
            ids = ids + list(r.token_ids) if returned else None
            say(f"{label}: batch {i + 1}/{len(self.batches)}", force=False)
        return Repeat(rows, [], [], most, tokens, ids)

    def write(self, repeats: Sequence[Repeat], outputs: Mapping[str, Any]) -> None:
        pass  # a static cell has no table beyond batches and power

    def meta(self) -> dict[str, Any]:
        """What the mode adds to meta.json: nothing."""
        return {}


class ContinuousMode:
    """Continuous-batching cells (cb{n}): the whole workload served as one request set with at
    most n requests in flight (the engine's serve()), arrivals as serving settings say; one
    BATCHES row per repeat (the request set's window), and REQUESTS and STEPS rows."""

    name = CONTINUOUS
    n_windows = 1

    def __init__(self, workload: pd.DataFrame, n: int, settings: Mapping[str, Any],
                 serving_engine: Callable[..., Any]) -> None:  # fmt: skip
        self.n, self.settings, self.serving_engine = n, settings, serving_engine
        self.requests = build_requests(workload, settings)

    def engine(self, cell: _Cell, device: str, options: dict, stack: contextlib.ExitStack):
        paged = {k: self.settings[k] for k in PAGED_DEFAULTS}
        return self.serving_engine(
            cell.arch, cell.model, cell.run, device, self.n, options=options,
            max_model_len=cell.longest, paged=paged,
        )  # fmt: skip

    def warm_up(self, engine, run: dict[str, Any]) -> dict[str, Any]:
        return warm_up(engine, run, self.requests, [], self.n)

    def check(self, result: ServingResult, engine, where: str) -> None:
        """The served result checked before any row of it is kept (check_serving_result)."""
        check_serving_result(result, self.requests, where)

    def meta(self) -> dict[str, Any]:
        """What the mode adds to meta.json: nothing for our engines' cells."""
        return {}

    def repeat(self, engine, repeat: int, label: str, cell: _Cell) -> Repeat:
        """One repeat: the whole request set served, its result checked (check) before any row
        of it is kept."""
        cell.say(f"{label}: serving {len(self.requests)} requests ({self.settings['arrival']})")
        result = engine.serve(self.requests)
        self.check(result, engine, f"{cell.name} {label}")
        ids = result.token_ids
        return Repeat(
            [_window_row(repeat, result, self.requests)],
            [{"repeat": repeat, **dataclasses.asdict(r)} for r in result.requests],
            [{"repeat": repeat, **dataclasses.asdict(s)} for s in result.steps],
            max_concurrent_requests(result),
            sum(r.output_tokens for r in result.requests),
            None if ids is None else [ids[r.request_id] for r in self.requests],
        )

    def write(self, repeats: Sequence[Repeat], outputs: Mapping[str, Any]) -> None:
        requests = [row for rep in repeats for row in rep.request_rows]
        steps = [row for rep in repeats for row in rep.step_rows]
        for rows, schema, name in ((requests, tables.REQUESTS, "requests"),
                                   (steps, tables.STEPS, "steps")):  # fmt: skip
            tables.write(pd.DataFrame(rows, columns=schema.names), outputs[name], schema)


class ServerMode(ContinuousMode):
    """A continuous-batching cell (cb{n}) whose engine is an OpenAI-compatible server already
    running (backend openai_server, tokencarbon.backends.openai_server): the request set sent with
    at most n requests in flight. Its result is checked by check_server_result (the exact-length
    check, relaxed only where the server could not force lengths or take token ids), and meta.json
    records under "server" what the server is and what its lengths were:
    {"backend", "model", "base_url", "lengths_forced", "prompt_tokens_exact", "requests_short"
    (summed over repeats), "per_repeat": check_server_result's record of each repeat}."""

    def __init__(self, workload: pd.DataFrame, n: int, settings: Mapping[str, Any],
                 server: Mapping[str, Any]) -> None:  # fmt: skip
        super().__init__(workload, n, settings, serving_engine=None)
        from tokencarbon.backends.openai_server import server_settings

        self.server = server
        self.server_settings = server_settings(server["settings"])
        self.checked: list[dict[str, Any]] = []

    def engine(self, cell: _Cell, device: str, options: dict, stack: contextlib.ExitStack):
        """openai_server.engine_for_cell: the server checked (answers, serves the model, takes
        the length fields) before the warm-up; text prompts decoded by the family's tokenizer."""
        from tokencarbon.backends.openai_server import engine_for_cell

        return engine_for_cell(self.server["settings"], max_num_seqs=self.n,
                               tokenizer=self.server.get("tokenizer"))  # fmt: skip

    def check(self, result: ServingResult, engine, where: str) -> None:
        from tokencarbon.backends.openai_server import check_server_result

        self.checked.append(check_server_result(result, self.requests, where, engine.policy))

    def meta(self) -> dict[str, Any]:
        s, first = self.server_settings, self.checked[0]
        return {"server": {
            "backend": "openai_server",
            "model": s.model,
            "base_url": s.base_url,  # server_settings refuses credentials in it
            "server_pid": s.server_pid,
            "server_cgroup": s.server_cgroup,
            "lengths_forced": first["lengths_forced"],
            "prompt_tokens_exact": first["prompt_tokens_exact"],
            "requests_short": sum(c["requests_short"] for c in self.checked),
            "per_repeat": list(self.checked),
        }}  # fmt: skip


# ---------------------------------------------------------------- one cell


@dataclasses.dataclass
class _Cell:
    """A cell checked before any device work: its slices, serving settings, mode and device."""

    name: str
    model: dict[str, Any]
    platform: dict[str, Any]
    run: dict[str, Any]
    settings: dict[str, Any]
    repeats: int
    arch: Any  # models.Architecture
    quantization: Any  # quantization.Quantization
    n_requests: int
    mode: StaticMode | ContinuousMode | ServerMode
    device: CpuDevice | GpuDevice | ServerCpuDevice | ServerGpuDevice
    longest: int  # prompt + output tokens of the longest request: the engines' caches
    trt_engine: dict[str, Any] | None  # what meta.json records of a TensorRT-LLM engine
    share_s: float  # power.idle_share_s
    say: Progress


def _checked_cell(model, platform, run, batch_size, workload, engine_manifest, serving,
                  outputs, cache_root, serving_engine, progress, server=None) -> _Cell:  # fmt: skip
    """The cell's settings and workload checked (ConfigError / InputError naming the key or value,
    before any device work), its mode, device, longest request and TensorRT-LLM engine."""
    settings = serving_settings(serving, batch_size)
    repeats = run.get("repeats", 1)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"run.repeats: {repeats!r}; expected a whole number >= 1")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size {batch_size!r}; expected a whole number >= 1")
    continuous = settings["mode"] == CONTINUOUS
    if continuous and (outputs.get("requests") is None or outputs.get("steps") is None):
        raise ConfigError(
            "a continuous cell writes requests.parquet and steps.parquet: pass out_requests and "
            "out_steps"
        )
    if len(workload) == 0:
        raise InputError("the workload holds no request; a cell needs at least one")
    name = CellKey(platform["name"], model["name"], settings["mode"], batch_size).name
    say = progress or Progress(name)
    arch = resolve_architecture(model)
    quantization = of_model(model)
    if quantization.quantized and run["backend"] == "tensorrt_llm":
        raise ConfigError(
            f"models.{model['name']}.quantization: {quantization.label()!r} is applied through "
            "torchao, which the tensorrt_llm backend does not run; use backend.name torch or "
            "transformers"
        )
    too_large = [
        max(ids) for ids in workload["prompt_token_ids"] if len(ids) and max(ids) >= arch.vocab_size
    ]
    if too_large:
        raise ConfigError(
            f"model {model['name']!r}: the workload holds token id {max(too_large)}, outside "
            f"{arch.name}'s vocabulary of {arch.vocab_size}; use a tokenizer whose vocabulary fits "
            "(families.<family>.tokenizer, or workload.builtin_vocab_size)"
        )
    if batch_size > len(workload):
        say(
            f"batch size {batch_size} > {len(workload)} requests: no batch holds {batch_size} "
            "requests; meta.json and cells.parquet record max_batch_requests"
        )
    trt_engine = _tensorrt_engine(model, platform, run, batch_size, workload, engine_manifest,
                                  continuous)  # fmt: skip
    mode, device = _mode_and_device(workload, batch_size, settings, serving_engine, run, server,
                                    platform)  # fmt: skip
    share_s = float(platform.get("idle_share_s", 0.0))
    if share_s > 0 and cache_root is None:
        raise ConfigError(
            f"power.idle_share_s: {share_s} shares idle windows through the study's cache folder; "
            "pass cache_root (the workflow passes results/.cache), or set it to 0"
        )
    # The longest request (prompt + output) sizes the engines' caches up front, so the warm-up
    # allocates and captures what the measured work uses.
    longest = int((workload["prompt_token_ids"].map(len) + workload["output_tokens"]).max())
    return _Cell(name, model, platform, run, settings, repeats, arch, quantization, len(workload),
                 mode, device, longest, trt_engine, share_s, say)  # fmt: skip


def _mode_and_device(workload, n, settings, serving_engine, run, server, platform):
    """The cell's mode and device: a server cell's (ServerMode, server_device) for backend
    openai_server, which must be continuous and have its `server` params; else StaticMode or
    ContinuousMode on the platform's device. Raises ConfigError naming what is missing."""
    continuous = settings["mode"] == CONTINUOUS
    if run["backend"] != "openai_server":
        mode = (ContinuousMode(workload, n, settings, serving_engine) if continuous
                else StaticMode(workload, n))  # fmt: skip
        return mode, DEVICES[platform["kind"]]
    if not continuous or server is None:
        raise ConfigError(
            "backend.name 'openai_server': a server cell is continuous (cb<n>: serving params "
            "with mode continuous) and needs its server params (settings, tokenizer); got "
            f"mode {settings['mode']!r}, server {'absent' if server is None else 'given'}"
        )
    mode = ServerMode(workload, n, settings, server)
    return mode, server_device(platform, mode.server_settings)


def _tensorrt_engine(model, platform, run, batch_size, workload, engine_manifest, continuous):
    """What meta.json records of the TensorRT-LLM engine the cell runs (its manifest checked
    against the cell: tensorrt_llm.engine_for_cell), None for the other backends."""
    if run["backend"] != "tensorrt_llm":
        return None
    from tokencarbon.backends import tensorrt_llm as trtllm_backend

    if platform["kind"] != "gpu":
        raise ConfigError(
            f"config key backend.name: 'tensorrt_llm' runs on GPU platforms only, and platform "
            f"{platform['name']!r} is a CPU; measure it with backend.name: torch"
        )
    if continuous:
        raise ConfigError(
            "backend.name: 'tensorrt_llm' has no continuous-batching engine wired into cells; "
            "continuous cells (sweep.max_num_seqs) run with backend.name: torch"
        )
    trt_engine = trtllm_backend.engine_for_cell(
        engine_manifest,
        model=model,
        platform=platform,
        batch_size=batch_size,
        longest_prompt=int(workload["prompt_token_ids"].map(len).max()),
        longest_output=int(workload["output_tokens"].max()),
    )
    trtllm_backend.require_tensorrt_llm()
    return trt_engine


def run_cell(
    *,
    model: dict[str, Any],
    platform: dict[str, Any],
    run: dict[str, Any],
    batch_size: int,
    workload: pd.DataFrame,
    engine_manifest: str | Path,
    out_batches: str | Path,
    out_power: str | Path,
    out_meta: str | Path,
    serving: Mapping[str, Any] | None = None,
    out_requests: str | Path | None = None,
    out_steps: str | Path | None = None,
    lock_dir: str | Path | None = None,
    lease_timeout_s: float = CELL_LEASE_TIMEOUT_S,
    serving_engine: Callable[..., Any] = default_serving_engine,
    progress: Progress | None = None,
    cache_root: str | Path | None = None,
    script_start_wall_ns: int | None = None,
    server: Mapping[str, Any] | None = None,
    server_runtime: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure one cell and write its files; returns what meta.json holds.

    model, platform, run: the config slices of tokencarbon.plan (run: backend, cuda_graphs,
    compile_decode, warmup_batches, optional repeats >= 1, default 1). serving: params `serving`
    (serving_settings); a continuous cell also needs out_requests and out_steps. engine_manifest:
    the engine stage's manifest (the tensorrt_llm backend runs the engine it names; the torch
    backend builds its engine from `model`, the manifest being the same recipe). serving_engine(
    arch, model, run, device, max_num_seqs) makes the ServingEngine of a continuous cell.
    lock_dir, lease_timeout_s: the device lease (tokencarbon.lease.cell_leases). cache_root: the
    study's cache folder (results/.cache: compilation caches, tokencarbon.compile_cache; shared
    idle windows, tokencarbon.idle_share); None leaves torch's caches as they are and needs
    platform["idle_share_s"] to be 0. script_start_wall_ns: when the job's script began, for the
    timeline meta.json records (tokencarbon.timeline).
    server: a server cell's params (backend openai_server, Plan.server_params: {"settings":
    backend.openai_server, "tokenizer": the family's}), server_runtime: its server_pid and
    server_cgroup (not params); such a cell has no engine manifest (None) and runs as ServerMode
    on a server device.

    Events in the module docstring's order, each a phase of the timeline; the measured work is
    the mode's (StaticMode, ContinuousMode), the device's interface CpuDevice or GpuDevice.
    Raises ConfigError or InputError before any device work for bad settings or workloads,
    HardwareMismatchError for the wrong hardware, LeaseTimeoutError when the devices stay taken,
    parts.DeadlinePassed (nothing measured) when the job starts after parts.START_BY_ENV's time,
    parts.RepeatsKept (its finished repeats kept for the next job) when the next repeat would end
    after parts.DEADLINE_ENV's (tokencarbon.parts).
    """
    timeline = Timeline(script_start_wall_ns)
    from tokencarbon.power.sidecar import PowerSidecar

    outputs = {"batches": out_batches, "power": out_power, "meta": out_meta,
               "requests": out_requests, "steps": out_steps}  # fmt: skip
    if server is not None:
        server = {**server, "settings": {**server["settings"], **(server_runtime or {})}}
    cell = _checked_cell(model, platform, run, batch_size, workload, engine_manifest, serving,
                         outputs, cache_root, serving_engine, progress, server)  # fmt: skip
    parts.check_start()  # a job of a grouped chunk call started after the budget's end
    timeline.since_last("checks")

    with contextlib.ExitStack() as stack:
        with timeline.phase("lease"):
            leases = cell.device.lease(platform, cell.name, lock_dir, lease_timeout_s, cell.say)
            lease = stack.enter_context(leases)
        with timeline.phase("hardware_check"):
            hardware = cell.device.hardware(lease)
            check_platform(platform, hardware)
            compile_cache = _compile_cache(cache_root, hardware, stack)
        with timeline.phase("sidecar_start"):
            # One sidecar for the idle and the run windows, started now so that its start-up (a
            # Python process importing pyarrow and opening NVML) overlaps the engine's build. It
            # samples the cell's process tree (modeled CPU) or the cell's GPU (NVML).
            sidecar = PowerSidecar(
                cell.device.power_source(platform), Path(out_power).with_name(".power.parquet"),
                platform["power_interval_s"], target_pid=cell.device.target_pid(),
            )  # fmt: skip
            sidecar.launch()
            stack.callback(sidecar.kill)  # a cell failing part-way leaves no sampler behind
        with timeline.phase("engine_build"):
            engine = _build_engine(cell, lease, engine_manifest, stack)
        with timeline.phase("warmup"):
            warmup = cell.mode.warm_up(engine, run)
        with timeline.phase("idle_window"):
            device_key = idle_share.device_key(platform["name"], lease)
            shared = _idle_window(cell, sidecar, cache_root, device_key)
        kept, key = _kept_parts(cell, hardware, workload, engine_manifest, out_meta)
        state_start = cell.device.state(lease)
        watch = cell.device.watch(lease)
        watch.start()
        with timeline.phase("measured"):
            sidecar.begin("run")
            mine, seconds = _measure(cell, engine, kept)
        with timeline.phase("sidecar_stop"):
            sidecar.stop()
            samples = sidecar.collect()
        with timeline.phase("finish"):
            foreign = watch.stop()
            state_end = cell.device.state(lease)
            idle_samples = _idle_samples(cell, samples, shared, cache_root, device_key)
            run_samples = samples[samples["phase"] == "run"]
            idle_power_w, _ = idle_power(idle_samples, where=f"{cell.name} idle window")
            versions = software_versions()
        _say_foreign(cell.say, foreign)
        records = [{
            "repeat": r.batch_rows[0]["repeat"], "most_at_once": r.most_at_once, "tokens": r.tokens,
            "token_digest": r.token_digest(), "seconds": s,
            "window_wall_ns": [r.batch_rows[0]["start_wall_ns"], r.batch_rows[-1]["end_wall_ns"]],
        } for r, s in zip(mine, seconds[len(seconds) - len(mine):])]  # fmt: skip
        idle_window = idle_share.describe(shared and shared[1], cell.platform["idle_s"], cell.share_s)
        job = parts.job_facts(records, key, versions["git_commit"], idle_samples, idle_power_w,
                              (state_start, state_end), foreign, float(engine.peak_memory_bytes()),
                              timeline.record(), idle_window)  # fmt: skip
        done = sum(len(p.repeats) for p in kept) + len(mine)
        if done < cell.repeats:
            where = parts.save(parts.parts_dir(out_meta), parts.Part(
                parts.rows_of(mine), pd.concat([idle_samples, run_samples], ignore_index=True),
                records, job), key)  # fmt: skip
            raise parts.RepeatsKept(
                f"{cell.name}: the next repeat ({max(seconds):.0f} s, the longest so far) would end "
                f"after the job's deadline ({parts.DEADLINE_ENV}): kept repeats {done - len(mine) + 1}"
                f"-{done} of {cell.repeats} in {where}; the next job of this cell on this device "
                f"with this code measures repeats {done + 1}-{cell.repeats}"
            )
        repeats = [*(r for p in kept for r in parts.repeats_of(p, Repeat)), *mine]
        if kept:  # the cell's idle window is its first job's, as a cell of one job has it
            idle_samples = kept[0].power[kept[0].power["phase"] == "idle"]
            idle_power_w, _ = idle_power(idle_samples, where=f"{cell.name} first part's idle window")
            run_samples = pd.concat([*(p.power[p.power["phase"] == "run"] for p in kept),
                                     run_samples], ignore_index=True)  # fmt: skip
            state_start = kept[0].facts["device_state"]["start"]
        with timeline.phase("write"):
            cell.mode.write(repeats, outputs)
            tables.write(pd.DataFrame([row for r in repeats for row in r.batch_rows]), out_batches,
                         tables.BATCHES)  # fmt: skip
            tables.write(
                pd.concat([idle_samples, run_samples], ignore_index=True), out_power, tables.POWER
            )
        record = _meta(
            cell, repeats, hardware=hardware, lease=lease, engine=engine, warmup=warmup,
            idle_power_w=idle_power_w, shared=shared, samples=(len(idle_samples), len(run_samples)),
            foreign=foreign, states=(state_start, state_end), versions=versions,
            compile_cache=compile_cache, timeline=timeline,
        )  # fmt: skip
        meta = CellMeta.of(parts.merged_meta(record, kept, job))
        meta.write(out_meta)
        if kept:
            parts.clear(parts.parts_dir(out_meta))
        return meta.to_json()


def _kept_parts(cell: _Cell, hardware, workload, engine_manifest, out_meta):
    """(the parts this cell's earlier jobs kept that are valid here, their key: tokencarbon.parts).
    A server cell keeps none (its repeats depend on a server outside the job)."""
    if isinstance(cell.mode, ServerMode):
        return [], {}
    settings = {"name": cell.name, "model": cell.model, "platform": cell.platform, "run": cell.run,
                "serving": cell.settings, "repeats": cell.repeats}  # fmt: skip
    key = {"device": parts.device_identity(hardware), "code": parts.code_digest(),
           "cell": parts.cell_fingerprint(settings, workload, engine_manifest)}  # fmt: skip
    kept = parts.load(parts.parts_dir(out_meta), key, cell.say)
    if sum(len(p.repeats) for p in kept) >= cell.repeats:  # only a job that stops keeps a part
        cell.say(f"kept parts hold {sum(len(p.repeats) for p in kept)} repeats of "
                 f"{cell.repeats}: removed, every repeat measured again")  # fmt: skip
        parts.clear(parts.parts_dir(out_meta))
        kept = []
    if kept:
        n = sum(len(p.repeats) for p in kept)
        cell.say(f"{n} of {cell.repeats} repeats kept by {len(kept)} earlier job(s) on this device: "
                 f"measuring repeats {n + 1}-{cell.repeats}")  # fmt: skip
    return kept, key


def _measure(cell: _Cell, engine, kept) -> tuple[list[Repeat], list[float]]:
    """The repeats this job measures, from the first not kept, each started only while the
    longest repeat timed so far (kept ones included) would end before the job's deadline
    (parts.fits; a job always runs one); with every repeat's seconds, kept ones first."""
    deadline = None if isinstance(cell.mode, ServerMode) else parts.deadline()
    seconds = [float(r["seconds"]) for p in kept for r in p.repeats]
    mine: list[Repeat] = []
    for k in range(sum(len(p.repeats) for p in kept), cell.repeats):
        if mine and not parts.fits(deadline, seconds):
            break
        start = time.monotonic()
        mine.append(_repeat(cell, engine, k))
        seconds.append(time.monotonic() - start)
    return mine, seconds


def _compile_cache(cache_root, hardware: Mapping[str, Any], stack: contextlib.ExitStack):
    """torch's compilation caches pointed at the study's cache folder for this device while the
    cell runs (compile_cache.configured: what meta.json records), or None without a cache_root."""
    if cache_root is None:
        return None
    folder = Path(cache_root) / "compile"
    return stack.enter_context(compile_cache_configured(folder, hardware["device_name"]))


def _build_engine(cell: _Cell, lease: Mapping[str, Any], engine_manifest, stack):
    """The cell's engine (its mode's) on its device, torch's threads on the leased CPUs; an engine
    with close() (transformers' manager thread) is closed when the cell ends, also on failure."""
    cell.device.use(lease, stack)
    options = backend_options(cell.run, engine_manifest)
    engine = cell.mode.engine(cell, cell.device.torch_device, options, stack)
    if hasattr(engine, "close"):
        stack.callback(engine.close)
    return engine


def _idle_window(cell: _Cell, sidecar, cache_root, device_key: str):
    """The idle window: a shared one the device sampled less than idle_share_s before
    (idle_share.lookup: (samples, whose)), or None after sampling the cell's own for idle_s."""
    shared = idle_share.lookup(cache_root, device_key, cell.share_s) if cell.share_s > 0 else None
    if shared is None:
        sidecar.begin("idle")
        time.sleep(cell.platform["idle_s"])
    return shared


def _idle_samples(cell: _Cell, samples: pd.DataFrame, shared, cache_root, device_key: str):
    """The cell's phase "idle" samples: its own (stored for later cells where idle windows are
    shared), or the shared window's."""
    if shared is not None:
        return shared[0]
    idle_samples = samples[samples["phase"] == "idle"]
    if cell.share_s > 0:
        idle_share.store(cache_root, device_key, idle_samples, cell.name)
    return idle_samples


def _repeat(cell: _Cell, engine, k: int) -> Repeat:
    """Repeat k of the measured work (the mode's), timed for the console."""
    label = f"repeat {k + 1}/{cell.repeats}"
    start = time.monotonic()
    rep = cell.mode.repeat(engine, k, label, cell)
    elapsed_s = time.monotonic() - start
    cell.say(f"{label} done: {rep.tokens} output tokens in {elapsed_s:.1f} s "
             f"({rep.tokens / elapsed_s:.1f} tok/s)")  # fmt: skip
    return rep


def _say_foreign(say: Progress, foreign: Mapping[str, Any]) -> None:
    """Console notes when other processes used the cell's devices, or the hypervisor stole its
    CPUs, for more than FOREIGN_NOTE_SHARE of its window (metrics flags them by their own
    thresholds)."""
    share = foreign.get("foreign_cpu_share", math.nan)
    steal = foreign.get("cpu_steal_share", math.nan)
    processes = foreign.get("foreign_gpu_processes", -1)
    if share > FOREIGN_NOTE_SHARE or processes > 0:
        say(
            f"other processes ran on this cell's devices: foreign CPU share {share:.3f}, "
            f"{processes} other GPU process(es); meta.json foreign_use names them"
        )
    if steal > FOREIGN_NOTE_SHARE:
        say(f"the hypervisor gave this cell's CPUs to other guests for a share of {steal:.3f} of "
            "its window (steal time): its timings include that")  # fmt: skip


def _meta(cell: _Cell, repeats: Sequence[Repeat], *, hardware, lease, engine, warmup,
          idle_power_w, shared, samples, foreign, states, versions, compile_cache,
          timeline) -> dict[str, Any]:  # fmt: skip
    """What meta.json holds of a measured cell (records.CellMeta: the CELLS keys and the rest)."""
    settings, platform, model, run = cell.settings, cell.platform, cell.model, cell.run
    batch_rows = [row for r in repeats for row in r.batch_rows]
    return {
        "platform": platform["name"],
        "model": model["name"],
        "mode": settings["mode"],
        "batch_size": cell.mode.n,
        "architecture": cell.arch.name,
        "dtype": model["dtype"],
        # weight-only quantization: scheme, group size (null: none/int8), "torchao 0.18.0"
        **quantization_record(cell.quantization),
        "backend": run["backend"],
        # tensorrt_llm: manifest, engine_dir, limits, version, build GPU; null for torch
        "engine": cell.trt_engine,
        "device_name": hardware["device_name"],
        "gpu_uuid": gpu_uuid(hardware),
        "serving": settings,
        "arrival": settings["arrival"],
        "request_rate_per_s": (
            math.nan if settings["request_rate_per_s"] is None
            else float(settings["request_rate_per_s"])
        ),  # fmt: skip
        "n_requests": cell.n_requests,
        "n_batches": cell.mode.n_windows,
        "repeats": cell.repeats,
        "max_batch_requests": max(r.most_at_once for r in repeats),
        "warmup_batches": run["warmup_batches"],
        # what the warm-up ran: passes and output tokens per request (None: whole outputs)
        "warmup": warmup,
        "window_start_wall_ns": batch_rows[0]["start_wall_ns"],
        "window_end_wall_ns": batch_rows[-1]["end_wall_ns"],
        "idle_power_w": idle_power_w,
        "idle_shared": shared is not None,
        # own or shared idle window (power.idle_share_s; tokencarbon.idle_share)
        "idle_window": idle_share.describe(shared and shared[1], platform["idle_s"], cell.share_s),
        "power_source": cell.device.power_source(platform)["kind"],
        "power_interval_s": platform["power_interval_s"],
        "peak_memory_bytes": float(engine.peak_memory_bytes()),
        # what ran, where the engine says (transformers: versions, attention, cache settings)
        "engine_description": engine.describe() if hasattr(engine, "describe") else None,
        # the engine's build and graph capture in parts (seconds; in the timeline's engine_build
        # and warmup phases): the weights, the KV pool's activation profile, compile + capture
        "engine_parts_s": dict(getattr(engine, "build_s", None) or {}) or None,
        "git_commit": versions["git_commit"],
        "hardware": hardware,
        **cell.device.leases(lease),
        "foreign_cpu_share": foreign.get("foreign_cpu_share", math.nan),
        "cpu_steal_share": foreign.get("cpu_steal_share", math.nan),
        "foreign_gpu_processes": foreign.get("foreign_gpu_processes", -1),
        "foreign_use": foreign,
        "device_state": {"start": states[0], "end": states[1]},
        "versions": versions,
        "config": {"model": model, "platform": platform, "run": run, "serving": settings,
                   **({"server": cell.mode.server} if isinstance(cell.mode, ServerMode) else {})},
        "seeds": {"weights": model["seed"], "arrivals": settings["seed"]},
        "n_power_samples": {"idle": samples[0], "run": samples[1]},
        # per repeat, a digest of the tokens generated (None where the engine does not return
        # them): equal digests, equal outputs (token_digest)
        "token_digests": [r.token_digest() for r in repeats],
        # the compilation cache this cell used (tokencarbon.compile_cache)
        "compile_cache": compile_cache,
        # where the job's time went, phase by phase (tokencarbon.timeline)
        "timeline": timeline.record(),
        "finished_wall_ns": time.time_ns(),
        # a server cell: the server, its lengths (ServerMode.meta)
        **cell.mode.meta(),
    }


# Output tokens per request in the warm-up of the engines that reach their steady kernels within
# a few steps (the torch engines): the prefill and 7 decode steps, with the cache sized and the
# decode graphs captured (3 more eager steps each) for the measured work's full lengths. Running
# whole outputs warmed nothing more and cost up to a whole batch of decode (issue 19: up to 22 s
# of a cell on an H100).
WARMUP_OUTPUT_TOKENS = 8


def token_digest(token_ids: Sequence[Sequence[int]] | None) -> str | None:
    """SHA-256 (hex) of the generated tokens of a repeat, request by request in workload order:
    each request's ids as decimal text joined by ',', requests joined by ';' (None: the engine
    returned no token ids). Two runs that generated the same tokens have the same digest."""
    if token_ids is None:
        return None
    text = ";".join(",".join(str(int(t)) for t in ids) for ids in token_ids)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def run_static_batch(engine, batch: pd.DataFrame):
    """One static batch of the workload (its rows' prompts and output lengths) on `engine`."""
    return engine.run_batch(
        [list(ids) for ids in batch["prompt_token_ids"]],
        [int(n) for n in batch["output_tokens"]],
    )


def warm_up(engine, run: dict[str, Any], requests: Sequence[Request],
            batches: Sequence[pd.DataFrame], batch_size: int) -> dict[str, Any]:  # fmt: skip
    """Run run["warmup_batches"] warm-up passes before the idle and measured windows; return what
    meta.json records: {"passes", "output_tokens" (per request; None: whole outputs)}.

    Continuous: the first min(max_num_seqs, n) requests, all at t=0; static: the first batch. The
    torch engines (TorchEngine, TorchServingEngine) run each request's first WARMUP_OUTPUT_TOKENS
    tokens, with the cache sized for the full lengths (the static engine's reserve_output_len; the
    serving engine's max_model_len, set at construction) so every graph the measured work replays
    is captured here; other engines (transformers, TensorRT-LLM) run the whole outputs."""
    from tokencarbon.backends.static import TorchEngine

    passes = int(run["warmup_batches"])
    short = isinstance(engine, TorchEngine) or type(engine).__name__ == "TorchServingEngine"
    cap = WARMUP_OUTPUT_TOKENS if short else None
    for _ in range(passes):
        if requests:
            warm_set = [
                dataclasses.replace(
                    r, arrival_s=0.0, output_len=r.output_len if cap is None else min(cap, r.output_len)
                )
                for r in requests[:batch_size]
            ]
            engine.serve(warm_set)
        elif short:
            first = batches[0]
            outputs = [int(n) for n in first["output_tokens"]]
            engine.run_batch(
                [list(ids) for ids in first["prompt_token_ids"]],
                [min(cap, n) for n in outputs],
                reserve_output_len=max(outputs),
            )
        else:
            run_static_batch(engine, batches[0])
    return {"passes": passes, "output_tokens": cap}


def _window_row(repeat: int, result: ServingResult, requests: Sequence[Request]) -> dict[str, Any]:
    """A continuous repeat as one BATCHES row: the whole request set as one window (start: serving
    began, the clock of arrivals; first token: the first request's; end: the last token)."""
    by_id = {r.request_id: r for r in result.requests}
    first = min(result.requests, key=lambda r: r.first_token_ns)
    return {
        "repeat": repeat,
        "batch_index": 0,
        "n_requests": len(result.requests),
        "input_tokens": sum(r.input_tokens for r in result.requests),
        "output_tokens": sum(r.output_tokens for r in result.requests),
        "padded_input_len": 0,
        "max_output_tokens": max(r.output_tokens for r in result.requests),
        "start_ns": result.start_ns,
        "first_token_ns": first.first_token_ns,
        "end_ns": result.end_ns,
        "start_wall_ns": result.start_wall_ns,
        "first_token_wall_ns": first.first_token_wall_ns,
        "end_wall_ns": result.end_wall_ns,
        "prompt_lens": [by_id[r.request_id].input_tokens for r in requests],
        "output_lens": [by_id[r.request_id].output_tokens for r in requests],
    }


def _batch_record(result: Any) -> dict[str, int]:
    skip = {"repeat", "batch_index", "prompt_lens", "output_lens"}
    return {name: int(getattr(result, name)) for name in tables.BATCHES.names if name not in skip}
