"""Measure the energy and carbon of any code: begin/end windows in the manner of Zeus's monitor.

    import tokencarbon

    with tokencarbon.measure() as m:          # the best source this machine has (default_source)
        outputs = model.generate(...)
        m.tokens = n_generated                 # optional: J/token and gCO2/token
    print(m.result.energy_j, m.result.carbon_g, m.result.j_per_token)

    monitor = tokencarbon.Monitor()           # several windows over one sidecar
    monitor.begin_window("prefill")
    ...
    record = monitor.end_window("prefill", tokens=128)
    monitor.close()

Power comes from tokencarbon's power sidecar (a separate process sampling on its own schedule,
tokencarbon.power.sidecar), streaming its samples back over a pipe: begin_window notes the time,
end_window has the sidecar take one more sample and integrates the window's samples. Energy and
carbon come from tokencarbon.energy / tokencarbon.carbon, the same functions the workflow's
metrics use; nothing is integrated here. Neither importing this module nor measuring loads
pandas: a window's samples reach tokencarbon.energy as numpy columns (energy.DeviceSamples), and
numpy is loaded while the sidecar starts.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokencarbon.errors import ConfigError, TokencarbonError
from tokencarbon.units import S_PER_HOUR

if TYPE_CHECKING:
    import pandas as pd

    from tokencarbon.energy import DeviceSamples

# How often the sidecar sends what it sampled to the Monitor's process (a window's end does not
# wait for it: end_window asks for a last sample and gets everything up to it).
FLUSH_S = 0.5
# tokencarbon.carbon.DEFAULT_MAX_FILL_S (one hour), without importing pandas to read it;
# test_measure checks the two agree.
DEFAULT_MAX_FILL_S: float | None = float(S_PER_HOUR)


@dataclass(frozen=True)
class Measurement:
    """What one window cost, and how it was measured.

    Times are UTC epoch ns (time.time_ns()); energy in J; carbon in gCO2eq.
    source: "nvml" (an NVIDIA GPU: energy counter and power readings), "zeus_gpu" / "zeus_soc"
      (an AMD GPU / Apple silicon through Zeus's device layer), "rapl" (CPU packages and DRAM
      of the whole machine: energy counters), or "modeled_cpu" (an estimate where nothing can be
      read: TDP x CPU utilisation of the measured process tree; modeled=True, device says MODELED).
    energy_j: the energy to use: the NVML counter delta where it is plausible, else the trapezoid
      integral of power (energy_method says which; tokencarbon.energy decides).
    energy_counter_j: the counter delta (NaN without a counter); energy_integrated_j: the integral.
    qa_flags: tokencarbon.energy's flags ("modeled", "fewer_than_10_samples", ...).
    carbon_g: operational carbon, energy x intensity x PUE (no embodied share).
    tokens, j_per_token, g_per_token: NaN / None when no token count was given.
    carbon_missing: why carbon_g, intensity_g_per_kwh and g_per_token are NaN where the energy was
      kept without them (measure_windows' keep_energy: a trace not covering the window); None.
    """

    name: str
    start_wall_ns: int
    end_wall_ns: int
    time_s: float
    source: str
    device: str
    modeled: bool
    n_samples: int
    energy_j: float
    energy_method: str
    energy_counter_j: float
    energy_integrated_j: float
    qa_flags: tuple[str, ...]
    intensity_g_per_kwh: float
    pue: float
    carbon_g: float
    tokens: int | None = None
    j_per_token: float = math.nan
    g_per_token: float = math.nan
    carbon_missing: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe values (NaN -> None, flags as a list)."""
        out = asdict(self)
        out["qa_flags"] = list(self.qa_flags)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in out.items()}  # fmt: skip


