"""QA flags in two tiers (tokencarbon.qa): what holds for the whole study is said once, what marks a
suspect cell is marked on the figures' points and listed in the tables."""

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from tokencarbon import energy, metrics, qa, tables
from tokencarbon.figures.carbon_analysis import pareto_carbon_latency
from tokencarbon.figures.common import SUSPECT_STYLE
from tokencarbon.figures.measured import fig4_throughput_latency
from tokencarbon.figures.registry import Study, targets
from tokencarbon.figures.summary import metrics_table, summary_markdown
from tokencarbon.plan import Plan

PACKAGE = Path(metrics.__file__).resolve().parent


def _written_flags() -> set[str]:
    """Every flag name the metrics and energy code writes: the *_FLAG constants, the counter's
    rejections, and each literal string appended to a list of flags."""
    names = {v for k, v in vars(metrics).items() if k.endswith("_FLAG")}
    names |= {energy.AVERAGE_FLAG, *energy.COUNTER_REJECTED}
    for module in ("metrics.py", "energy.py"):
        source = (PACKAGE / module).read_text()
        names |= set(re.findall(r"flags\.append\(\"([a-z0-9_]+)\"\)", source))
    return names


def test_every_flag_the_code_writes_has_a_tier():
    written = _written_flags()
    # the scan finds the flags it must: a constant, a literal of each module, the counter's
    assert {"foreign_cpu_use", "steady_window_short", "power_gap", "counter_frozen",
            "fewer_than_10_samples", "no_steps_energy_by_tokens"} <= written  # fmt: skip
    assert sorted(written - set(qa.FLAGS)) == []


def test_tiers_by_hand():
    # How this kind of machine measures: the study's tier.
    for flag in ("modeled", "steady_window_short", "peaks_measured_under_load", "idle_shared"):
        assert qa.tier(flag) == qa.STUDY, flag
    # A suspect cell: other processes on its CPUs, a frozen counter, a high CV.
    for flag in ("foreign_cpu_use", "counter_frozen", "j_per_token_cv_high", "throttled"):
        assert qa.tier(flag) == qa.CELL, flag
    # An idle-window flag takes its flag's tier; a flag nobody classified is shown (CELL).
    assert qa.tier("idle_modeled") == qa.STUDY and qa.tier("idle_counter_frozen") == qa.CELL
    assert qa.tier("a_flag_added_later") == qa.CELL
    assert qa.meaning("idle_counter_frozen").startswith("idle window: ")
    value = "modeled;idle_modeled;steady_window_short;foreign_cpu_use"
    assert qa.cell_flags(value) == ["foreign_cpu_use"]
    assert qa.study_flags(value) == ["modeled", "idle_modeled", "steady_window_short"]
    assert qa.cell_flags(None) == [] and qa.cell_flags(float("nan")) == []
    # counted once per cell, in the order first seen
    counts = qa.study_flag_counts(["modeled;steady_window_short", "modeled;modeled", "", None])
    assert counts == {"modeled": 2, "steady_window_short": 1}


# The CPU default's picture (issue 24): every cell modeled, idle modeled and short of steady
# state; one cell (tiny-llama bs4) with other processes on its CPUs.
ALWAYS = "modeled;idle_modeled;steady_window_short"


def _table() -> pd.DataFrame:
    rows = [
        # batch 1: 11 ms/token, 0.64 mg; batch 4: 5 ms, 0.23 mg (flagged); cb16: 6 ms, 0.21 mg
        ("static", 1, 0.011, 750.0, 6.4e-4, ALWAYS),
        ("static", 4, 0.005, 2000.0, 2.3e-4, ALWAYS + ";foreign_cpu_use"),
        ("continuous", 16, 0.006, 2200.0, 2.1e-4, ALWAYS),
    ]
    base = {n: float("nan") for n in tables.METRICS.names}
    df = pd.DataFrame([
        base | {"platform": "cpu", "model": "tiny-llama", "architecture": "tiny-llama",
                "dtype": "float32", "quantization": "none", "energy_method": "modeled",
                "mode": mode, "batch_size": bs, "e2e_s_per_token": lat, "s_per_token_user": 0.002,
                "tokens_per_s": tok_s, "g_per_token": g, "qa_flags": flags, "n_repeats": 1}
        for mode, bs, lat, tok_s, g, flags in rows
    ], columns=tables.METRICS.names)  # fmt: skip
    return tables.check(df, tables.METRICS, "test metrics")


def test_study_flags_said_once_and_only_the_suspect_cell_listed():
    md = summary_markdown(_table(), [], [0.008])
    study = md.split("### How this study measured")[1].split("###")[0]
    assert "modeled (every cell:" in study and "steady_window_short (every cell:" in study
    assert "foreign_cpu_use" not in study
    suspect = md.split("### Suspect cells")[1]
    assert "| tiny-llama | cpu | static | 4 | foreign_cpu_use |" in suspect
    assert "| 1 |" not in suspect and "| 16 |" not in suspect and "modeled" not in suspect
    # the metrics table's flags column: only what marks the suspect cell
    table = metrics_table(_table())
    flags = [dict(zip(table.header, r))["suspect-cell QA flags"] for r in table.rows]
    assert sorted(flags) == ["", "", "foreign_cpu_use"]


def _rings(ax) -> list[tuple[float, float]]:
    return [(x, y) for ln in ax.lines
            if ln.get_marker() == "o" and ln.get_markeredgecolor() == SUSPECT_STYLE["mec"]
            and ln.get_markerfacecolor() == "none"
            for x, y in zip(ln.get_xdata(), ln.get_ydata())]  # fmt: skip


def test_suspect_cells_are_ringed_on_the_points_with_a_legend_entry():
    df = _table()
    ax = fig4_throughput_latency(df).axes[0]
    # only static batch 4: 5 ms/token, 2000 tokens/s
    assert _rings(ax) == [pytest.approx((5.0, 2000.0))]
    assert "suspect cell: foreign_cpu_use" in [t.get_text() for t in ax.get_legend().get_texts()]
    fig = pareto_carbon_latency(df, [0.008])
    assert _rings(fig.axes[0]) == [pytest.approx((5.0, 0.23))]  # 2.3e-4 g = 0.23 mg
    assert "suspect cell: foreign_cpu_use" in [t.get_text() for t in fig.legends[0].get_texts()]
    # a study without suspect cells draws no ring and no such legend entry
    clean = df.assign(qa_flags=ALWAYS)
    ax = fig4_throughput_latency(clean).axes[0]
    assert _rings(ax) == []
    assert not any("suspect" in t.get_text() for t in ax.get_legend().get_texts())


def _study(repo: Path, carbon: dict) -> Study:
    config = yaml.safe_load((repo / "config/config.yaml").read_text())
    config["carbon"] |= carbon
    validate(config, str(repo / "workflow/schemas/config.schema.yaml"))
    return Study(Plan(config))


def test_fig6a_only_with_a_trace(repo, shared_data):
    fig6a = "results/figures/fig6a_intensity_day.png"
    assert fig6a not in targets(_study(repo, {}))  # the default: constant 413 gCO2/kWh
    trace = shared_data / "electricitymaps" / "US-MIDW-MISO_2023_hourly.csv"
    assert fig6a in targets(_study(repo, {"source": "trace", "trace": str(trace)}))
