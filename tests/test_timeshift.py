"""Time-shift what-if on the real MISO 2023 hourly export, against the CSV rows read by hand."""

import pandas as pd
import pytest

from tokencarbon import tables
from tokencarbon.carbon import ConstantIntensity, load_trace
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.timeshift import JobProfile, job_carbon_g, timeshift


def t(when: str) -> int:
    return pd.Timestamp(when, tz="UTC").value


@pytest.fixture(scope="module")
def miso(shared_data):
    return load_trace(shared_data / "electricitymaps" / "US-MIDW-MISO_2023_hourly.csv")


# A 1-hour job of 1 kWh (3.6e6 J): started on the hour it lies in one row, so its carbon in g is
# that row's direct intensity in g/kWh. The file's rows (Datetime (UTC), direct), lines 4682-4705,
# 2023-07-15: 00 488.66, 01 490.14, 02 483.98, 03 480.92, 04 477.52, 05 462.5, 06 443.11,
# 07 430.67, 08 430.21, 09 424.02, 10 432.31, 11 438.17, 12 448.8, 13 459.84, 14 482.25,
# 15 492.14, 16 489.58, 17 484.47, 18 475.52, 19 466.79, 20 464.56, 21 464.45, 22 470.98,
# 23 483.01. Lowest: 09:00, 424.02.
# Lines 4658-4681, 2023-07-14: lowest 07:00, 430.25 (then 08:00 431.69, 06:00 436.05).
ONE_KWH_HOUR = JobProfile.constant(3.6e6, 3600.0)


def test_best_start_and_saving_on_2023_07_15_equal_the_csv_rows(miso):
    # The job actually started at 18:00 UTC (475.52 g). Oracle: 09:00, 424.02 g, saving
    # 475.52 - 424.02 = 51.50 g (10.8 %). Policy (best hour of 2023-07-14: 07:00): 07:00 on the
    # 15th, 430.67 g, saving 475.52 - 430.67 = 44.85 g: 87 % of the oracle's bound.
    df = timeshift(ONE_KWH_HOUR, miso, "2023-07-15", t("2023-07-15 18:00"), job="test")
    tables.check(df, tables.TIMESHIFT, "timeshift")
    assert len(df) == 24 and df["zone_id"].unique().tolist() == ["US-MIDW-MISO"]
    best = df[df["is_oracle_best"]].iloc[0]
    assert best["start_utc"] == "2023-07-15T09:00:00+00:00"
    assert best["carbon_g"] == pytest.approx(424.02)
    assert best["saving_vs_actual_g"] == pytest.approx(51.50)
    actual = df[df["is_actual"]].iloc[0]
    assert actual["carbon_g"] == pytest.approx(475.52) and actual["saving_vs_actual_g"] == 0
    policy = df[df["is_policy"]].iloc[0]
    assert policy["start_utc"] == "2023-07-15T07:00:00+00:00"
    assert policy["carbon_g"] == pytest.approx(430.67)
    assert policy["saving_vs_actual_g"] == pytest.approx(44.85)
    # Every hour's carbon is its row: 00:00 488.66, 15:00 492.14 (the day's highest), 23:00 483.01.
    by_hour = df.set_index("start_utc")["carbon_g"]
    assert by_hour["2023-07-15T00:00:00+00:00"] == pytest.approx(488.66)
    assert by_hour.max() == pytest.approx(492.14)
    assert by_hour["2023-07-15T23:00:00+00:00"] == pytest.approx(483.01)


def test_actual_start_off_the_hour_and_pue(miso):
    # Started at 17:30: half the kWh at 484.47 (17:00 row), half at 475.52 (18:00): 479.995 g;
    # a row of its own (25 rows). With PUE 1.2 every carbon is x 1.2: best 424.02 x 1.2 = 508.824.
    df = timeshift(ONE_KWH_HOUR, miso, "2023-07-15", t("2023-07-15 17:30"), pue=1.2)
    assert len(df) == 25
    actual = df[df["is_actual"]].iloc[0]
    assert actual["carbon_g"] == pytest.approx(479.995 * 1.2)
    assert df[df["is_oracle_best"]].iloc[0]["carbon_g"] == pytest.approx(424.02 * 1.2)


def test_a_two_piece_profile(miso):
    # Two cells back to back: 1.8e6 J over 1800 s then 1.8e6 J over 1800 s. Started at 08:30:
    # the first half-kWh in the 08:00 row (430.21), the second in the 09:00 row (424.02):
    # 0.5 x 430.21 + 0.5 x 424.02 = 427.115 g; energy-weighted intensity 427.115 g/kWh.
    job = JobProfile.back_to_back([1800.0, 1800.0], [1.8e6, 1.8e6])
    assert (job.duration_s, job.energy_j) == (3600.0, 3.6e6)
    carbon_g, g_per_kwh = job_carbon_g(job, t("2023-07-15 08:30"), miso)
    assert carbon_g == pytest.approx(427.115) and g_per_kwh == pytest.approx(427.115)


def test_bad_inputs_are_named(miso):
    with pytest.raises(ConfigError, match="hourly intensity trace"):
        timeshift(ONE_KWH_HOUR, ConstantIntensity(413), "2023-07-15", t("2023-07-15 18:00"))
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        timeshift(ONE_KWH_HOUR, miso, "15/07/2023", t("2023-07-15 18:00"))
    with pytest.raises(InputError, match="durations_s"):
        JobProfile.constant(1.0, 0.0)
    # 2024-01-01 lies after the trace's last row (2023-12-31 23:00-24:00): refused, not filled.
    with pytest.raises(InputError, match="does not cover"):
        timeshift(ONE_KWH_HOUR, miso, "2024-01-01", t("2024-01-01 12:00"))


def test_study_timeshift_from_metrics_and_cells(miso):
    from tokencarbon.timeshift import study_timeshift

    # Two cells measured on 2026-03-01 from 18:00 UTC: 1.8e6 J over 1800 s each (the second
    # listed first in metrics). Back to back they are the 1-kWh hour above; placed on 2023-07-15
    # at their time of day (18:00): 475.52 g; best 09:00, 424.02 g, saving 51.50 g.
    keys = {"platform": "cpu", "model": "m", "mode": "static"}
    cells = pd.DataFrame([{**keys, "batch_size": 1, "window_start_wall_ns": t("2026-03-01 18:00")},
                          {**keys, "batch_size": 2, "window_start_wall_ns": t("2026-03-01 18:40")}])
    metrics = pd.DataFrame([{**keys, "batch_size": 2, "energy_j": 1.8e6, "window_s": 1800.0},
                            {**keys, "batch_size": 1, "energy_j": 1.8e6, "window_s": 1800.0}])
    df = study_timeshift(metrics, cells, miso, "2023-07-15")
    actual = df[df["is_actual"]].iloc[0]
    assert actual["start_utc"] == "2023-07-15T18:00:00+00:00"
    assert actual["carbon_g"] == pytest.approx(475.52)
    assert df[df["is_oracle_best"]].iloc[0]["saving_vs_actual_g"] == pytest.approx(51.50)
    assert (df["job"] == "study").all() and (df["energy_j"] == 3.6e6).all()
