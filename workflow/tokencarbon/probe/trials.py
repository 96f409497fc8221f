"""Real tries in this process: ProbeSetup (what the tries run), LocalTrials (a static batch on one
TorchEngine, a slot serving engine, the paged serving engine, each measured by a meter), and the
CUDA helpers (the per-process memory cap; make_try_batch for benchmarks/oom_table.py). On the CPU
these run inside the worker process (worker.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tokencarbon.backends.static import TorchEngine
from tokencarbon.errors import ConfigError
from tokencarbon.models import Architecture, architecture_from_dict, architecture_to_dict
from tokencarbon.probe.errors import OutOfMemory, ProbeError
from tokencarbon.probe.memory import BYTES_PER_GB
from tokencarbon.probe.meters import CudaMeter, _first_line
from tokencarbon.probe.paged import paged_fit, request_blocks_at
from tokencarbon.probe.search import Try
from tokencarbon.quantization import Quantization, parse_quantization

# A try runs the full longest prompt with the KV cache reserved for the full longest output, then
# this many decode steps: decode replays static buffers (a CUDA graph on GPU), so the peak is reached
# by then, and a 13B try at 1000 output tokens takes a second instead of 12.
PROBE_DECODE_STEPS = 4


@dataclass
class ProbeSetup:
    """What the tries run: the model, its lengths and the device."""

    arch: Architecture
    dtype: str
    device: str
    seed: int
    checkpoint: str | None
    quantization: Quantization
    prompt_len: int
    output_len: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": architecture_to_dict(self.arch),
            "dtype": self.dtype,
            "device": self.device,
            "seed": self.seed,
            "checkpoint": self.checkpoint,
            "quantization": self.quantization.to_dict(),
            "prompt_len": self.prompt_len,
            "output_len": self.output_len,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeSetup:
        return cls(
            **{**d, "arch": architecture_from_dict(d["arch"], "probe worker"),
               "quantization": parse_quantization(d["quantization"], "probe worker")}
        )  # fmt: skip

    @property
    def prompt(self) -> list[int]:
        return [(i % (self.arch.vocab_size - 1)) + 1 for i in range(self.prompt_len)]


class LocalTrials:
    """Real tries in this process, each measured by `meter` (CudaMeter, or CpuMeter inside the
    CPU worker): static batches on one TorchEngine (open_static builds it; each try allocates and
    frees its own KV cache), and serving engines, one built per try (a pool's size is fixed at
    construction). Out-of-memory errors become tries that did not fit; other errors propagate."""

    def __init__(self, setup: ProbeSetup, meter):
        self.setup, self.meter = setup, meter
        self.decode_len = min(setup.output_len, PROBE_DECODE_STEPS)
        self._engine: TorchEngine | None = None

    def open_static(self) -> float:
        """Build the static engine; returns its seconds. Raises OutOfMemory if its weights do not
        fit."""
        s = self.setup
        t0 = time.monotonic()
        try:
            self._engine = TorchEngine(
                s.arch, s.dtype, s.device, seed=s.seed, checkpoint=s.checkpoint,
                quantization=s.quantization,
            )  # fmt: skip
        except Exception as exc:
            if not self.meter.is_oom(exc):
                raise
            error = _first_line(exc)
        else:
            return time.monotonic() - t0
        self.meter.cleanup(failed=True)
        raise OutOfMemory(f"the weights of {s.arch.name} do not fit: {error}")

    def close_static(self) -> None:
        if self._engine is not None:
            self._engine.release()
        self._engine = None
        self.meter.cleanup(failed=True)  # a full collection once: the engine's modules

    def static(self, batch: int) -> Try:
        """batch requests of the longest prompt, the cache reserved for the longest output, then
        PROBE_DECODE_STEPS decode steps (TorchEngine.run_batch's reserve_output_len)."""
        engine, s = self._engine, self.setup
        if engine is None:
            raise ProbeError("static tries need open_static() first")
        self.meter.reset()
        t0, error = time.monotonic(), None
        try:
            engine.run_batch(
                [s.prompt] * batch, [self.decode_len] * batch, reserve_output_len=s.output_len
            )
        except Exception as exc:
            if not self.meter.is_oom(exc):
                raise
            error = _first_line(exc)  # the text only: the exception's frames hold the tensors
        finally:
            peak, reserved = self.meter.peaks()
            engine.release()
            self.meter.cleanup(failed=error is not None)
        return Try(batch, error is None, time.monotonic() - t0, peak, reserved, error)

    def serving(self, n: int) -> Try:
        """A TorchServingEngine of max_num_seqs n whose slots hold prompt_len + output_len tokens
        (max_model_len) serves n requests of the longest prompt, all at t=0, PROBE_DECODE_STEPS
        output tokens each: every slot busy, the pool allocated for the full output."""
        from tokencarbon.backends import Request
        from tokencarbon.backends.serving import TorchServingEngine

        s = self.setup
        prompt = tuple(s.prompt)
        requests = [Request(f"probe{i}", prompt, self.decode_len, 0.0) for i in range(n)]
        self.meter.cleanup()
        self.meter.reset()
        t0, error, build_s, engine = time.monotonic(), None, None, None
        try:
            engine = TorchServingEngine(
                s.arch, s.dtype, s.device, seed=s.seed, checkpoint=s.checkpoint, max_num_seqs=n,
                max_model_len=s.prompt_len + s.output_len, quantization=s.quantization,
                kv_layout="slots",
            )  # fmt: skip
            build_s = time.monotonic() - t0
            engine.serve(requests)
        except Exception as exc:
            if not self.meter.is_oom(exc):
                raise
            error = _first_line(exc)
        finally:
            peak, reserved = self.meter.peaks()
            if engine is not None:
                engine.release()
                if getattr(engine.engine, "compile_layers", False):
                    # the next engine has another max_num_seqs, so another compiled decode step:
                    # nothing of this one's (its guards name this engine's modules) may stay
                    torch._dynamo.reset()
            del engine
            self.meter.cleanup(failed=True)  # the engine's modules: collect before the next build
        return Try(n, error is None, time.monotonic() - t0, peak, reserved, error, build_s=build_s)

    def paged(
        self, limit: int, num_blocks: int | None, request_tokens: list[int]
    ) -> dict[str, Any]:
        """The paged engine (the continuous cells' own, kv_layout "paged") with max_num_seqs
        `limit` rows: its pool sized as a cell's is (CUDA: gpu_memory_utilization of the device, or
        of the cap; num_blocks on the CPU, from the budget). The largest max_num_seqs is pool
        arithmetic on the pool it really allocated (paged_fit), confirmed by serving that many
        requests of the longest prompt at once, PROBE_DECODE_STEPS output tokens each (the
        prefill and decode steps at that many rows: activations and graphs). Returns
        {"fits", "error", "seconds", "build_s", "peak_bytes", "engine": describe(), "fit",
        "served", "preemptions"}; an out-of-memory error (building or serving) gives fits False."""
        from tokencarbon.backends import Request
        from tokencarbon.backends.serving import TorchServingEngine

        s = self.setup
        self.meter.cleanup()
        self.meter.reset()
        t0, error, build_s, engine, info = time.monotonic(), None, None, None, {}
        try:
            engine = TorchServingEngine(
                s.arch, s.dtype, s.device, seed=s.seed, checkpoint=s.checkpoint,
                max_num_seqs=limit, max_model_len=s.prompt_len + s.output_len,
                quantization=s.quantization, kv_layout="paged", num_blocks=num_blocks,
            )  # fmt: skip
            build_s = time.monotonic() - t0
            described = engine.describe()
            fit = paged_fit(described["num_blocks"], described["block_size"], s.prompt_len,
                            s.output_len, request_blocks_at(request_tokens, described["block_size"]),
                            limit)  # fmt: skip
            n = fit["max_num_seqs"]
            prompt = tuple(s.prompt)
            requests = [Request(f"probe{i}", prompt, self.decode_len, 0.0) for i in range(n)]
            result = engine.serve(requests) if n else None
            preemptions = 0 if result is None else sum(r.preemptions or 0 for r in result.requests)
            info = {"engine": described, "fit": fit, "served": n, "preemptions": preemptions}
        except Exception as exc:
            if not self.meter.is_oom(exc):
                raise
            error = _first_line(exc)
        finally:
            peak, _ = self.meter.peaks()
            if engine is not None:
                engine.release()
                if getattr(engine.engine, "compile_layers", False):
                    torch._dynamo.reset()  # nothing of this engine's compiled step stays
            del engine
            self.meter.cleanup(failed=True)
        return {"fits": error is None, "error": error, "seconds": time.monotonic() - t0,
                "build_s": build_s, "peak_bytes": peak, **info}  # fmt: skip


def _cap_cuda_memory(memory_limit_gb: float | None, device: torch.device) -> None:
    """torch.cuda.set_per_process_memory_fraction for memory_limit_gb (None: no cap)."""
    if memory_limit_gb is None:
        return
    total_bytes = torch.cuda.get_device_properties(device).total_memory
    limit_bytes = memory_limit_gb * BYTES_PER_GB
    if limit_bytes > total_bytes:
        raise ConfigError(
            f"memory_limit_gb {memory_limit_gb} exceeds the device's "
            f"{total_bytes / BYTES_PER_GB:.1f} GB; use at most that, or null"
        )
    index = torch.cuda.current_device() if device.index is None else device.index
    torch.cuda.set_per_process_memory_fraction(limit_bytes / total_bytes, index)


def make_try_batch(
    engine: TorchEngine, *, prompt_len: int, output_len: int, memory_limit_gb: float | None
) -> Callable[[int], None]:
    """try_batch(b) for probe_max_batch on a CUDA engine (benchmarks/oom_table.py): runs b requests
    of prompt_len + output_len tokens (LocalTrials.static) under memory_limit_gb
    (torch.cuda.set_per_process_memory_fraction; None: the whole card); raises OutOfMemory when b
    does not fit. Raises ConfigError for a CPU engine: CPU tries run in a capped worker process
    (run_probe)."""
    if engine.device.type != "cuda":
        raise ConfigError(
            "make_try_batch drives a CUDA engine; the CPU probe's tries run in a worker process "
            "under a real memory cap (run_probe)"
        )
    _cap_cuda_memory(memory_limit_gb, engine.device)
    setup = ProbeSetup(
        engine.arch, engine.dtype, "cuda", 0, None, engine.quantization, prompt_len, output_len
    )
    trials = LocalTrials(setup, CudaMeter(engine.device))
    trials._engine = engine

    def try_batch(batch: int) -> None:
        t = trials.static(batch)
        if not t.fits:
            raise OutOfMemory(f"batch {batch}: {t.error}")

    return try_batch
