"""The CPU probe's worker process: real tries (LocalTrials) in a process whose data segment is
capped with setrlimit(RLIMIT_DATA) at its baseline plus the budget, so that torch's allocations
really fail past it. _worker_main runs in the worker (`python -c "from tokencarbon.probe.worker
import _worker_main; _worker_main()"`, JSON lines on stdin and stdout); WorkerTrials drives it
from the probe, starting a fresh worker after a try that ran out of memory."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from tokencarbon.errors import ConfigError, InputError
from tokencarbon.probe.errors import OutOfMemory, ProbeError
from tokencarbon.probe.meters import CpuMeter, _proc_status_bytes
from tokencarbon.probe.search import Try
from tokencarbon.probe.trials import LocalTrials, ProbeSetup

# The CPU worker's allocator settings, so that its memory is what its tensors hold: every glibc
# allocation of 64 KiB or more is its own mapping, returned to the kernel when freed (a fixed
# threshold also stops glibc from raising it after a free); MKL frees its per-thread GEMM buffers
# after each call instead of keeping the largest (measured here: 10 MB per thread kept after a
# batch-8 prefill of tiny-llama, 0 with this setting).
CPU_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MKL_DISABLE_FAST_MM": "1"}


def _warm_up(setup: ProbeSetup, serving: bool) -> None:
    """Run a one-layer, 64-wide model of the same family, dtype and quantization once (static, and
    a serving engine when asked), so that what torch and its libraries set up on first use (thread
    pools, kernels, lazy imports: about 70 MB measured here for tiny-llama) lies below the
    worker's baseline instead of inside its budget."""
    a = setup.arch
    small = dataclasses.replace(
        a, name=f"{a.name}-warm-up", num_layers=1, hidden_size=64, num_heads=1, num_kv_heads=1,
        head_dim=64, intermediate_size=64, vocab_size=min(a.vocab_size, 256),
        max_positions=min(a.max_positions, 64),
        sliding_window=None if a.sliding_window is None else min(a.sliding_window, 64),
    )  # fmt: skip
    warm = dataclasses.replace(setup, arch=small, checkpoint=None, prompt_len=8, output_len=8)
    trials = LocalTrials(warm, CpuMeter(0))
    trials.open_static()
    trials.static(2)
    trials.close_static()
    if serving:
        trials.paged(2, 8, [16, 16])  # the continuous probe's engine (paged, small pool)
    gc.collect()


