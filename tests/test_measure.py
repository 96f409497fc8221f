"""The measurement API: `with tokencarbon.measure() as m:` and Monitor's begin/end windows, on this
machine's CPU (modeled power), against the CPU time the kernel charged to the measured work."""

import math
import os
import time

import pytest

import tokencarbon
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.monitor import Measurement, Monitor, cpu_tdp_w
from tokencarbon.power import DEFAULT_INTERVAL_S

TDP_W = 100.0
INTERVAL_S = 0.1


def spin(seconds: float) -> float:
    """Keep this process busy on one CPU for `seconds` of wall time; return its CPU seconds."""
    cpu0, t0 = time.process_time(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        pass
    return time.process_time() - cpu0


def expected_j(cpu_s: float) -> tuple[float, float]:
    """Modeled energy of a window in which this process used cpu_s CPU seconds, and its tolerance.

    Modeled power is TDP x utilisation, utilisation = CPU seconds / (elapsed x n logical CPUs), so
    its integral over the window is TDP x cpu_s / n. Sampling error: each sample carries the
    utilisation of the interval before it, so each window edge may be off by up to one interval at
    up to one CPU (TDP / n x interval_s), plus 10 % for psutil's tick rounding.
    """
    n = len(os.sched_getaffinity(0))
    value = TDP_W * cpu_s / n
    return value, 0.10 * value + 2 * INTERVAL_S * TDP_W / n


def test_measure_block_gives_tdp_times_utilisation():
    with tokencarbon.measure(tdp_w=TDP_W, interval_s=INTERVAL_S, intensity_g_per_kwh=500) as m:
        cpu_s = spin(2.0)
        m.tokens = 1000
    r = m.result
    assert isinstance(r, Measurement)
    want, tol = expected_j(cpu_s)
    assert abs(r.energy_j - want) <= tol, (r.energy_j, want, tol, cpu_s)
    assert r.source == "modeled_cpu" and r.modeled and r.energy_method == "modeled"
    assert "modeled" in r.qa_flags and "MODELED" in r.device
    assert math.isnan(r.energy_counter_j) and r.energy_integrated_j == r.energy_j
    assert 2.0 <= r.time_s < 2.5
    # carbon = J / 3.6e6 J/kWh x 500 g/kWh; per token over 1000 tokens.
    assert r.carbon_g == pytest.approx(r.energy_j / 3.6e6 * 500)
    assert r.j_per_token == pytest.approx(r.energy_j / 1000)
    assert r.g_per_token == pytest.approx(r.carbon_g / 1000)
    assert m.energy_j == r.energy_j  # the window exposes the result's fields
    d = r.to_dict()
    assert d["energy_counter_j"] is None and d["qa_flags"] == list(r.qa_flags)


def test_monitor_windows_and_an_idle_one():
    with Monitor(tdp_w=TDP_W, interval_s=INTERVAL_S) as monitor:
        monitor.begin_window("busy")
        cpu_s = spin(1.5)
        busy = monitor.end_window("busy")
        monitor.begin_window("idle")
        time.sleep(1.5)
        idle = monitor.end_window("idle")
    want, tol = expected_j(cpu_s)
    assert abs(busy.energy_j - want) <= tol
    # Asleep, the process uses ~no CPU: at most the edge error of one busy interval.
    n = len(os.sched_getaffinity(0))
    assert idle.energy_j <= INTERVAL_S * TDP_W / n + 0.1 * want
    assert busy.end_wall_ns <= idle.start_wall_ns
    assert math.isnan(busy.j_per_token) and busy.tokens is None


def test_monitor_misuse_is_named():
    with Monitor(tdp_w=TDP_W, interval_s=INTERVAL_S) as monitor:
        with pytest.raises(ConfigError, match="window 'x' was never begun"):
            monitor.end_window("x")
        monitor.begin_window("a")
        with pytest.raises(ConfigError, match="window 'a' is already open"):
            monitor.begin_window("a")
        with pytest.raises(ConfigError, match="tokens=0"):
            monitor.end_window("a", tokens=0)
    with pytest.raises(ConfigError, match="either intensity_g_per_kwh.*or trace"):
        Monitor(tdp_w=TDP_W, intensity_g_per_kwh=300, trace="x.csv")
    window = tokencarbon.monitor.Window(None)
    with pytest.raises(AttributeError, match="has not ended yet"):
        window.energy_j


def test_default_cpu_tdp_scales_the_platform_row():
    # platforms.csv row 'cpu': 4.375 W for 2 logical CPUs = 2.1875 W each; 8 CPUs -> 17.5 W.
    tdp_w, why = cpu_tdp_w(8)
    assert tdp_w == pytest.approx(17.5)
    assert "2.1875 W per logical CPU" in why and "x 8 logical CPUs" in why


def test_measure_with_a_trace(shared_data):
    # MISO's 2023 trace does not cover today: refused without a fill policy, naming the trace.
    trace = shared_data / "electricitymaps" / "US-MIDW-MISO_2023_hourly.csv"
    with pytest.raises(InputError, match="US-MIDW-MISO_2023_hourly.csv.*does not cover"):
        with tokencarbon.measure(tdp_w=TDP_W, interval_s=INTERVAL_S, trace=trace):
            spin(0.3)


def test_default_fill_limit_is_carbons():
    # monitor (and the CLI) read it without importing pandas; the value is carbon's
    from tokencarbon.carbon import DEFAULT_MAX_FILL_S
    from tokencarbon.monitor import DEFAULT_MAX_FILL_S as MONITOR_DEFAULT

    assert MONITOR_DEFAULT == DEFAULT_MAX_FILL_S == 3600.0


def test_a_window_shorter_than_an_interval_and_what_the_monitor_keeps():
    with Monitor(tdp_w=TDP_W, interval_s=0.05) as monitor:
        time.sleep(0.5)
        monitor._sidecar.mark()  # everything sampled so far is here (else sent every 0.5 s)
        # no window open: only the latest sample is kept (it brackets the next window's start)
        assert len(monitor._sidecar.samples()) == 1
        monitor.begin_window("short")
        short = monitor.end_window("short")  # no sample inside: bracketed by the one before
        # its start and the one end_window asks for
        assert 0 < short.time_s < 0.05 and short.n_samples <= 1
        assert math.isfinite(short.energy_j) and short.energy_j >= 0
        assert "fewer_than_10_samples" in short.qa_flags
        monitor.begin_window("long")
        time.sleep(0.5)
        monitor._sidecar.mark()  # everything sampled so far is here
        kept = monitor._sidecar.samples()
        # an open window keeps everything from the sample before its start: ~10 at 0.05 s, and
        # the mark's; fewer where a loaded machine starves the sampler
        assert len(kept) >= 6
        monitor.end_window("long")
        assert len(monitor._sidecar.samples()) == 1


def test_default_source_here_says_what_it_read_or_why_nothing():
    from tokencarbon.monitor import default_source
    from tokencarbon.power.rapl import rapl_state

    spec, description = default_source()
    if spec["kind"] == "modeled_cpu":
        # nothing readable: labelled MODELED, with why NVML and RAPL could not be read
        assert "MODELED" in description and "nothing to read here: NVML" in description
        assert "RAPL: " in description and not rapl_state().startswith("readable")
    elif spec["kind"] == "rapl":
        assert description.startswith("RAPL package-0") and "whole machine" in description
    # A Monitor without a source has its sidecar find it in its own process: the same one
    with Monitor() as monitor:
        assert monitor.spec == spec and monitor.device == description
        assert monitor.interval_s == DEFAULT_INTERVAL_S[spec["kind"]]
    spec, description = default_source(tdp_w=65.0)
    assert spec == {"kind": "modeled_cpu", "tdp_w": 65.0} and "65 W TDP (given)" in description


@pytest.mark.gpu
def test_nvml_windows_agree_with_the_counter_read_in_process():
    # On a GPU: the Monitor's window energy (its sidecar's samples, tokencarbon.energy) against
    # NVML's total-energy counter read in this process right before begin_window and right after
    # end_window, as Zeus's monitor reads it. The counter moves about every 100 ms on an H100, so
    # each edge may differ by up to one step: 0.1 s at the window's mean power, twice.
    from helpers import gpu_present

    if not gpu_present():
        pytest.skip("no NVIDIA GPU and driver")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    import pynvml

    from tokencarbon.power.nvml import _handle

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    pynvml.nvmlInit()
    try:
        handle = _handle(0)
        with Monitor() as monitor:
            assert monitor.spec == {"kind": "nvml", "device_index": 0}
            torch.cuda.synchronize()
            before_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            monitor.begin_window("matmul")
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                for _ in range(10):
                    a @ a
                torch.cuda.synchronize()
            m = monitor.end_window("matmul")
            after_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    finally:
        pynvml.nvmlShutdown()
    direct_j = (after_mj - before_mj) / 1e3
    mean_w = m.energy_j / m.time_s
    assert m.energy_method == "counter" and m.source == "nvml" and not m.modeled
    assert not set(m.qa_flags) & {"counter_frozen", "counter_jump", "counter_decreasing"}
    assert abs(m.energy_j - direct_j) <= 2 * 0.1 * mean_w, (m.energy_j, direct_j, mean_w)
    assert 30 <= m.n_samples <= 45  # 2 s at 0.05 s, give or take the edges
