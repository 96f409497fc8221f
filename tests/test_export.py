"""results/export: one JSON per cell (schema tokencarbon.cell v1, docs/export.md) and metrics.csv."""

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tokencarbon import tables
from tokencarbon.errors import InputError
from tokencarbon.export import EXPORT_SCHEMA_VERSION, cell_file, export


def blank_row(schema: pa.Schema) -> dict:
    """A row of `schema` with NaN floats, 0 ints, False booleans, "" strings: every column."""
    row = {}
    for f in schema:
        if pa.types.is_boolean(f.type):
            row[f.name] = False
        elif pa.types.is_floating(f.type):
            row[f.name] = math.nan
        elif pa.types.is_integer(f.type):
            row[f.name] = 0
        else:
            row[f.name] = ""
    return row


def tables_for(**metric_values):
    keys = {"platform": "h100-sxm-80gb", "model": "llama-2-7b", "mode": "static", "batch_size": 8}
    m = blank_row(tables.METRICS) | keys | metric_values
    c = blank_row(tables.CELLS) | keys | {
        "device_name": "NVIDIA H100 80GB HBM3", "backend": "torch", "architecture": "llama-2-7b",
        "dtype": "float16", "power_source": "nvml", "git_commit": "abc",
    }  # fmt: skip
    return (
        tables.check(pd.DataFrame([m]), tables.METRICS, "m"),
        tables.check(pd.DataFrame([c]), tables.CELLS, "c"),
    )


def test_cell_json_fields_worked_by_hand(tmp_path):
    # 7.2e6 J = 2 kWh for 4000 output tokens: 1800 J/token, 2000 tokens/kWh (optimum-benchmark's
    # efficiency); 16 requests in one repeat: 450,000 J/request (ML.ENERGY's energy per request).
    metrics, cells = tables_for(
        energy_j=7.2e6, output_tokens=4000, input_tokens=1000, n_requests=16, j_per_token=1800.0,
        energy_method="counter", energy_counter_j=7.2e6, energy_integrated_j=7.1e6,
        qa_flags="counter_vs_integral_gt_5pct;power_gap", tokens_per_s=250.0, window_s=16.0,
        intensity_g_per_kwh=413.0, pue=1.0, operational_g=826.0, g_per_token=0.2065,
        ttft_s=0.05, mfu=0.31,
    )  # fmt: skip
    written = export(metrics, cells, tmp_path, device_kinds={"h100-sxm-80gb": "gpu"})
    assert written == [tmp_path / "cells" / "h100-sxm-80gb" / "llama-2-7b" / "bs8.json"]
    r = json.loads(written[0].read_text())
    assert (r["schema"], r["schema_version"]) == ("tokencarbon.cell", EXPORT_SCHEMA_VERSION)
    assert r["cell"]["gpu_model"] == "NVIDIA H100 80GB HBM3" and r["cell"]["max_num_seqs"] is None
    assert (r["cell"]["num_gpus"], r["cell"]["device_kind"]) == (1, "gpu")
    assert r["energy"]["total_energy_joules"] == 7.2e6
    assert r["energy"]["energy_per_token_joules"] == 1800.0
    assert r["energy"]["energy_per_request_joules"] == pytest.approx(450_000.0)
    assert r["energy"]["qa_flags"] == ["counter_vs_integral_gt_5pct", "power_gap"]
    assert r["energy_kwh"] == {"unit": "kWh", "cpu": None, "gpu": 2.0, "ram": None, "total": 2.0}
    assert r["efficiency"] == {"unit": "tokens/kWh", "value": pytest.approx(2000.0)}
    assert r["throughput"]["output_throughput_tokens_per_sec"] == 250.0
    assert r["workload"] == {"num_requests": 16, "num_repeats": 1, "total_input_tokens": 1000,
                             "total_output_tokens": 4000}  # fmt: skip
    assert r["carbon"]["carbon_per_token_g"] == 0.2065 and r["latency"]["ttft"]["mean"] == 0.05
    # NaN columns are null (strict JSON), and every METRICS column is kept verbatim.
    assert r["latency"]["tpot"]["mean"] is None
    assert set(r["metrics"]) == set(tables.METRICS.names)
    csv = pd.read_csv(tmp_path / "metrics.csv")
    assert list(csv.columns) == tables.METRICS.names and csv["energy_j"].iloc[0] == 7.2e6


def test_continuous_cell_and_imported_provenance(tmp_path):
    metrics, cells = tables_for(energy_j=100.0, output_tokens=10, n_requests=2)
    for df in (metrics, cells):
        df["mode"] = "continuous"
    meta = {"imported": {"power_field": "power.draw", "power_kind": "average"}}
    key = ("h100-sxm-80gb", "llama-2-7b", "continuous", 8)
    (path,) = export(metrics, cells, tmp_path, metas={key: meta})
    assert path.name == "cb8.json" and cell_file(*key) == "h100-sxm-80gb/llama-2-7b/cb8.json"
    r = json.loads(path.read_text())
    assert r["cell"]["max_num_seqs"] == 8
    assert r["provenance"]["imported"]["power_kind"] == "average"
    # No device kind given: the optimum-benchmark block keeps only the total (100 J / 3.6e6).
    assert r["energy_kwh"]["gpu"] is None and r["energy_kwh"]["total"] == pytest.approx(100 / 3.6e6)


def test_cpu_cell_is_no_gpu(tmp_path):
    metrics, cells = tables_for(energy_j=3600.0, output_tokens=10, n_requests=1)
    cells["device_name"] = "Intel(R) Xeon(R) Processor"
    (path,) = export(metrics, cells, tmp_path, device_kinds={"h100-sxm-80gb": "cpu"})
    r = json.loads(path.read_text())
    assert (r["cell"]["num_gpus"], r["cell"]["gpu_model"]) == (0, None)
    assert r["cell"]["device_name"] == "Intel(R) Xeon(R) Processor"
    # 3600 J = 0.001 kWh, counted as CPU energy.
    assert r["energy_kwh"]["cpu"] == pytest.approx(0.001) and r["energy_kwh"]["gpu"] is None


def test_metrics_without_cells_refused(tmp_path):
    metrics, cells = tables_for(energy_j=1.0, output_tokens=1)
    cells["batch_size"] = np.int64(4)
    with pytest.raises(InputError, match="has no row in the cells table.*different runs"):
        export(metrics, cells, tmp_path)
