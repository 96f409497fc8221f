"""benchmarks/plot_records.py: shaping of hand-made benchmark records (values worked out by hand
beside each assertion), the figures written, and errors that name the file and field at fault."""

import copy
import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from tokencarbon import tables
from tokencarbon.errors import InputError, SchemaError
from tokencarbon.figures.layout import layout_problems

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "plot_records.py"
_spec = importlib.util.spec_from_file_location("plot_records", SCRIPT)
plot_records = importlib.util.module_from_spec(_spec)
sys.modules["plot_records"] = plot_records  # dataclasses look their module up there
_spec.loader.exec_module(plot_records)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CRITERIA = {
    "tok_diff_pct_below": 1.0,
    "energy_relative_difference_below": 0.02,
    "energy_window_s_at_least": 10.0,
}
# ABBA order as sidecar_overhead.py runs it.
SIDECAR = {
    "benchmark": "sidecar_overhead",
    "smoke": False,
    "machine": {"device_name": "Test GPU 80GB"},
    "repetitions": [
        {"sidecar": "off", "tok_per_s": 1000.0, "window_s": 11.0},
        {"sidecar": "on", "tok_per_s": 1005.0, "window_s": 11.0,
         "energy_counter_j": 1000.0, "energy_integrated_j": 1010.0},
        {"sidecar": "on", "tok_per_s": 995.0, "window_s": 12.0,
         "energy_counter_j": 2000.0, "energy_integrated_j": 1990.0},
        {"sidecar": "off", "tok_per_s": 1010.0, "window_s": 11.0},
        {"sidecar": "off", "tok_per_s": 990.0, "window_s": 11.0},
        {"sidecar": "on", "tok_per_s": 1003.0, "window_s": 9.0,
         "energy_counter_j": 400.0, "energy_integrated_j": 412.0},
    ],  # fmt: skip
    "summary": {"criteria": CRITERIA},
}
DECODE = {
    "benchmark": "decode_roofline",
    "smoke": False,
    "machine": {"device_name": "Test GPU 80GB"},
    "bandwidth": {"copy": {"bytes_per_s": 2e12}, "datasheet": None},
    "results": [
        {"case": "7b-bs1", "mode": "graph", "model": "llama-2-7b", "batch": 1,
         "decode_tok_per_s": 150.0, "output_tok_per_s": 148.0, "useful_bytes_per_step": 1e10,
         "target": 175.0, "target_metric": "decode_tok_per_s"},
        {"case": "7b-bs64", "mode": "graph", "model": "llama-2-7b", "batch": 64,
         "decode_tok_per_s": 6400.0, "output_tok_per_s": 5000.0, "useful_bytes_per_step": 1.6e10,
         "target": None, "target_metric": None},
        {"case": "7b-bs256", "mode": "graph", "model": "llama-2-7b", "batch": 256,
         "decode_tok_per_s": 12000.0, "output_tok_per_s": 10500.0, "useful_bytes_per_step": 4e10,
         "target": 10000.0, "target_metric": "output_tok_per_s"},
        {"case": "7b-bs512", "mode": "graph", "error": "OutOfMemoryError: CUDA out of memory"},
    ],  # fmt: skip
    "profiles": [],
}


def write_record(path: Path, record: dict) -> Path:
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def metrics_table(path: Path, rows: list[dict]) -> Path:
    """A METRICS table with neutral values except the columns a row spells out."""
    blank = {
        f.name: "" if pa.types.is_string(f.type) else False if pa.types.is_boolean(f.type)
        else 0 if pa.types.is_integer(f.type) else 0.0
        for f in tables.METRICS
    }
    tables.write(pd.DataFrame([blank | {"mode": "static"} | r for r in rows]), path, tables.METRICS)
    return path


@pytest.fixture
def results(tmp_path) -> Path:
    d = tmp_path / "results"
    d.mkdir()
    write_record(d / "gpu-sidecar.json", SIDECAR)
    write_record(d / "gpu-decode.json", DECODE)
    return d


@pytest.fixture
def metrics(tmp_path) -> Path:
    return metrics_table(
        tmp_path / "metrics.parquet",
        [
            {"platform": "h100-80gb", "model": "m", "batch_size": 1, "window_s": 30.0,
             "energy_counter_j": 100.0, "energy_integrated_j": 97.0},
            {"platform": "cpu", "model": "m", "batch_size": 1, "window_s": 5.0,
             "energy_counter_j": math.nan, "energy_integrated_j": 50.0},
        ],  # fmt: skip
    )


