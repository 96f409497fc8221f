"""The paged engine's step clock: each step's start and end as CUDA events on the stream (no host
sync per step), mapped to host monotonic and wall nanoseconds through anchors at the start and end
of serving; on the CPU the host's clocks."""

from __future__ import annotations

import time

import torch


class _Clock:
    """Step timestamps. CUDA: an event before and after each step's work on the stream, read as
    milliseconds after a start anchor once the step is done (read() drops the event), and turned
    into host monotonic and wall ns at the end through two anchors (an event the host waited for at
    the start and at the end of serving; times between are mapped linearly, which also absorbs the
    drift between the device's and the host's clocks). CPU: the host's clocks around the
    (synchronous) step."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.start_ns, self.start_wall_ns, self._a0 = self._anchor()

    def _anchor(self):
        if not self.cuda:
            return time.monotonic_ns(), time.time_ns(), None
        torch.cuda.synchronize(self.device)
        before, wall_before = time.monotonic_ns(), time.time_ns()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        event.synchronize()
        after, wall_after = time.monotonic_ns(), time.time_ns()
        return (before + after) // 2, (wall_before + wall_after) // 2, event

    def mark(self):
        """A point on the stream (CUDA: an event) or now (CPU: monotonic and wall ns)."""
        if not self.cuda:
            return time.monotonic_ns(), time.time_ns()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def read(self, mark):
        """A mark as it is kept: CUDA, milliseconds after the start anchor (the event must be
        done); CPU, as it is."""
        return self._a0.elapsed_time(mark) if self.cuda else mark

    def resolve(self, marks: list) -> list[tuple[int, int]]:
        """(monotonic ns, wall ns) of each mark or read() value; on CUDA, waits for the device."""
        if not self.cuda:
            return marks
        end_ns, end_wall_ns, a1 = self._anchor()
        span_ms = self._a0.elapsed_time(a1)
        scale = (end_ns - self.start_ns) / (span_ms * 1e6) if span_ms > 0 else 1.0
        wall_scale = (end_wall_ns - self.start_wall_ns) / (span_ms * 1e6) if span_ms > 0 else 1.0
        out = []
        for m in marks:
            ns = (m if isinstance(m, float) else self._a0.elapsed_time(m)) * 1e6
            out.append(
                (self.start_ns + round(ns * scale), self.start_wall_ns + round(ns * wall_scale))
            )
        return out