def cpu_tdp_w(n_cpus: int | None = None) -> tuple[float, str]:
    """The TDP the modeled CPU source multiplies utilisation by, and where it came from
    (tokencarbon.power.modeled.default_tdp_w): resources/platforms.csv's 'cpu' row (a 2-vCPU
    slice of an AMD EPYC 7763: 280 W / 64 cores) scaled to n_cpus (default: this process's CPU
    affinity). Pass tdp_w to Monitor / measure for the CPU you actually have.
    """
    from tokencarbon.power.modeled import default_tdp_w

    return default_tdp_w(n_cpus)


def default_source(tdp_w: float | None = None) -> tuple[dict, str]:
    """(power source spec, its description) of what a Monitor without a source reads here: the
    first of NVML GPU 0, an AMD GPU or Apple silicon through Zeus (where installed), RAPL, and
    modeled CPU power (labelled MODELED, saying why nothing could be read); modeled at tdp_w when
    tdp_w is given (tokencarbon.power.open_default, which the sidecar runs in its own process)."""
    from tokencarbon.power import open_default

    source, spec, description = open_default(os.getpid(), tdp_w)
    source.close()
    return spec, description


def _intensity(intensity_g_per_kwh: float | None, trace: str | Path | None, basis: str):
    from tokencarbon.carbon import DEFAULT_INTENSITY_G_PER_KWH, ConstantIntensity, load_trace

    if trace is not None and intensity_g_per_kwh is not None:
        raise ConfigError(
            "give either intensity_g_per_kwh (a constant) or trace (an Electricity Maps CSV), "
            "not both"
        )
    if trace is not None:
        return load_trace(trace, basis)
    value = DEFAULT_INTENSITY_G_PER_KWH if intensity_g_per_kwh is None else intensity_g_per_kwh
    return ConstantIntensity(float(value))


