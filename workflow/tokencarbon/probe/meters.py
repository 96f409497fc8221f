"""How the probe measures a try's memory and recognises running out of it: CudaMeter (torch's CUDA
allocator peaks) and CpuMeter (the CPU worker's data segment and peak resident set above its
baseline, from /proc/self/status)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import torch

from tokencarbon.probe.errors import ProbeError


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """exc and the exceptions it was raised from or during (torch.compile wraps an error raised
    while compiling in its own), each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:500]


class CudaMeter:
    """Peaks of torch's CUDA allocator on `device`."""

    mechanism = "torch.cuda.set_per_process_memory_fraction (torch's allocations, not the context)"

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peaks(self) -> tuple[int | None, int | None]:
        return (
            torch.cuda.max_memory_allocated(self.device),
            torch.cuda.max_memory_reserved(self.device),
        )

    @staticmethod
    def is_oom(exc: BaseException) -> bool:
        return any(isinstance(e, torch.cuda.OutOfMemoryError) for e in _chain(exc))

    def cleanup(self, failed: bool = False) -> None:
        gc.collect()
        torch.cuda.empty_cache()  # each try starts from the weights alone


def _proc_status_bytes(key: str) -> int:
    """A /proc/self/status field given in kB (VmData, VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise ProbeError(f"/proc/self/status has no {key}; the CPU probe needs Linux")


class CpuMeter:
    """The CPU worker's memory above its baseline (base_data: VmData before the weights): at a
    try's start its data segment (VmData, what RLIMIT_DATA counts), plus the growth of its peak
    resident set during the try (VmHWM, reset by writing 5 to /proc/self/clear_refs) less the
    file-backed pages it paged in meanwhile (RssFile: library code a new kernel runs, which
    RLIMIT_DATA does not count). Tensors are written whole (zeros, kernel outputs), so anonymous
    resident growth is their bytes. Measured here for tiny-llama-4k: the first calibration try
    paged in 0.5 MB of code, the second 0.2 MB, so that counting them bent the calibration's slope
    2.4 % low (6.6 % low on a CI run, where the first try likely paged in about 1 MB more);
    without them it is 0.4 % from the memory model's."""

    mechanism = "setrlimit(RLIMIT_DATA) in a worker process: its data segment above its baseline"

    def __init__(self, base_data: int):
        self.base_data = base_data
        self._data0 = self._rss0 = self._file0 = 0
        self.peak_measured = True

    def reset(self) -> None:
        self._data0 = _proc_status_bytes("VmData")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.peak_measured = False  # peaks unknown: the calibration falls back to the model
        self._rss0 = _proc_status_bytes("VmRSS")
        self._file0 = _proc_status_bytes("RssFile")

    def peaks(self) -> tuple[int | None, int | None]:
        if not self.peak_measured:
            return None, None
        paged_in = max(0, _proc_status_bytes("RssFile") - self._file0)
        grown = max(0, _proc_status_bytes("VmHWM") - self._rss0 - paged_in)
        return self._data0 - self.base_data + grown, None

    @staticmethod
    def is_oom(exc: BaseException) -> bool:
        """MemoryError (Python), torch.OutOfMemoryError, or torch's CPU allocator refusing
        ("DefaultCPUAllocator: can't allocate memory"), anywhere in exc's chain."""
        for e in _chain(exc):
            if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
                return True
            text = str(e)
            if isinstance(e, RuntimeError) and any(
                s in text for s in ("can't allocate memory", "not enough memory", "std::bad_alloc")
            ):
                return True
        return False

    def cleanup(self, failed: bool = False) -> None:
        # Freed tensors are returned at once (CPU_WORKER_ENV); only a failure's traceback may
        # leave cycles (a full collection costs 0.1 s here, as long as a small try).
        if failed:
            gc.collect()
