"""Carbon: intensity traces (both Electricity Maps headers, real exports), hour alignment,
fill, PUE, embodied amortisation. Each expected value is worked out by hand beside it."""

import math
from pathlib import Path

import pandas as pd
import pytest

from tokencarbon.carbon import (
    CarbonAccounting,
    ConstantIntensity,
    carbon_from_energy,
    embodied_carbon_g,
    intensity_for_day,
    load_trace,
    mean_intensity,
    window_carbon,
)
from tokencarbon.errors import ConfigError, InputError

OLDER_HEADER = (
    "Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
    "Carbon Intensity gCO₂eq/kWh (LCA),Low Carbon Percentage,Renewable Percentage,Data Source,"
    "Data Estimated,Data Estimation Method"
)
NEWER_HEADER = (
    "Datetime (UTC),Country,Zone name,Zone id,Carbon intensity gCO₂eq/kWh (direct),"
    "Carbon intensity gCO₂eq/kWh (Life cycle),Carbon-free energy percentage (CFE%),"
    "Renewable energy percentage (RE%),Data source,Data estimated,Data estimation method"
)


def t(hhmm: str, day: str = "2023-01-01") -> int:
    """UTC nanoseconds of a clock time."""
    return pd.Timestamp(f"{day} {hhmm}", tz="UTC").value


def write_trace(path: Path, header: str, rows: list[tuple[str, float, float]]) -> Path:
    """An Electricity Maps export as the portal writes it: CRLF, a quoted zone name with a comma."""
    lines = [header] + [
        f'{when},USA,"Midcontinent Independent Transmission System Operator, Inc.",US-MIDW-MISO,'
        f"{direct},{lca},32.28,14.79,eia.gov,false,"
        for when, direct, lca in rows
    ]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return path


def power(points: list[tuple[int, float]], device: int = 0) -> pd.DataFrame:
    """POWER-like samples of one NVML device without a counter (power integrated)."""
    return pd.DataFrame(
        {
            "t_wall_ns": [p[0] for p in points],
            "power_w": [p[1] for p in points],
            "energy_counter_j": float("nan"),
            "source": "nvml",
            "modeled": False,
            "device_index": device,
        }
    )


def operational_carbon(samples, start_ns, end_ns, intensity, pue=1.0, fill=None, **kw):
    """Carbon of a window through the one path metrics takes: energy.py's energies per segment."""
    return window_carbon(samples, start_ns, end_ns, intensity, pue=pue, fill=fill, **kw)[1]


TWO_HOURS = [("2023-01-01 00:00:00", 200, 250), ("2023-01-01 01:00:00", 400, 450)]
# 100 W held from 00:30 to 01:30, sampled every 10 minutes.
STEADY_100W = power([(t("00:30") + k * 600 * 10**9, 100.0) for k in range(7)])


def test_constant_intensity_and_pue():
    # 3.6e6 J = 1 kWh; 1 kWh x 413 g/kWh = 413 g; x PUE 1.2 = 495.6 g.
    assert carbon_from_energy(3.6e6, ConstantIntensity(413)).carbon_g == pytest.approx(413.0)
    assert carbon_from_energy(3.6e6, ConstantIntensity(413), pue=1.2).carbon_g == pytest.approx(
        495.6
    )
    # The default is the study's Wisconsin 413 g/kWh: 0.5 kWh (1.8e6 J) -> 206.5 g.
    assert carbon_from_energy(1.8e6, ConstantIntensity()).carbon_g == pytest.approx(206.5)
    # Through the samples path: 1000 W for one hour = 1 kWh -> 413 g, energy_kwh 1.0.
    samples = power([(t("10:00"), 1000.0), (t("11:00"), 1000.0)])
    record = operational_carbon(samples, t("10:00"), t("11:00"), ConstantIntensity(413), pue=1.2)
    assert record.energy_kwh == pytest.approx(1.0)
    assert record.carbon_g == pytest.approx(495.6)