def test_sidecar_overhead_medians_and_difference(results):
    o = plot_records.sidecar_overhead(results / "gpu-sidecar.json")
    # off: 1000, 1010, 990 -> median 1000; on: 1005, 995, 1003 -> median 1003
    assert o.tok_per_s_off_median == pytest.approx(1000.0)
    assert o.tok_per_s_on_median == pytest.approx(1003.0)
    # 100 x (1003 / 1000 - 1) = +0.3 %; spread of off: (1010 - 990) / 1000 = 2 %
    assert o.tok_diff_pct == pytest.approx(0.3)
    assert o.tok_spread_off_pct == pytest.approx(2.0)
    assert o.tok_passed  # |0.3| < 1
    assert o.repetitions["sidecar"].tolist() == ["off", "on", "on", "off", "off", "on"]
    assert (o.record, o.device_name) == ("gpu-sidecar", "Test GPU 80GB")


def test_a_difference_beyond_the_criterion_fails(tmp_path):
    record = copy.deepcopy(SIDECAR)
    record["repetitions"][1]["tok_per_s"] = 1020.0
    record["repetitions"][2]["tok_per_s"] = 1015.0
    o = plot_records.sidecar_overhead(write_record(tmp_path / "x-sidecar.json", record))
    # on: 1020, 1015, 1003 -> median 1015; 100 x (1015 / 1000 - 1) = +1.5 % >= 1 %
    assert o.tok_diff_pct == pytest.approx(1.5)
    assert not o.tok_passed


def test_windows_from_sidecar_record_and_metrics_table(results, metrics):
    rec = plot_records.sidecar_windows(results / "gpu-sidecar.json")
    # only the three 'on' repetitions; (integrated - counter) / counter:
    # (1010 - 1000) / 1000 = +0.01, (1990 - 2000) / 2000 = -0.005, (412 - 400) / 400 = +0.03
    assert rec["window_s"].tolist() == [11.0, 12.0, 9.0]
    assert rec["relative_difference"].tolist() == pytest.approx([0.01, -0.005, 0.03])
    cells = plot_records.cells_windows(metrics)
    # the cpu cell has no counter (NaN): left out; h100: (97 - 100) / 100 = -0.03 over 30 s
    assert cells["source"].tolist() == ["cells h100-80gb"]
    assert cells["relative_difference"].tolist() == pytest.approx([-0.03])
    s = plot_records.counter_vs_integral_summary(pd.concat([rec, cells]), 0.02, 10.0)
    # windows >= 10 s: 11 s (0.01), 12 s (0.005), 30 s (0.03); the 9 s one (0.03) is not judged
    assert s == {
        "n_windows": 4,
        "n_checked": 3,
        "worst_abs_checked": pytest.approx(0.03),
        "n_checked_outside_band": 1,  # only the 30 s cell: 0.03 >= 0.02
    }


def test_a_modeled_sidecar_gives_no_windows(tmp_path):
    record = copy.deepcopy(SIDECAR)
    for rep in record["repetitions"]:
        if rep["sidecar"] == "on":
            rep["energy_counter_j"] = None  # what sidecar_overhead.py writes without a counter
    assert plot_records.sidecar_windows(write_record(tmp_path / "c-sidecar.json", record)).empty


def test_decode_vs_roofline(results):
    d = plot_records.decode_vs_roofline(results / "gpu-decode.json")
    r = d.results.set_index("case")
    assert list(r.index) == ["7b-bs1", "7b-bs64", "7b-bs256"]  # the errored 7b-bs512 left out
    # roofline = batch x copy B/s / useful bytes per step:
    # 1 x 2e12 / 1e10 = 200; 64 x 2e12 / 1.6e10 = 8000; 256 x 2e12 / 4e10 = 12800
    assert r["roofline_tok_per_s"].tolist() == pytest.approx([200.0, 8000.0, 12800.0])
    # decode / roofline: 150 / 200 = 0.75, 6400 / 8000 = 0.8, 12000 / 12800 = 0.9375
    assert r["fraction_of_roofline"].tolist() == pytest.approx([0.75, 0.8, 0.9375])
    # 7b-bs1: decode 150 < 175 missed; 7b-bs256: output 10500 >= 10000 met; 7b-bs64: no target
    assert r.loc["7b-bs1", "target_met"] is False
    assert r.loc["7b-bs256", "target_met"] is True
    assert math.isnan(r.loc["7b-bs64", "target_tok_per_s"])