def _worker_main() -> None:
    """The CPU worker: JSON lines on stdin, one JSON reply per line on its original stdout (fd 1
    then points at stderr, so that nothing else can write there). The first line sets it up
    (ProbeSetup.to_dict + budget_bytes, threads, serving); then {"op": "open_static" | "static" |
    "close_static" | "serving", "size": n}. Errors reply {"ok": false, "type", "message"}."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from tokencarbon.lease import die_with_supervisor

    die_with_supervisor()  # never outlives the probe that started it

    def send(obj: dict[str, Any]) -> None:
        reply.write(json.dumps(obj) + "\n")

    def failed(exc: BaseException) -> dict[str, Any]:
        return {"ok": False, "type": type(exc).__name__, "message": str(exc),
                "traceback": traceback.format_exc()}  # fmt: skip

    try:
        init = json.loads(sys.stdin.readline())
        torch.set_num_threads(init["threads"])
        setup = ProbeSetup.from_dict(init["setup"])
        t0 = time.monotonic()
        _warm_up(setup, init["serving"])
        base_data = _proc_status_bytes("VmData")
        cap = base_data + int(init["budget_bytes"])
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
        meter = CpuMeter(base_data)
        trials = LocalTrials(setup, meter)
        send({"ok": True, "baseline_data_bytes": base_data, "rlimit_data_bytes": cap,
              "warm_up_s": time.monotonic() - t0, "pid": os.getpid()})  # fmt: skip
    except Exception as exc:
        send(failed(exc))
        return
    for line in sys.stdin:
        try:
            req = json.loads(line)
            op = req["op"]
            if op == "open_static":
                out = {"seconds": trials.open_static()}
            elif op == "static":
                out = trials.static(req["size"]).to_dict()
            elif op == "close_static":
                trials.close_static()
                out = {}
            elif op == "serving":
                out = trials.serving(req["size"]).to_dict()
            elif op == "paged":
                out = trials.paged(req["size"], req["num_blocks"], req["request_tokens"])
            else:
                raise ProbeError(f"probe worker: unknown op {op!r}")
            out["peak_measured"] = meter.peak_measured
            send({"ok": True, **out})
        except Exception as exc:
            send(failed(exc))


_WORKER_ERRORS = {
    "ConfigError": ConfigError,
    "InputError": InputError,
    "OutOfMemory": OutOfMemory,
    "ProbeError": ProbeError,
}


class WorkerTrials:
    """LocalTrials run by a CPU worker process under setrlimit(RLIMIT_DATA) = its baseline +
    budget_bytes (_worker_main; CPU_WORKER_ENV). The worker inherits this thread's CPU affinity
    (a leased probe's pinned CPUs) and uses this process's torch thread count.

    A try that ran out of memory leaves its worker unusable: measured here, each failed static try
    of tiny-llama left 5-7 MB in the worker's data segment for good, so later tries failed where a
    fresh worker's fit. The next try after a failure therefore runs in a new worker (with the
    static engine rebuilt where static tries go on): every try starts from the same state.
    info: the first worker's setup reply, with workers_started and start_s (all workers).
    A context manager: the worker ends with the block. Raises ProbeError if one dies, with its
    exit status."""

    mechanism = CpuMeter.mechanism

    def __init__(self, setup: ProbeSetup, *, budget_bytes: int, serving: bool):
        self._init = {"setup": setup.to_dict(), "budget_bytes": int(budget_bytes),
                      "threads": torch.get_num_threads(), "serving": serving}  # fmt: skip
        self._proc: subprocess.Popen | None = None
        self._static_open = self._dirty = False
        self.info: dict[str, Any] = {}
        self.peak_measured = True
        self._start()

    def _start(self) -> None:
        package_parent = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, **CPU_WORKER_ENV)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, os.environ.get("PYTHONPATH")) if p
        )
        try:  # the worker's messages go where this process's do (a job's log)
            stderr = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            stderr = None
        t0 = time.monotonic()
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from tokencarbon.probe.worker import _worker_main; _worker_main()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
        )
        try:
            reply = self._call(self._init)
        except BaseException:
            self.close()
            raise
        seconds = time.monotonic() - t0
        if not self.info:
            self.info = {**reply, "env": dict(CPU_WORKER_ENV), "workers_started": 0, "start_s": 0}
        self.info["workers_started"] += 1
        self.info["start_s"] = round(self.info["start_s"] + seconds, 3)
        self._dirty = False

    def _fresh(self) -> None:
        """A new worker in place of one a failed try left unusable, its static engine rebuilt."""
        if not self._dirty:
            return
        self.close()
        self._start()
        if self._static_open:
            self._call({"op": "open_static"})

    def __enter__(self) -> WorkerTrials:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        proc, line = self._proc, ""
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        if not line:
            rc = proc.wait()
            raise ProbeError(
                f"the CPU probe's worker (pid {proc.pid}) ended with status {rc} during "
                f"{request.get('op', 'setup')} {request.get('size', '')}".rstrip()
                + " (a negative status is the signal that ended it; SIGKILL from the kernel's OOM"
                " killer means the machine ran out of memory before the cap: set"
                " memory_limit_gb below the free memory); its stderr is in this log"
            )
        reply = json.loads(line)
        if not reply.pop("ok"):
            error = _WORKER_ERRORS.get(reply["type"], ProbeError)
            message = reply["message"]
            if error is ProbeError:
                message = f"the CPU probe's worker failed: {reply['traceback']}"
            raise error(message)
        return reply

    def open_static(self) -> float:
        self._fresh()
        seconds = self._call({"op": "open_static"})["seconds"]
        self._static_open = True
        return seconds

    def close_static(self) -> None:
        if self._static_open and not self._dirty:
            self._call({"op": "close_static"})
        self._static_open = False

    def _try(self, op: str, size: int) -> Try:
        self._fresh()
        reply = self._call({"op": op, "size": size})
        self.peak_measured = reply.pop("peak_measured")
        t = Try(**reply)
        self._dirty = not t.fits
        return t

    def static(self, batch: int) -> Try:
        return self._try("static", batch)

    def serving(self, n: int) -> Try:
        return self._try("serving", n)

    def paged(
        self, limit: int, num_blocks: int | None, request_tokens: list[int]
    ) -> dict[str, Any]:
        self._fresh()
        reply = self._call({"op": "paged", "size": limit, "num_blocks": num_blocks,
                            "request_tokens": request_tokens})  # fmt: skip
        self.peak_measured = reply.pop("peak_measured")
        self._dirty = not reply["fits"]
        return reply