@pytest.mark.parametrize("header", [OLDER_HEADER, NEWER_HEADER], ids=["older", "newer"])
def test_window_across_hour_boundary(tmp_path, header):
    trace = load_trace(write_trace(tmp_path / "trace.csv", header, TWO_HOURS), basis="direct")
    record = operational_carbon(STEADY_100W, t("00:30"), t("01:30"), trace)
    # 100 W x 1800 s = 180 kJ = 0.05 kWh per hour; 0.05 x 200 + 0.05 x 400 = 10 + 20 = 30 g.
    assert record.carbon_g == pytest.approx(30.0)
    assert record.energy_j == pytest.approx(360_000.0)
    # Energy-weighted mean: 30 g / 0.1 kWh = 300 g/kWh.
    assert record.intensity_g_per_kwh == pytest.approx(300.0)
    assert [s.carbon_g for s in record.segments] == pytest.approx([10.0, 20.0])
    assert record.segments[0].end_ns == t("01:00")
    # Life-cycle column: 0.05 x 250 + 0.05 x 450 = 12.5 + 22.5 = 35 g.
    lca = load_trace(tmp_path / "trace.csv", basis="lifecycle")
    assert operational_carbon(STEADY_100W, t("00:30"), t("01:30"), lca).carbon_g == pytest.approx(
        35.0
    )


def test_power_ramp_interpolated_at_edges_and_boundary(tmp_path):
    trace = load_trace(write_trace(tmp_path / "trace.csv", OLDER_HEADER, TWO_HOURS))
    # Two samples only: 0 W at 00:00 rising linearly to 200 W at 02:00 (100 W per hour).
    ramp = power([(t("00:00"), 0.0), (t("02:00"), 200.0)])
    record = operational_carbon(ramp, t("00:30"), t("01:30"), trace)
    # Power is 50 W at 00:30, 100 W at 01:00, 150 W at 01:30.
    # 00:30-01:00: mean 75 W x 1800 s = 135 kJ = 0.0375 kWh x 200 = 7.5 g.
    # 01:00-01:30: mean 125 W x 1800 s = 225 kJ = 0.0625 kWh x 400 = 25 g.  Total 32.5 g, 360 kJ.
    assert [s.energy_j for s in record.segments] == pytest.approx([135_000.0, 225_000.0])
    assert record.carbon_g == pytest.approx(32.5)
    assert record.energy_j == pytest.approx(360_000.0)


def test_energy_counter_and_several_devices(tmp_path):
    trace = load_trace(write_trace(tmp_path / "trace.csv", OLDER_HEADER, TWO_HOURS))
    # Counter readings (J): 5,000 at 00:30; 125,000 at 00:50; 365,000 at 01:10; 485,000 at 01:30.
    # Linear between readings: at 01:00 (halfway 00:50-01:10) 125,000 + 120,000 = 245,000 J.
    # Hour 0: 240,000 J = 0.0667 kWh x 200 = 13.33 g; hour 1: 240,000 J x 400 = 26.67 g. Total 40 g.
    # Power reads a steady 200 W (the counter's mean), so the counter is plausible and used.
    counter = power([(t("00:30"), 200.0), (t("00:50"), 200.0), (t("01:10"), 200.0),
                     (t("01:30"), 200.0)]).assign(
        energy_counter_j=[5_000.0, 125_000.0, 365_000.0, 485_000.0]
    )  # fmt: skip
    energy, record = window_carbon(counter, t("00:30"), t("01:30"), trace)
    assert energy.method == "counter"
    assert record.carbon_g == pytest.approx(40.0)
    # Two devices each at a steady 100 W: refused (summing them silently gave +68 % on a 4-GPU node
    # with three idle GPUs); choosing one gives that device's 30 g.
    two = pd.concat([STEADY_100W, STEADY_100W.assign(device_index=1)])
    with pytest.raises(InputError, match="2 devices"):
        operational_carbon(two, t("00:30"), t("01:30"), trace)
    one = operational_carbon(two, t("00:30"), t("01:30"), trace, device=("nvml", 1))
    assert one.carbon_g == pytest.approx(30.0)