def test_cli_writes_the_three_pngs_without_pdfs(results, metrics, tmp_path):
    out = tmp_path / "figures"
    argv = ["--results", str(results), "--cells-metrics", str(metrics), "--out", str(out)]
    assert plot_records.main(argv) == 0
    names = ["counter-vs-integral.png", "decode-roofline.png", "sidecar-overhead.png"]
    assert sorted(p.name for p in out.iterdir()) == names  # no PDFs, no temp files left
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_pdf_flag_writes_pdf_too(results, tmp_path):
    fig = plot_records.plot_counter_vs_integral(
        plot_records.sidecar_windows(results / "gpu-sidecar.json"), 0.02, 10.0
    )
    png, pdf = plot_records.write_figure(fig, tmp_path, "counter-vs-integral", pdf=True)
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_targets_sit_on_the_bar_of_their_metric(results):
    fig = plot_records.plot_decode_roofline(
        [plot_records.decode_vs_roofline(results / "gpu-decode.json")]
    )
    ax = fig.axes[0]
    marks = sorted(
        (line.get_ydata()[0], line.get_xdata()[0]) for line in ax.lines if line.get_marker() == "_"
    )
    # seaborn dodges 3 hues across 0.8: bar centres at category + (-0.8/3, 0, +0.8/3).
    # 7b-bs1 (category 0) targets decode (2nd bar): x = 0; 7b-bs256 (category 2) targets
    # output (3rd bar): x = 2 + 0.8/3
    assert marks == [
        (175.0, pytest.approx(0.0, abs=1e-9)),
        (10000.0, pytest.approx(2 + 0.8 / 3, abs=1e-9)),
    ]


def test_decode_figure_is_a_grid_of_one_panel_per_record_with_clean_text(results):
    record = plot_records.decode_vs_roofline(results / "gpu-decode.json")
    three = [record, dataclasses.replace(record, record="second"), dataclasses.replace(record, record="third")]
    fig = plot_records.plot_decode_roofline(three)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    # 3 records, two per row: 2 rows x 2 columns, the fourth cell hidden
    assert len(fig.axes) == 4 and len(panels) == 3
    assert [ax.get_title().split("\n")[0] for ax in panels] == ["gpu-decode", "second", "third"]
    rows = sorted({round(ax.get_position().y0, 6) for ax in panels})
    assert len(rows) == 2
    assert layout_problems(fig) == []


def test_committed_records_draw_without_overlapping_text(repo):
    results = repo / "benchmarks/results"
    decodes = [plot_records.decode_vs_roofline(p) for p in plot_records.find_records(results, "decode_roofline")]
    assert layout_problems(plot_records.plot_decode_roofline(decodes)) == []
    overheads = [plot_records.sidecar_overhead(p) for p in plot_records.find_records(results, "sidecar_overhead")]
    assert layout_problems(plot_records.plot_sidecar_overhead(overheads)) == []
    # the committed study's metrics table predates `mode` and the interval columns: still read
    windows = plot_records.cells_windows(results / "gpu-study/tables/metrics.parquet")
    assert len(windows) == 18  # 2 GPUs x 3 models x 3 batch sizes, each with a counter


def test_missing_record_names_the_file(tmp_path):
    path = tmp_path / "h200-sidecar.json"
    with pytest.raises(InputError, match=r"h200-sidecar\.json: no such record"):
        plot_records.sidecar_overhead(path)


def test_unreadable_json_names_the_file(tmp_path):
    path = tmp_path / "h100-decode.json"
    path.write_text('{"benchmark": "decode_roofline", ', encoding="utf-8")
    with pytest.raises(InputError, match=r"h100-decode\.json: not a readable JSON record"):
        plot_records.decode_vs_roofline(path)


