"""Energy from counters and from integrated power, against values worked out by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from tokencarbon.energy import cell_energy, energy_from_counter, energy_from_power
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


def test_counter_that_falls_is_refused():
    samples = frame([0, 1, 2], [100.0] * 3, counter_j=[5000.0, 10.0, 110.0])
    with pytest.raises(InputError, match="decreases"):
        energy_from_counter(samples, ns(0), ns(2))


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
