"""Energy from counters and from integrated power, against values worked out by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from tokencarbon.energy import cell_energy, window_energy


def energy_from_power(samples, start_ns, end_ns):
    return window_energy(samples, start_ns, end_ns).energy_integrated_j


def energy_from_counter(samples, start_ns, end_ns):
    return window_energy(samples, start_ns, end_ns).energy_counter_j
from tokencarbon.errors import InputError
from tokencarbon.tables import POWER, check

T0_NS = 1_700_000_000_000_000_000  # an epoch-scale origin: float64 seconds since 1970 would round


def frame(t_s, power_w, counter_j=None, modeled=False, device_index=0) -> pd.DataFrame:
    """POWER samples at T0 + t_s seconds."""
    n = len(t_s)
    df = pd.DataFrame(
        {
            "t_wall_ns": [T0_NS + round(t * 1e9) for t in t_s],
            "phase": "run",
            "source": "modeled_cpu" if modeled else "nvml",
            "modeled": modeled,
            "device_index": device_index,
            "power_w": power_w,
            "power_avg_w": np.nan,
            "energy_counter_j": np.nan if counter_j is None else counter_j,
            "util_pct": np.nan,
            "mem_used_bytes": np.nan,
            "temperature_c": np.nan,
            "sm_clock_mhz": np.nan,
            "mem_clock_mhz": np.nan,
            "throttle_reasons": -1,
        },
        index=range(n),
    )
    return check(df, POWER, "test frame")


def ns(t_s: float) -> int:
    return T0_NS + round(t_s * 1e9)


# 100 W for 2 s then 200 W for 2 s, sampled every 0.5 s: t = 0, 0.5, ..., 4.0 (9 samples),
# 100 W at t < 2, 200 W from t = 2.
STEP_T = [0.5 * i for i in range(9)]
STEP_W = [100.0] * 4 + [200.0] * 5


def test_trapezoid_of_a_power_step():
    # [0,1.5]: 3 intervals x 0.5 s x 100 W = 150; [1.5,2]: 0.5 x (100+200)/2 = 75;
    # [2,4]: 4 x 0.5 x 200 = 400. Total 625 J (the step itself holds 600 J; trapezoids smear it).
    assert energy_from_power(frame(STEP_T, STEP_W), ns(0), ns(4)) == pytest.approx(625.0)


def test_trapezoid_window_edges_between_samples():
    samples = frame(STEP_T, STEP_W)
    # [0.25, 3.75]: edges interpolate to 100 W and 200 W. [0.25,0.5] 0.25 x 100 = 25;
    # [0.5,1.5] 100; [1.5,2] 75; [2,3.5] 300; [3.5,3.75] 0.25 x 200 = 50. Total 550 J.
    assert energy_from_power(samples, ns(0.25), ns(3.75)) == pytest.approx(550.0)
    # [1.75, 2.25]: 150 W at 1.75 (halfway from 100 to 200); [1.75,2] 0.25 x (150+200)/2 = 43.75;
    # [2,2.25] 0.25 x 200 = 50. Total 93.75 J.
    assert energy_from_power(samples, ns(1.75), ns(2.25)) == pytest.approx(93.75)
    # A window inside one interval: [0.1, 0.2] at 100 W = 10 J.
    assert energy_from_power(samples, ns(0.1), ns(0.2)) == pytest.approx(10.0)


def test_trapezoid_uses_irregular_timestamps():
    # Samples at 0, 1, 3 s of 10, 20, 20 W: [0,1] (10+20)/2 = 15; [1,3] 2 x 20 = 40. 55 J.
    # A fixed-interval assumption (1 s) would give 15 + 20 = 35 J.
    samples = frame([0.0, 1.0, 3.0], [10.0, 20.0, 20.0])
    assert energy_from_power(samples, ns(0), ns(3)) == pytest.approx(55.0)


def test_trapezoid_skips_samples_without_power():
    # A NaN (an '[N/A]' in a log) between 0 and 2 s: the integral bridges it, 2 x 50 = 100 J.
    samples = frame([0.0, 1.0, 2.0], [50.0, np.nan, 50.0])
    assert energy_from_power(samples, ns(0), ns(2)) == pytest.approx(100.0)


def test_counter_delta_with_edges_between_samples():
    # Counter 5000, 5100, 5300, 5600 J at 0, 1, 2, 3 s. At 0.5 s: 5050; at 2.5 s: 5450. 400 J.
    samples = frame([0, 1, 2, 3], [100.0] * 4, counter_j=[5000.0, 5100.0, 5300.0, 5600.0])
    assert energy_from_counter(samples, ns(0.5), ns(2.5)) == pytest.approx(400.0)
    # On sample times exactly: 5600 - 5100 = 500 J.
    assert energy_from_counter(samples, ns(1), ns(3)) == pytest.approx(500.0)


def test_counter_absent_is_nan():
    assert math.isnan(energy_from_counter(frame(STEP_T, STEP_W), ns(0), ns(4)))


def test_window_outside_the_samples_is_refused():
    samples = frame(STEP_T, STEP_W)
    with pytest.raises(InputError, match="sampling must start before the window"):
        energy_from_power(samples, ns(-0.1), ns(2))
    with pytest.raises(InputError, match="sampling must start before the window"):
        energy_from_power(samples, ns(1), ns(4.1))
    with pytest.raises(InputError, match="end must be after start"):
        energy_from_power(samples, ns(2), ns(2))


def test_several_devices_are_refused():
    samples = pd.concat([frame(STEP_T, STEP_W), frame(STEP_T, STEP_W, device_index=1)])
    with pytest.raises(InputError, match="2 devices"):
        cell_energy(samples, ns(0), ns(4), idle_power_w=0.0)


# 150 W constant for 2 s, sampled every 0.1 s: 21 samples, integral 150 x 2 = 300 J.
T21 = [0.1 * i for i in range(21)]


def test_cell_energy_counter_agrees():
    samples = frame(T21, [150.0] * 21, counter_j=[1000.0 + 150.0 * t for t in T21])
    record = cell_energy(samples, ns(0), ns(2), idle_power_w=50.0)
    assert record.method == "counter"
    assert record.window_s == pytest.approx(2.0)
    assert record.n_samples == 21
    assert record.energy_counter_j == pytest.approx(300.0)  # 1300 - 1000
    assert record.energy_integrated_j == pytest.approx(300.0)
    assert record.energy_j == pytest.approx(300.0)
    assert record.relative_difference == pytest.approx(0.0, abs=1e-9)
    assert record.qa_flags == ()
    assert record.idle_energy_j == pytest.approx(100.0)  # 50 W x 2 s
    assert record.above_idle_energy_j == pytest.approx(200.0)  # 300 - 100


def test_cell_energy_flags_counter_disagreement():
    # Counter rises at 170 W while power reads 150 W: counter 340 J, integral 300 J,
    # (300 - 340) / 340 = -0.1176 -> flagged; energy_j stays the counter's 340 J.
    samples = frame(T21, [150.0] * 21, counter_j=[170.0 * t for t in T21])
    record = cell_energy(samples, ns(0), ns(2), idle_power_w=0.0)
    assert record.energy_j == pytest.approx(340.0)
    assert record.relative_difference == pytest.approx(-40.0 / 340.0)
    assert record.qa_flags == ("counter_vs_integral_gt_5pct",)


def test_cell_energy_small_disagreement_not_flagged():
    # Counter at 156 W: 312 J against 300 J, (300 - 312) / 312 = -3.85 %: under 5 %, no flag.
    samples = frame(T21, [150.0] * 21, counter_j=[156.0 * t for t in T21])
    record = cell_energy(samples, ns(0), ns(2), idle_power_w=0.0)
    assert record.relative_difference == pytest.approx(-12.0 / 312.0)
    assert record.qa_flags == ()


def test_cell_energy_few_samples_and_integrated():
    # The step series has 9 samples in [0, 4] (< 10) and no counter: integrated 625 J (above).
    record = cell_energy(frame(STEP_T, STEP_W), ns(0), ns(4), idle_power_w=25.0)
    assert record.method == "integrated"
    assert record.n_samples == 9
    assert math.isnan(record.energy_counter_j) and math.isnan(record.relative_difference)
    assert record.energy_j == pytest.approx(625.0)
    assert record.qa_flags == ("fewer_than_10_samples",)
    assert record.above_idle_energy_j == pytest.approx(525.0)  # 625 - 25 W x 4 s


def test_cell_energy_counts_only_samples_inside_the_window():
    # T21 has samples at 0.0, 0.1, ..., 2.0; [0.55, 1.45] holds 0.6 .. 1.4: 9 samples.
    record = cell_energy(frame(T21, [150.0] * 21), ns(0.55), ns(1.45), idle_power_w=0.0)
    assert record.n_samples == 9
    assert record.energy_j == pytest.approx(150.0 * 0.9)


def test_cell_energy_modeled():
    record = cell_energy(frame(T21, [40.0] * 21, modeled=True), ns(0), ns(2), idle_power_w=0.0)
    assert record.method == "modeled"
    assert record.energy_j == pytest.approx(80.0)  # 40 W x 2 s
    assert record.qa_flags == ("modeled",)


def test_windows_energy_skips_the_time_between_batches():
    # 100 W in the batches [0, 1] s and [2, 3] s; 500 W while the engine sets up in between
    # (samples at 1.1..1.9 s). Energy of the two batches: 100 J + 100 J = 200 J, not the
    # 100 + 100 + ~420 J of the whole span. Counter: the running integral of that power.
    import numpy as np
    import pandas as pd

    from tokencarbon.energy import windows_energy

    t_s = np.round(np.arange(0, 31) * 0.1, 1)
    power_w = np.where((t_s > 1.0) & (t_s < 2.0), 500.0, 100.0)
    counter_j = np.concatenate([[0.0], np.cumsum(np.diff(t_s) * (power_w[1:] + power_w[:-1]) / 2)])
    samples = pd.DataFrame({
        "t_wall_ns": (t_s * 1e9).round().astype("int64"), "source": "nvml", "device_index": 0,
        "modeled": False, "power_w": power_w, "energy_counter_j": counter_j,
    })
    record = windows_energy(samples, [(0, 1_000_000_000), (2_000_000_000, 3_000_000_000)], idle_power_w=50.0)
    assert record.window_s == pytest.approx(2.0)
    assert record.energy_counter_j == pytest.approx(200.0)
    assert record.energy_integrated_j == pytest.approx(200.0)
    assert record.method == "counter" and record.energy_j == pytest.approx(200.0)
    assert record.idle_energy_j == pytest.approx(100.0)  # 50 W x 2 s
    assert record.n_samples == 22  # 11 samples in each window, edges included


# --- Issue 10 §3: a counter is used only where it is plausible; one contract for bad power samples.

# 1 s at a steady 100 W sampled every 0.1 s (11 samples at 0.0 .. 1.0 s): the integral is 100 J.
T11 = [0.1 * i for i in range(11)]
W100 = [100.0] * 11


def test_frozen_counter_falls_back_to_the_integral_with_a_flag():
    # The counter answers but never advances (5000 J throughout): 0 J would be taken as the
    # energy (carbon 0, J/token 0). Expected: the integral, 100 W x 1 s = 100 J, flagged.
    record = window_energy(frame(T11, W100, counter_j=[5000.0] * 11), ns(0), ns(1))
    assert record.energy_counter_j == 0.0  # as read
    assert record.method == "integrated"
    assert record.energy_j == pytest.approx(100.0)
    assert "counter_frozen" in record.qa_flags
    assert math.isnan(record.relative_difference)


def test_falling_counter_reading_falls_back_to_the_integral():
    # Counter rising 100 J/s from 5000 J, one reading of 150 J at 0.5 s: 5000, 5010, .., 5040,
    # 150, 5060, .. 5100. Expected: the integral (100 J) with a flag, no exception.
    counter = [5000.0 + 100.0 * t for t in T11]
    counter[5] = 150.0
    record = window_energy(frame(T11, W100, counter_j=counter), ns(0), ns(1))
    assert record.method == "integrated" and record.energy_j == pytest.approx(100.0)
    assert "counter_decreasing" in record.qa_flags
    # The kind beyond the case: a counter reset (driver reload) half way, 5050 -> 0 J and on.
    reset = [5000.0 + 100.0 * t if t < 0.55 else 100.0 * (t - 0.6) for t in T11]
    record = window_energy(frame(T11, W100, counter_j=reset), ns(0), ns(1))
    assert record.energy_j == pytest.approx(100.0) and "counter_decreasing" in record.qa_flags


def test_jumping_counter_falls_back_to_the_integral():
    # From 0.5 s on the counter reads 1e6 J higher: the interval [0.4, 0.5] s holds 1e6 + 10 J,
    # i.e. 1e7 W against a highest reading of 100 W (> 5 x 100 W). Integral 100 J, flagged.
    counter = [5000.0 + 100.0 * t + (1e6 if t > 0.45 else 0.0) for t in T11]
    record = window_energy(frame(T11, W100, counter_j=counter), ns(0), ns(1))
    assert record.method == "integrated" and record.energy_j == pytest.approx(100.0)
    assert "counter_jump" in record.qa_flags
    # A counter advancing in bursts (0, 20 J every other 0.1 s: 200 W over 0.1 s, 2x the
    # reading, as an NVML counter updating every ~100 ms does) is not a jump: counter 100 J kept.
    bursts = [5000.0 + 20.0 * (i // 2) for i in range(11)]  # 5000, 5000, 5020, 5020, .., 5100
    record = window_energy(frame(T11, W100, counter_j=bursts), ns(0), ns(1))
    assert record.method == "counter" and record.energy_j == pytest.approx(100.0)
    assert record.qa_flags == ()


def test_counter_with_a_missing_reading_is_still_used():
    # A NaN counter reading at 0.5 s: interpolation between 5040 (0.4 s) and 5060 (0.6 s) bridges
    # it; delta 5100 - 5000 = 100 J, flagged.
    counter = [5000.0 + 100.0 * t for t in T11]
    counter[5] = np.nan
    record = window_energy(frame(T11, W100, counter_j=counter), ns(0), ns(1))
    assert record.method == "counter" and record.energy_j == pytest.approx(100.0)
    assert record.qa_flags == ("counter_nonfinite_dropped",)


def test_counter_not_spanning_the_window_falls_back():
    # Counter readings only from 0.3 s on (NaN before): the counter cannot give [0, 1] s.
    counter = [np.nan] * 3 + [5000.0 + 100.0 * t for t in T11[3:]]
    record = window_energy(frame(T11, W100, counter_j=counter), ns(0), ns(1))
    assert record.method == "integrated" and record.energy_j == pytest.approx(100.0)
    assert "counter_incomplete" in record.qa_flags


def test_bad_power_samples_are_dropped_and_flagged():
    # A NaN at 0.5 s and a negative reading at 0.7 s in the steady 100 W second: both dropped,
    # the trapezoid bridges 0.4-0.6 and 0.6-0.8 at 100 W: still 100 J, flagged.
    power = list(W100)
    power[5], power[7] = np.nan, -3.0
    record = window_energy(frame(T11, power), ns(0), ns(1))
    assert record.energy_j == pytest.approx(100.0)
    assert record.n_samples == 9  # 11 samples, 2 dropped
    assert record.qa_flags == ("power_invalid_dropped", "fewer_than_10_samples")
    # A bad sample outside the window's span does not flag it: NaN at 3.0 s, window [0, 1].
    power = [100.0] * 31
    power[30] = np.nan
    record = window_energy(frame([0.1 * i for i in range(31)], power), ns(0), ns(1))
    assert record.qa_flags == ()


def test_power_gap_is_flagged():
    # Samples every 0.1 s except a 2 s hole between 1.0 and 3.0 s: 2 s > 1 s and > 5 x 0.1 s.
    t_s = [0.1 * i for i in range(11)] + [3.0 + 0.1 * i for i in range(11)]
    record = window_energy(frame(t_s, [100.0] * 22), ns(0), ns(4))
    assert "power_gap" in record.qa_flags
    assert record.energy_j == pytest.approx(400.0)  # 100 W throughout


def test_repeated_time_is_refused():
    with pytest.raises(InputError, match="appears twice"):
        window_energy(frame([0.0, 1.0, 1.0, 2.0], [10.0] * 4), ns(0), ns(2))


def test_one_device_is_chosen_or_the_samples_are_refused():
    # Device 0 at 100 W, device 1 at 300 W over [0, 1] s.
    two = pd.concat([frame(T11, W100), frame(T11, [300.0] * 11, device_index=1)])
    with pytest.raises(InputError, match=r"2 devices \[\('nvml', 0\), \('nvml', 1\)\]"):
        window_energy(two, ns(0), ns(1))
    assert window_energy(two, ns(0), ns(1), device=("nvml", 1)).energy_j == pytest.approx(300.0)
    with pytest.raises(InputError, match=r"device \('nvml', 7\) is not among"):
        window_energy(two, ns(0), ns(1), device=("nvml", 7))


def test_segments_at_cut_points_sum_to_the_window():
    # The step series (100 W before 2 s, 200 W from 2 s, samples every 0.5 s) cut at 1 s and 2 s:
    # [0,1] 100 J; [1,2]: [1,1.5] 50 + [1.5,2] 0.5 x 150 = 75 -> 125 J; [2,4] 400 J. Sum 625 J.
    record = window_energy(frame(STEP_T, STEP_W), ns(0), ns(4), cuts_ns=[ns(1), ns(2)])
    assert record.segment_energy_j == pytest.approx((100.0, 125.0, 400.0))
    # The same through a counter (the running integral of a steady 150 W): 150 / 150 / 300 J.
    samples = frame(T21, [150.0] * 21, counter_j=[150.0 * t for t in T21])
    record = window_energy(samples, ns(0), ns(2), cuts_ns=[ns(1), ns(1.5)])
    assert record.method == "counter"
    assert record.segment_energy_j == pytest.approx((150.0, 75.0, 75.0))
    with pytest.raises(InputError, match="cut points"):
        window_energy(samples, ns(0), ns(2), cuts_ns=[ns(1.5), ns(1)])


def test_idle_power_from_idle_samples():
    from tokencarbon.energy import idle_power

    # 40 W for 2 s (21 samples), counter rising 40 J/s: 80 J / 2 s = 40 W, no flag.
    idle = frame(T21, [40.0] * 21, counter_j=[40.0 * t for t in T21])
    power_w, record = idle_power(idle)
    assert power_w == pytest.approx(40.0) and record.qa_flags == ()
    # The idle window's own flags are returned: a frozen counter -> the integral, 40 W, flagged.
    frozen = frame(T21, [40.0] * 21, counter_j=[7.0] * 21)
    power_w, record = idle_power(frozen)
    assert power_w == pytest.approx(40.0) and record.qa_flags == ("counter_frozen",)
    with pytest.raises(InputError, match="at least 2"):
        idle_power(frame([0.0], [40.0]))


def test_combined_windows_one_counter_rejected_is_mixed():
    from tokencarbon.energy import combine

    # Window A [0, 1] s: counter at 100 J/s -> counter 100 J. Window B [2, 3] s: counter frozen
    # -> integral 100 J. Combined: 200 J, method "mixed", flagged; relative difference over A only.
    t_s = [0.1 * i for i in range(31)]
    counter = [100.0 * t if t <= 1.05 else 100.0 for t in t_s]
    samples = frame(t_s, [100.0] * 31, counter_j=counter)
    a = window_energy(samples, ns(0), ns(1))
    b = window_energy(samples, ns(2), ns(3))
    assert (a.method, b.method) == ("counter", "integrated")
    both = combine([a, b], idle_power_w=10.0)
    assert both.method == "mixed" and both.energy_j == pytest.approx(200.0)
    assert both.qa_flags == ("counter_frozen",)
    assert both.relative_difference == pytest.approx(0.0, abs=1e-9)
    assert both.idle_energy_j == pytest.approx(20.0)  # 10 W x 2 s


def test_one_second_average_is_integrated_where_instant_power_is_absent():
    from tokencarbon.energy import AVERAGE_FLAG, idle_power

    assert AVERAGE_FLAG == "integrated_from_1s_average"  # the name importers print and probe for
    # nvidia-smi power.draw on an H100 only: power_w NaN everywhere, power_avg_w the 100 W -> 200 W
    # step of STEP_T/STEP_W. Same trapezoid as test_trapezoid_of_a_power_step: 150 + 75 + 400 = 625 J.
    average = frame(STEP_T, [np.nan] * 9).assign(power_avg_w=STEP_W)
    record = window_energy(average, ns(0), ns(4))
    assert record.energy_j == pytest.approx(625.0) and record.method == "integrated"
    assert record.qa_flags == (AVERAGE_FLAG, "fewer_than_10_samples")  # 9 samples in [0, 4]
    assert record.n_samples == 9
    # Edges between samples as in test_trapezoid_window_edges_between_samples: 550 J.
    assert window_energy(average, ns(0.25), ns(3.75)).energy_j == pytest.approx(550.0)
    # Idle power from averages: [0, 1.5] s at 100 W -> 150 J / 1.5 s = 100 W, the flag kept.
    power_w, idle = idle_power(average.iloc[:4])
    assert power_w == pytest.approx(100.0) and AVERAGE_FLAG in idle.qa_flags
    # One finite instant reading anywhere: instant power is integrated, the averages ignored.
    # The NaN readings are bridged (flagged) by the line from 0.0 s (100 W) to 4.0 s (200 W):
    # 4 s x (100 + 200) / 2 = 600 J, not the averages' 625 J.
    mixed = average.assign(power_w=[100.0] + [np.nan] * 7 + [200.0])
    record = window_energy(mixed, ns(0), ns(4))
    assert record.energy_j == pytest.approx(600.0)
    assert AVERAGE_FLAG not in record.qa_flags and "power_invalid_dropped" in record.qa_flags
    # Neither: the error names both columns.
    with pytest.raises(InputError, match="no finite power_w \\(nor power_avg_w\\)"):
        window_energy(frame(STEP_T, [np.nan] * 9), ns(0), ns(4))