def test_a_record_of_the_other_benchmark_is_refused(results):
    with pytest.raises(InputError, match=r"gpu-decode\.json: field 'benchmark' is "
                       r"'decode_roofline'; expected 'sidecar_overhead'"):  # fmt: skip
        plot_records.sidecar_overhead(results / "gpu-decode.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["repetitions"][3].pop("tok_per_s"),
         r"'repetitions\[3\]\.tok_per_s' is missing"),
        (lambda r: r["repetitions"][0].update(tok_per_s="fast"),
         r"'repetitions\[0\]\.tok_per_s' is 'fast'; expected a positive finite number"),
        (lambda r: r["repetitions"][1].update(window_s=-1.0),
         r"'repetitions\[1\]\.window_s' is -1\.0; expected a positive"),
        (lambda r: r["repetitions"][2].update(sidecar="maybe"),
         r"'repetitions\[2\]\.sidecar' is 'maybe'; expected 'off' or 'on'"),
        (lambda r: r["summary"]["criteria"].pop("tok_diff_pct_below"),
         r"'summary\.criteria\.tok_diff_pct_below' is missing"),
        (lambda r: r.update(repetitions=[x for x in r["repetitions"] if x["sidecar"] == "off"]),
         r"'repetitions' holds 3 'off' and 0 'on' repetitions"),
    ],  # fmt: skip
)
def test_invalid_sidecar_record_names_file_and_field(tmp_path, change, message):
    record = copy.deepcopy(SIDECAR)
    change(record)
    path = write_record(tmp_path / "bad-sidecar.json", record)
    with pytest.raises(InputError, match=r"bad-sidecar\.json: field " + message):
        plot_records.sidecar_overhead(path)


def test_invalid_energy_field_names_file_and_field(tmp_path):
    record = copy.deepcopy(SIDECAR)
    del record["repetitions"][5]["energy_integrated_j"]
    path = write_record(tmp_path / "bad-sidecar.json", record)
    with pytest.raises(InputError, match=r"field 'repetitions\[5\]\.energy_integrated_j' is miss"):
        plot_records.sidecar_windows(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["bandwidth"].update(copy={}), r"'bandwidth\.copy\.bytes_per_s' is missing"),
        (lambda r: r["results"][2].update(target_metric="ttft_s"),
         r"'results\[2\]\.target_metric' is 'ttft_s'; expected 'decode_tok_per_s' or"),
        (lambda r: r["results"][1].update(useful_bytes_per_step=0),
         r"'results\[1\]\.useful_bytes_per_step' is 0; expected a positive"),
        (lambda r: r.update(results=r["results"][3:]), r"'results' holds no case that ran"),
    ],  # fmt: skip
)
def test_invalid_decode_record_names_file_and_field(tmp_path, change, message):
    record = copy.deepcopy(DECODE)
    change(record)
    path = write_record(tmp_path / "bad-decode.json", record)
    with pytest.raises(InputError, match=r"bad-decode\.json: field " + message):
        plot_records.decode_vs_roofline(path)


def test_metrics_table_without_the_energy_columns_names_the_file(tmp_path):
    path = tmp_path / "old-metrics.parquet"
    pd.DataFrame({"platform": ["h100-80gb"], "window_s": [30.0]}).to_parquet(path)
    with pytest.raises(SchemaError, match=r"old-metrics\.parquet: missing column"):
        plot_records.cells_windows(path)


def test_find_records_leaves_smoke_runs_out_and_needs_one(tmp_path):
    smoke = copy.deepcopy(SIDECAR) | {"smoke": True}
    write_record(tmp_path / "cpu-sidecar.json", smoke)
    with pytest.raises(InputError, match=r"no non-smoke \*-sidecar\*\.json record"):
        plot_records.find_records(tmp_path, "sidecar_overhead")
    write_record(tmp_path / "h100-sidecar.json", SIDECAR)
    assert [p.name for p in plot_records.find_records(tmp_path, "sidecar_overhead")] == [
        "h100-sidecar.json"
    ]


def test_sidecar_records_with_different_energy_criteria_are_refused(tmp_path):
    other = copy.deepcopy(SIDECAR)
    other["summary"]["criteria"]["energy_relative_difference_below"] = 0.05
    overheads = [
        plot_records.sidecar_overhead(write_record(tmp_path / "a-sidecar.json", SIDECAR)),
        plot_records.sidecar_overhead(write_record(tmp_path / "b-sidecar.json", other)),
    ]
    with pytest.raises(InputError, match=r"different energy criteria"):
        plot_records.energy_criteria(overheads)
    # one record alone: its own band and shortest window
    assert plot_records.energy_criteria(overheads[:1]) == (0.02, 10.0)