def _synchronize() -> None:
    """Wait for queued CUDA work, as Zeus does at window edges: a kernel launched inside the window
    must finish inside it. Only where torch is already imported and has initialised CUDA."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def measure_windows(
    samples: pd.DataFrame | DeviceSamples,
    windows: list[tuple[int, int]],
    *,
    name: str,
    device: str,
    intensity,
    pue: float = 1.0,
    fill: str | None = None,
    tokens: int | None = None,
    where: str = "power samples",
    max_fill_s: float | None = DEFAULT_MAX_FILL_S,
    keep_energy: bool = False,
) -> Measurement:
    """A Measurement of disjoint windows [(start_ns, end_ns), ...] of one device's POWER samples
    (a DataFrame, or energy.DeviceSamples):
    per window tokencarbon.carbon.window_carbon (energy by tokencarbon.energy, carbon by intensity
    segment), combined by tokencarbon.energy.combine; time_s is the windows' summed length.
    A trace that does not cover a window (under fill and max_fill_s) raises its
    carbon.TraceCoverageError; with keep_energy the energy is returned without carbon instead (NaN,
    carbon_missing saying why): a finished measurement is never lost to its carbon."""
    from tokencarbon.carbon import TraceCoverageError, window_carbon
    from tokencarbon.energy import combine, device_samples, window_energy

    if tokens is not None and not (isinstance(tokens, int) and tokens > 0):
        raise ConfigError(f"tokens={tokens!r}: a count of generated tokens must be an int > 0")
    if not windows:
        raise ConfigError(f"{name}: no window to measure")
    samples = device_samples(samples, None, where)  # one device, in time order, numpy columns
    carbon_missing = None
    try:
        parts = [
            window_carbon(samples, s, e, intensity, pue=pue, fill=fill, max_fill_s=max_fill_s,
                          where=where)
            for s, e in windows
        ]  # fmt: skip
    except TraceCoverageError as exc:
        if not keep_energy:
            raise
        carbon_missing = str(exc)
        records = [window_energy(samples, s, e, where=where) for s, e in windows]
        energy = combine(records) if len(records) > 1 else records[0]
        carbon_g = intensity_g_per_kwh = math.nan
    if carbon_missing is None:
        energy = combine([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        carbon_g = sum(p[1].carbon_g for p in parts)
        energies = [p[1].energy_j for p in parts]
        intensities = [p[1].intensity_g_per_kwh for p in parts]
        intensity_g_per_kwh = (
            sum(i * e for i, e in zip(intensities, energies)) / sum(energies)
            if sum(energies) > 0 else float(sum(intensities) / len(intensities))
        )  # fmt: skip
    return Measurement(
        name=name,
        start_wall_ns=int(min(s for s, _ in windows)),
        end_wall_ns=int(max(e for _, e in windows)),
        time_s=energy.window_s,
        source=samples.source,
        device=device,
        modeled=bool(samples.modeled.any()),
        n_samples=energy.n_samples,
        energy_j=energy.energy_j,
        energy_method=energy.method,
        energy_counter_j=energy.energy_counter_j,
        energy_integrated_j=energy.energy_integrated_j,
        qa_flags=tuple(energy.qa_flags),
        intensity_g_per_kwh=intensity_g_per_kwh,
        pue=pue,
        carbon_g=carbon_g,
        tokens=tokens,
        j_per_token=energy.energy_j / tokens if tokens else math.nan,
        g_per_token=carbon_g / tokens if tokens else math.nan,
        carbon_missing=carbon_missing,
    )


class Monitor:
    """Power sampled from construction to close(); energy and carbon of named windows.

    source: a power source spec (tokencarbon.power: {"kind": "nvml", "device_index": 0},
      {"kind": "rapl"}, {"kind": "modeled_cpu", "tdp_w": 65.0}, ...); default: what
      default_source(tdp_w) picks, found by the sidecar in its own process.
      interval_s: sampling interval (default per source, tokencarbon.power.DEFAULT_INTERVAL_S).
      target_pid: the process tree a modeled CPU source measures (default: this process and its
      children).
    intensity_g_per_kwh (default 413, the study's) or trace (an Electricity Maps CSV, basis
      "direct" or "lifecycle", fill and max_fill_s (s; None: no limit) as the workflow's
      carbon.fill and carbon.max_fill_s); pue >= 1.
    Raises ConfigError for bad arguments; the sidecar's own errors (HardwareMismatchError where the
    source cannot be read, ...).

    Cost: construction starts the sidecar process (about 0.1 s, overlapped with loading numpy
    and the trace; no pandas unless a trace is read); begin_window notes the time; end_window asks the sidecar for one more sample
    (a pipe round trip) and integrates the window's samples (benchmarks/meter_overhead.py).
    The Monitor keeps only the samples its open windows need.
    """

    def __init__(
        self,
        source: Mapping | None = None,
        *,
        tdp_w: float | None = None,
        interval_s: float | None = None,
        target_pid: int | None = None,
        intensity_g_per_kwh: float | None = None,
        trace: str | Path | None = None,
        basis: str = "direct",
        fill: str | None = None,
        pue: float = 1.0,
        max_fill_s: float | None = DEFAULT_MAX_FILL_S,
    ) -> None:
        from tokencarbon.power.sidecar import PowerSidecar

        if trace is not None and intensity_g_per_kwh is not None:
            raise ConfigError(
                "give either intensity_g_per_kwh (a constant) or trace (an Electricity Maps CSV), "
                "not both"
            )
        if source is not None:
            self.spec = dict(source)
        elif tdp_w is not None:
            self.spec = {"kind": "modeled_cpu", "tdp_w": float(tdp_w)}
        else:  # the sidecar finds the source itself (open_default), while this process goes on
            self.spec = {"kind": "auto"}
        self._open: dict[str, int] = {}
        self._closed = True
        self._sidecar = PowerSidecar(
            self.spec, None, interval_s, phase="run", target_pid=target_pid, flush_s=FLUSH_S
        )
        # The child imports and opens its source while this process loads pandas and the trace.
        self._sidecar.launch()
        try:
            self.intensity = _intensity(intensity_g_per_kwh, trace, basis)
            self.fill, self.pue, self.max_fill_s = fill, float(pue), max_fill_s
            self._sidecar.begin("run")
        except BaseException:
            self._sidecar.kill()
            raise
        self._sidecar.keep_from(sys.maxsize)  # no window open: the latest sample is enough
        self.spec = self._sidecar.spec  # as resolved
        self.device = self._sidecar.device or str(self.spec)
        self.interval_s = self._sidecar.interval_s
        self._closed = False

    def begin_window(self, name: str, sync: bool = True) -> None:
        """Start window `name` (CUDA synchronised first when sync and torch uses CUDA)."""
        if self._closed:
            raise TokencarbonError("this Monitor is closed; make a new one")
        if name in self._open:
            raise ConfigError(f"window {name!r} is already open; end it before beginning it again")
        if sync:
            _synchronize()
        self._open[name] = time.time_ns()
        self._sidecar.keep_from(min(self._open.values()))

    def end_window(
        self, name: str, tokens: int | None = None, sync: bool = True, *, keep_energy: bool = False
    ) -> Measurement:
        """End window `name` and return what it cost: the sidecar takes one more sample, after
        the window's end, and the window's samples are integrated (measure_windows).
        keep_energy: a trace that does not cover the window gives the energy without carbon
        (Measurement.carbon_missing says why) instead of raising (measure_windows)."""
        if name not in self._open:
            raise ConfigError(
                f"window {name!r} was never begun; open windows: {sorted(self._open)}"
            )
        if sync:
            _synchronize()
        end_ns = time.time_ns()
        start_ns = self._open.pop(name)
        self._sidecar.mark()
        samples = self._sidecar.device_samples(since_ns=start_ns)
        self._sidecar.keep_from(min(self._open.values(), default=sys.maxsize))
        last_ns = int(samples.t_wall_ns[-1]) if len(samples) else None
        if last_ns is None or last_ns < end_ns:
            raise TokencarbonError(
                f"power sidecar {self.spec}: its last sample ({last_ns} ns) is not after the end "
                f"of window {name!r} ({end_ns} ns); was the system clock set back?"
            )
        return measure_windows(
            samples, [(start_ns, end_ns)], name=name, device=self.device, intensity=self.intensity,
            pue=self.pue, fill=self.fill, tokens=tokens, where=f"power samples of window {name!r}",
            max_fill_s=self.max_fill_s, keep_energy=keep_energy,
        )  # fmt: skip

    def close(self) -> None:
        """End the sidecar and drop its samples (idempotent). Windows still open are dropped too.
        The sidecar is killed, not stopped: it streams to this process and writes nothing, so a
        last sample and an orderly exit (tens of ms) would buy nothing."""
        if self._closed:
            return
        self._closed = True
        self._sidecar.kill()
        self._sidecar.keep_from(sys.maxsize)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Window:
    """What `measure()` yields: set .tokens inside the block; .result is the Measurement after it
    (its fields are also readable on the Window itself: m.energy_j)."""

    def __init__(self, tokens: int | None) -> None:
        self.tokens = tokens
        self.result: Measurement | None = None

    def __getattr__(self, item: str):
        result = self.__dict__.get("result")
        if result is None:
            raise AttributeError(f"{item!r}: the measured block has not ended yet")
        return getattr(result, item)


@contextlib.contextmanager
def measure(
    name: str = "window", *, tokens: int | None = None, **monitor_kwargs
) -> Iterator[Window]:
    """Measure the enclosed block: `with tokencarbon.measure() as m: ...`, then m.result.

    monitor_kwargs go to Monitor (source, tdp_w, interval_s, intensity_g_per_kwh, trace, basis,
    fill, pue). The result is computed also when the block raises (the exception propagates).
    """
    window = Window(tokens)
    with Monitor(**monitor_kwargs) as monitor:
        monitor.begin_window(name)
        try:
            yield window
        finally:
            window.result = monitor.end_window(name, tokens=window.tokens)