def test_energy_only_total_over_a_trace(tmp_path):
    trace = load_trace(write_trace(tmp_path / "trace.csv", NEWER_HEADER, TWO_HOURS))
    # 360 kJ spread evenly over 00:30-01:30: 0.05 kWh per hour -> 0.05 x 200 + 0.05 x 400 = 30 g.
    record = carbon_from_energy(360_000.0, trace, start_ns=t("00:30"), end_ns=t("01:30"))
    assert record.carbon_g == pytest.approx(30.0)
    with pytest.raises(ConfigError, match="time window"):
        carbon_from_energy(360_000.0, trace)


def test_missing_intensity_column_names_file_columns_and_variants(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text(
        "Datetime (UTC),Zone Id,Intensity\n2023-01-01 00:00:00,DE,300\n", encoding="utf-8"
    )
    with pytest.raises(InputError) as err:
        load_trace(path)
    message = str(err.value)
    assert str(path) in message and "'Intensity'" in message
    assert "(LCA)" in message and "(Life cycle)" in message
    with pytest.raises(ConfigError, match="basis"):
        load_trace(path, basis="marginal")


def test_real_miso_hourly_export(shared_data):
    path = shared_data / "electricitymaps" / "US-MIDW-MISO_2023_hourly.csv"
    direct, lca = load_trace(path, "direct"), load_trace(path, "lifecycle")
    # SOURCES.md: 8,760 hourly rows, no gaps; direct 257.79-554.82, LCA 305.7-633.47 gCO2eq/kWh.
    assert len(direct.start_ns) == 8760 and direct.period == "3600 s"
    assert (direct.end_ns[:-1] == direct.start_ns[1:]).all()
    assert direct.intensity_g_per_kwh.min() == 257.79 and direct.intensity_g_per_kwh.max() == 554.82
    assert lca.intensity_g_per_kwh.min() == 305.7 and lca.intensity_g_per_kwh.max() == 633.47
    assert direct.zone_id == "US-MIDW-MISO"
    # Line 4700 of the file: 2023-07-15 18:00:00, direct 475.52, LCA 549.04.
    row = list(direct.start_ns).index(t("18:00", "2023-07-15"))
    assert direct.intensity_g_per_kwh[row] == 475.52 and lca.intensity_g_per_kwh[row] == 549.04
    # 300 W from 17:30 to 18:30: 0.15 kWh at 484.47 (the 17:00 row) + 0.15 kWh at 475.52
    # = 72.6705 + 71.328 = 143.9985 g.
    samples = power([(t("17:30", "2023-07-15"), 300.0), (t("18:30", "2023-07-15"), 300.0)])
    window = (t("17:30", "2023-07-15"), t("18:30", "2023-07-15"))
    assert operational_carbon(samples, *window, direct).carbon_g == pytest.approx(143.9985)
    # Figure 6a's day, read off lines 4106-4129: 00:00 458.61, 13:00 442.28, 23:00 480.58.
    day = intensity_for_day(direct, "2023-06-21")
    assert len(day) == 24 and day.name == "US-MIDW-MISO"
    assert (day[0], day[13], day[23]) == pytest.approx((458.61, 442.28, 480.58))
    # No day given: the trace's first day, whose 00:00 row (line 2) is 489.46.
    assert intensity_for_day(direct)[0] == pytest.approx(489.46)


def test_real_de_monthly_export(shared_data):
    trace = load_trace(shared_data / "electricitymaps" / "DE_2023_monthly.csv", "direct")
    lca = load_trace(shared_data / "electricitymaps" / "DE_2023_monthly.csv", "lifecycle")
    # 12 monthly rows; January direct 410.43, LCA 475.20; July (semicolon source list) 259.31.
    assert len(trace.start_ns) == 12 and trace.period == "1 month" and trace.zone_id == "DE"
    assert trace.intensity_g_per_kwh[0] == 410.43 and lca.intensity_g_per_kwh[0] == 475.20
    assert trace.intensity_g_per_kwh[6] == 259.31
    # February has 28 days; December ends at 2024-01-01.
    assert trace.end_ns[1] == t("00:00", "2023-03-01") and trace.end_ns[-1] == t(
        "00:00", "2024-01-01"
    )
    # 1 kW from Jan 31 23:00 to Feb 1 01:00: 1 kWh at 410.43 + 1 kWh at 447.34 = 857.77 g.
    samples = power([(t("23:00", "2023-01-31"), 1000.0), (t("01:00", "2023-02-01"), 1000.0)])
    window = (t("23:00", "2023-01-31"), t("01:00", "2023-02-01"))
    assert operational_carbon(samples, *window, trace).carbon_g == pytest.approx(857.77)


GAPPY = [  # 02:00 is missing
    ("2023-01-01 00:00:00", 100, 100),
    ("2023-01-01 01:00:00", 200, 200),
    ("2023-01-01 03:00:00", 400, 400),
]


def test_gap_is_an_error_unless_filled(tmp_path):
    path = write_trace(tmp_path / "gappy.csv", OLDER_HEADER, GAPPY)
    trace = load_trace(path)
    samples = power([(t("01:30"), 100.0), (t("03:30"), 100.0)])
    with pytest.raises(InputError) as err:
        operational_carbon(samples, t("01:30"), t("03:30"), trace)
    message = str(err.value)
    assert str(path) in message
    assert "2023-01-01T02:00:00+00:00 to 2023-01-01T03:00:00+00:00" in message
    assert "previous" in message and "nearest" in message
    # previous: 01:30-02:00 0.05 kWh x 200 = 10; 02:00-03:00 0.1 kWh x 200 = 20;
    # 03:00-03:30 0.05 kWh x 400 = 20.  Total 50 g, 3600 s filled.
    filled = operational_carbon(samples, t("01:30"), t("03:30"), trace, fill="previous")
    assert filled.carbon_g == pytest.approx(50.0) and filled.filled_s == pytest.approx(3600.0)
    # nearest: the gap splits at 02:30: 02:00-02:30 at 200 -> 10 g, 02:30-03:00 at 400 -> 20 g;
    # 10 + 10 + 20 + 20 = 60 g.
    nearest = operational_carbon(samples, t("01:30"), t("03:30"), trace, fill="nearest")
    assert nearest.carbon_g == pytest.approx(60.0)
    with pytest.raises(ConfigError, match="fill policy 'mean'"):
        operational_carbon(samples, t("01:30"), t("03:30"), trace, fill="mean")


def test_window_outside_the_trace(tmp_path):
    path = write_trace(tmp_path / "short.csv", NEWER_HEADER, TWO_HOURS)  # covers 00:00-02:00
    trace = load_trace(path)
    late = power([(t("01:30"), 100.0), (t("02:30"), 100.0)])
    with pytest.raises(InputError) as err:
        operational_carbon(late, t("01:30"), t("02:30"), trace)
    assert str(path) in str(err.value)
    assert "2023-01-01T02:00:00+00:00 to 2023-01-01T02:30:00+00:00" in str(err.value)
    # previous carries hour 1 on: 0.05 kWh x 400 + 0.05 kWh x 400 = 40 g.
    record = operational_carbon(late, t("01:30"), t("02:30"), trace, fill="previous")
    assert record.carbon_g == pytest.approx(40.0)
    # Before the first row nothing precedes, so "previous" still fails; "nearest" takes hour 0:
    # 23:30-00:00 0.05 kWh x 200 + 00:00-00:30 0.05 kWh x 200 = 20 g.
    early = power([(t("23:30", "2022-12-31"), 100.0), (t("00:30"), 100.0)])
    window = (t("23:30", "2022-12-31"), t("00:30"))
    with pytest.raises(InputError, match="2022-12-31T23:30:00"):
        operational_carbon(early, *window, trace, fill="previous")
    assert operational_carbon(early, *window, trace, fill="nearest").carbon_g == pytest.approx(20.0)


def test_bad_inputs_are_named():
    with pytest.raises(ConfigError, match="pue"):
        carbon_from_energy(1.0, ConstantIntensity(), pue=0.9)
    with pytest.raises(InputError, match="sampling must start before the window"):
        operational_carbon(STEADY_100W, t("00:00"), t("01:30"), ConstantIntensity())


def test_embodied_amortisation():
    # GSF SCI example: 1000 kgCO2e over 4 years, reserved for 1 hour:
    # 1,000,000 g x 3600 s / (4 x 365 x 86400 s) = 3.6e9 / 126,144,000 = 28.5388 g ("around 28 g").
    assert embodied_carbon_g(1000, 4, 3600) == pytest.approx(28.538813, rel=1e-6)
    # A quarter of the device (2 of 8 GPUs): 28.538813 / 4 = 7.134703 g.
    assert embodied_carbon_g(1000, 4, 3600, utilisation_share=0.25) == pytest.approx(
        7.134703, rel=1e-6
    )
    # 150 kg over 5 years for one day: 150,000 g x 86400 / (5 x 31,536,000) = 82.1918 g.
    assert embodied_carbon_g(150, 5, 86400) == pytest.approx(82.191781, rel=1e-6)
    with pytest.raises(ConfigError, match="lifetime_years"):
        embodied_carbon_g(150, 0, 86400)


def test_blank_cell_is_a_gap_and_text_is_an_error(tmp_path):
    blank = write_trace(
        tmp_path / "blank.csv",
        OLDER_HEADER,
        [*TWO_HOURS[:1], ("2023-01-01 01:00:00", "", ""), ("2023-01-01 02:00:00", 400, 400)],
    )
    trace = load_trace(blank)
    # Hour 1 is blank: the rows left are 00:00-01:00 and 02:00-03:00, and the window
    # 00:30-01:30 is uncovered from 01:00 to its end at 01:30.
    assert list(trace.end_ns) == [t("01:00"), t("03:00")]
    with pytest.raises(InputError, match="01:00:00\\+00:00 to 2023-01-01T01:30:00"):
        operational_carbon(STEADY_100W, t("00:30"), t("01:30"), trace)
    text = write_trace(
        tmp_path / "text.csv", NEWER_HEADER, [*TWO_HOURS, ("2023-01-01 02:00:00", "4o0", 1)]
    )
    with pytest.raises(InputError, match="line 4.*'4o0'"):
        load_trace(text)


def test_carbon_takes_segment_energies_from_energy(tmp_path):
    from tokencarbon.carbon import operational_carbon as carbon_of_segments

    trace = load_trace(write_trace(tmp_path / "trace.csv", OLDER_HEADER, TWO_HOURS))
    segs = trace.segments(t("00:30"), t("01:30"))
    # 0.1 kWh (360 kJ) in the 00:30-01:00 piece at 200, 0.05 kWh (180 kJ) in 01:00-01:30 at 400:
    # 20 + 20 = 40 g; x PUE 1.5 = 60 g. Energy-weighted mean 40 / 0.15 = 266.67 g/kWh.
    record = carbon_of_segments(segs, [360_000.0, 180_000.0], pue=1.5)
    assert record.carbon_g == pytest.approx(60.0)
    assert record.intensity_g_per_kwh == pytest.approx(40 / 0.15)
    with pytest.raises(InputError, match="one energy per segment"):
        carbon_of_segments(segs, [1.0], pue=1.0)
    with pytest.raises(InputError, match="finite number >= 0"):
        carbon_of_segments(segs, [float("nan"), 1.0], pue=1.0)


def test_fill_far_from_the_trace_is_refused_unless_asked(tmp_path):
    # Issue 10 §5: "nearest" gave cells run in 2026 the last hour of a 2023 trace, unflagged.
    trace = load_trace(write_trace(tmp_path / "trace.csv", OLDER_HEADER, TWO_HOURS))  # 00:00-02:00
    late = power([(t("10:00", "2026-03-01"), 100.0), (t("10:30", "2026-03-01"), 100.0)])
    window = (t("10:00", "2026-03-01"), t("10:30", "2026-03-01"))
    with pytest.raises(InputError, match=r"lies up to \d+ s from the intensity trace.*max_fill_s"):
        operational_carbon(late, *window, trace, fill="nearest")
    # Asked for (no limit): the last hour's 400 g/kWh, 100 W x 1800 s = 0.05 kWh -> 20 g,
    # the whole 1800 s filled.
    record = operational_carbon(late, *window, trace, fill="nearest", max_fill_s=None)
    assert record.carbon_g == pytest.approx(20.0) and record.filled_s == pytest.approx(1800.0)
    # Within the tolerance: 02:00-02:45 under "previous" lies at most 2700 s from the 01:00 row's
    # end (02:00)... i.e. 45 min = 2700 s <= 3600 s, accepted; with max_fill_s 1800 refused.
    near = power([(t("01:45"), 100.0), (t("02:45"), 100.0)])
    record = operational_carbon(near, t("01:45"), t("02:45"), trace, fill="previous")
    assert record.max_fill_distance_s == pytest.approx(2700.0)
    assert record.filled_s == pytest.approx(2700.0)
    with pytest.raises(InputError, match="2700 s"):
        operational_carbon(near, t("01:45"), t("02:45"), trace, fill="previous", max_fill_s=1800)
    with pytest.raises(ConfigError, match="max_fill_s"):
        trace.segments(t("01:45"), t("02:45"), "previous", max_fill_s=float("nan"))


def test_nearest_fill_distance_is_measured_to_the_row_used(tmp_path):
    # GAPPY misses 02:00-03:00. "nearest" splits it at 02:30: 02:00-02:30 takes the 01:00 row
    # (its end 02:00, at most 1800 s away), 02:30-03:00 takes the 03:00 row (at most 1800 s).
    trace = load_trace(write_trace(tmp_path / "gappy.csv", OLDER_HEADER, GAPPY))
    segs = trace.segments(t("01:30"), t("03:30"), "nearest")
    assert segs.fill_distance_s.tolist() == [0.0, 1800.0, 1800.0, 0.0]
    # "previous" carries the 01:00 row over the whole gap: 03:00 is 3600 s from 02:00.
    segs = trace.segments(t("01:30"), t("03:30"), "previous")
    assert segs.fill_distance_s.max() == 3600.0


def test_off_grid_row_empty_time_and_infinite_value_are_named(tmp_path):
    # An hourly trace with one extra row at 02:30: steps 3600, 3600, 1800, 1800, 3600 s; the most
    # common (3600 s) is the period and line 5 (the 02:30 row) is named, not a coverage error.
    rows = [(f"2023-01-01 {h}:00", 100, 100) for h in ("00:00", "01:00", "02:00", "02:30",
                                                       "03:00", "04:00")]  # fmt: skip
    with pytest.raises(InputError, match=r"line 5 \(2023-01-01T02:30:00\+00:00\) is off the "
                                         r"trace's grid of 3600 s rows"):
        load_trace(write_trace(tmp_path / "offgrid.csv", OLDER_HEADER, rows))
    empty = write_trace(tmp_path / "empty.csv", OLDER_HEADER, [*TWO_HOURS, ("", 1, 1)])
    with pytest.raises(InputError, match="line 4, column 'Datetime \\(UTC\\)' is empty"):
        load_trace(empty)
    for text in ("inf", "NaN", "-5"):
        bad = write_trace(tmp_path / "bad.csv", OLDER_HEADER, [*TWO_HOURS, ("2023-01-01 02:00:00", text, 1)])
        with pytest.raises(InputError, match=f"line 4.*'{text}' is not an intensity"):
            load_trace(bad)


# --- issue 21: a finished measurement is never lost to its carbon --------------------------------


def test_an_uncovered_window_keeps_its_energy_and_says_why_carbon_is_missing(tmp_path):
    from tokencarbon.carbon import CLI_NAMES, TraceCoverageError, first_uncovered
    from tokencarbon.monitor import measure_windows

    # A trace of 2022-12-31 23:00 and 2023-01-01 00:00: it covers 23:00 to 01:00.
    trace = load_trace(write_trace(tmp_path / "t.csv", OLDER_HEADER, [
        ("2022-12-31 23:00:00", 200, 250), ("2023-01-01 00:00:00", 200, 250)]))  # fmt: skip
    window = [(t("00:40"), t("01:20"))]  # 100 W for 40 minutes: 100 x 2400 s = 240,000 J
    with pytest.raises(TraceCoverageError) as err:
        measure_windows(STEADY_100W, window, name="w", device="d", intensity=trace)
    assert "set the fill policy (config carbon.fill)" in str(err.value)
    assert "set the fill policy (--fill)" in err.value.message(CLI_NAMES)
    m = measure_windows(STEADY_100W, window, name="w", device="d", intensity=trace,
                        tokens=1000, keep_energy=True)  # fmt: skip
    assert m.energy_j == pytest.approx(240_000.0) and m.j_per_token == pytest.approx(240.0)
    assert m.carbon_g != m.carbon_g and m.g_per_token != m.g_per_token  # NaN: not 0 g
    assert "does not cover 2023-01-01T01:00:00+00:00 to 2023-01-01T01:20:00+00:00" in m.carbon_missing
    assert m.to_dict()["carbon_g"] is None
    # Covered (fill "previous" carries 00:00's 200 g/kWh 20 minutes on, within max_fill_s 3600):
    # 240,000 J = 0.0667 kWh x 200 = 13.333 g.
    m = measure_windows(STEADY_100W, window, name="w", device="d", intensity=trace,
                        fill="previous", keep_energy=True)  # fmt: skip
    assert m.carbon_missing is None and m.carbon_g == pytest.approx(240_000 / 3.6e6 * 200)
    # first_uncovered names the first window the trace cannot give an intensity, with its error;
    # max_fill_s 600 s is less than the 20 minutes the fill would reach.
    label, exc = first_uncovered(trace, [("a", t("00:10"), t("00:20")), ("b", *window[0])],
                                 "previous", 600.0)  # fmt: skip
    assert label == "b" and "more than --max-fill-s = 600 s" in exc.message(CLI_NAMES)
    assert first_uncovered(ConstantIntensity(413.0), [("a", *window[0])]) is None


def test_one_mean_intensity_with_one_answer_at_zero_energy():
    # 100 J at 200 gCO2/kWh and 300 J at 400: (100 x 200 + 300 x 400) / 400 = 350
    assert mean_intensity([200.0, 400.0], [100.0, 300.0], [3.0, 1.0]) == 350.0
    # no energy: the time-weighted mean, 1 s at 200 and 3 s at 400: (200 + 1200) / 4 = 350
    assert mean_intensity([200.0, 400.0], [0.0, 0.0], [1.0, 3.0]) == 350.0
    assert math.isnan(mean_intensity([], [], []))


def test_the_carbon_accounting_is_chosen_once_from_the_config(tmp_path):
    constant = CarbonAccounting.from_config(
        {"source": "constant", "intensity_g_per_kwh": 250, "pue": 1.2, "fill": None,
         "max_fill_s": None}
    )  # fmt: skip
    assert constant.intensity == ConstantIntensity(250.0) and constant.pue == 1.2
    assert constant.max_fill_s is None
    # absent keys take the schema's defaults: the study's 413 g/kWh, PUE 1, no fill, 1 h
    default = CarbonAccounting.from_config({})
    assert (default.intensity, default.pue, default.fill, default.max_fill_s) == (
        ConstantIntensity(413.0), 1.0, None, 3600.0)
    with pytest.raises(ConfigError, match="carbon pue 0.9: must be >= 1.0"):
        CarbonAccounting(ConstantIntensity(413.0), pue=0.9)
    with pytest.raises(ConfigError, match="carbon fill policy 'linear'"):
        CarbonAccounting(ConstantIntensity(413.0), fill="linear")
