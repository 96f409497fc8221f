"""Weight-quantized models in the study's outputs (issue 16, item 3): Table 3's rows with their
weights and the 32 GB cap beside the 40 GB one, figure 4c, and summary.md's quantized-vs-unquantized
block. Tables are built by hand; every expected value is worked out beside its assertion."""

import json
from pathlib import Path

import pandas as pd
import pytest
from snakemake.utils import validate

from tokencarbon import tables
from tokencarbon.figures import max_batch_table, summary_markdown, write_max_batch_csv
from tokencarbon.figures.inputs import read_metrics
from tokencarbon.figures.layout import layout_problems
from tokencarbon.figures.measured import REFERENCE_ALPHA
from tokencarbon.figures.quantized import (
    config_quantization,
    quantized_comparison,
    weights_label,
    with_quantization,
)
from tokencarbon.figures.registry import BY_NAME, Study, targets
from tokencarbon.plan import Plan
from tokencarbon.figures.summary import max_batch_markdown, quantization_blocks
from test_figures import _blank  # a row of neutral values per column (tests/ is on sys.path)

INT4 = {"quantization": "int4_weight_only", "quant_group_size": 128, "quant_library": "torchao 0.18.0"}
NONE = {"quantization": "none", "quant_group_size": None, "quant_library": ""}


def metrics(rows: list[dict]) -> pd.DataFrame:
    """A metrics table (tables.METRICS, checked) with the quantization columns the core adds;
    each row gives its own quantization (NONE or INT4)."""
    base = _blank(tables.METRICS) | {"mode": "static", "energy_method": "counter"}
    names = list(tables.METRICS.names) + [c for c in NONE if c not in tables.METRICS.names]
    df = pd.DataFrame([base | r for r in rows], columns=names)
    df["quant_group_size"] = df["quant_group_size"].astype("Int64")
    checked = tables.check(df, tables.METRICS, "test metrics")  # the schema's columns only
    extra = [c for c in df.columns if c not in checked.columns]
    return pd.concat([checked, df[extra]], axis=1)


def cell(model, batch, g, j, tok_s, s_tok, quant, *, arch="llama-2-7b", platform="a100-sxm4-40gb", mode="static"):  # fmt: skip
    dtype = "bfloat16" if quant is INT4 else "float16"
    return {"platform": platform, "model": model, "architecture": arch, "dtype": dtype,
            "mode": mode, "batch_size": batch, "g_per_token": g, "j_per_token": j,
            "tokens_per_s": tok_s, "s_per_token_user": s_tok, "e2e_s_per_token": s_tok} | quant  # fmt: skip


# Llama-2-7B unquantized (float16) and int4 g128 on one platform; the int4 model reaches batch 16.
CELLS = [
    cell("llama-2-7b", 1, 2.0e-3, 4.0, 30.0, 0.033, NONE),
    cell("llama-2-7b", 8, 4.0e-4, 0.8, 150.0, 0.053, NONE),
    cell("llama-2-7b-wq4", 1, 1.0e-3, 2.0, 60.0, 0.017, INT4),
    cell("llama-2-7b-wq4", 8, 3.0e-4, 0.6, 200.0, 0.040, INT4),
    cell("llama-2-7b-wq4", 16, 1.0e-4, 0.32, 400.0, 0.040, INT4),
    # continuous cells are not in the comparison (static batches only)
    cell("llama-2-7b-wq4", 4, 9.0, 9.0, 1.0, 1.0, INT4, mode="continuous"),
    # a quantized 13B with no unquantized 13B beside it, and a GPT-2 with no quantized sibling
    cell("llama-2-13b-wq4", 1, 3.0e-3, 6.0, 20.0, 0.05, INT4, arch="llama-2-13b"),
    cell("llama-2-13b-wq4", 4, 1.0e-3, 2.0, 60.0, 0.066, INT4, arch="llama-2-13b"),
    cell("gpt2", 1, 1.0e-4, 0.2, 300.0, 0.003, NONE, arch="gpt2"),
    cell("gpt2", 8, 4.0e-5, 0.08, 900.0, 0.009, NONE, arch="gpt2"),
]


def test_weights_labels_name_scheme_group_and_library():
    assert weights_label("int4_weight_only", 128, "torchao 0.18.0") == "int4 g128, torchao 0.18.0"
    assert weights_label("int8_weight_only", pd.NA, "torchao 0.18.0") == "int8, torchao 0.18.0"
    assert weights_label("int4_weight_only", None, "") == "int4"
    assert weights_label("none", pd.NA, "", "bfloat16") == "bfloat16"
    assert weights_label("none") == "unquantized"
    assert config_quantization({}) == ("none", None)
    assert config_quantization({"quantization": "int8_weight_only"}) == ("int8_weight_only", None)
    assert config_quantization(
        {"quantization": {"scheme": "int4_weight_only", "group_size": 128}}
    ) == ("int4_weight_only", 128)


def test_a_table_without_quantization_columns_reads_as_unquantized(repo):
    m = read_metrics(repo / "tests/data/metrics-gpu-study-4db09b7.parquet")  # tests/data/README.md
    assert "quantization" not in m.columns  # committed before quantization existed
    filled = with_quantization(m)
    assert set(filled["quantization"]) == {"none"} and filled["quant_group_size"].isna().all()
    assert quantized_comparison(m).empty and quantization_blocks(m) == []
    assert "Weight-quantized" not in summary_markdown(m, [])


# --- summary.md: quantized against unquantized --------------------------------------------------


def test_comparison_pairs_by_architecture_and_platform_at_batch_1_and_the_largest_batch():
    pairs = quantized_comparison(metrics(CELLS))
    # only the 7B pair: the 13B int4 has no unquantized 13B, GPT-2 no quantized sibling
    assert list(pairs["model_q"]) == ["llama-2-7b-wq4"] * 2
    assert list(pairs["point"]) == ["smallest", "largest"]
    assert list(pairs["batch_u"]) == [1, 8] and list(pairs["batch_q"]) == [1, 16]
    # batch 1: 1.0e-3 / 2.0e-3 = 0.5 (carbon), 2.0 / 4.0 = 0.5 (J/token)
    # largest: int4 at 16 against float16 at 8: 1.0e-4 / 4.0e-4 = 0.25, 0.32 / 0.8 = 0.4
    assert list(pairs["g_per_token_ratio"]) == pytest.approx([0.5, 0.25])
    assert list(pairs["j_per_token_ratio"]) == pytest.approx([0.5, 0.4])
    assert list(pairs["weights_q"]) == ["int4 g128, torchao 0.18.0"] * 2


def test_summary_block_gives_both_points_with_ratios_and_names_the_unpaired_model():
    md = summary_markdown(metrics(CELLS), [])
    assert "### Weight-quantized against unquantized models" in md
    # 2.0e-3 g = 2 mg -> 1.0e-3 g = 1 mg; J/token 4 -> 2
    assert (
        "| llama-2-7b-wq4 (int4 g128, torchao 0.18.0) | llama-2-7b | a100-sxm4-40gb | batch 1 "
        "| 2 | 1 | 0.50x | 4 | 2 | 0.50x | counter |" in md
    )
    # 4.0e-4 g = 0.4 mg at batch 8 -> 1.0e-4 g = 0.1 mg at batch 16; J/token 0.8 -> 0.32
    assert (
        "| llama-2-7b-wq4 (int4 g128, torchao 0.18.0) | llama-2-7b | a100-sxm4-40gb | largest "
        "batch (8 → 16) | 0.4 | 0.1 | 0.25x | 0.8 | 0.32 | 0.40x | counter |" in md
    )
    assert "beside llama-2-13b-wq4 on a100-sxm4-40gb" in md
    assert md.count("| llama-2-7b-wq4 (") == 2 and "| gpt2 (" not in md


def test_summary_has_no_quantization_block_without_a_quantized_model():
    md = summary_markdown(metrics([c for c in CELLS if c["quantization"] == "none"]), [])
    assert "Weight-quantized" not in md and "| gpt2 | a100-sxm4-40gb | 1 → 8 |" in md


# --- Table 3 ------------------------------------------------------------------------------------

# A 32 GB cap (the study's V100 32GB) beside a 40 GB cap (its A100 40GB), as two platforms of one
# card. llama-2-13b-wq4's probe predates the quantization keys: the config names its weights.
PROBES = [
    {"platform": "h200-40gb", "model": "llama-2-13b", "max_ok": 8, "min_failed": 9, "memory_limit_gb": 40.0} | NONE,
    {"platform": "h200-32gb", "model": "llama-2-13b", "max_ok": 4, "min_failed": 5, "memory_limit_gb": 32.0} | NONE,
    {"platform": "h200-32gb", "model": "llama-2-7b-wq4", "max_ok": 22, "min_failed": 23, "memory_limit_gb": 32.0} | INT4,
    {"platform": "h200-40gb", "model": "llama-2-7b-wq4", "max_ok": 30, "min_failed": 31, "memory_limit_gb": 40.0} | INT4,
    {"platform": "h200-32gb", "model": "llama-2-7b", "max_ok": 14, "min_failed": 15, "memory_limit_gb": 32.0} | NONE,
    {"platform": "h200-40gb", "model": "llama-2-7b", "max_ok": 22, "min_failed": 23, "memory_limit_gb": 40.0} | NONE,
    {"platform": "h200-32gb", "model": "llama-2-13b-wq4", "max_ok": 12, "min_failed": 13, "memory_limit_gb": 32.0},
    {"platform": "h200-40gb", "model": "llama-2-13b-wq4", "max_ok": 16, "min_failed": None, "memory_limit_gb": 40.0},
]  # fmt: skip


def study_config(repo: Path, models: dict) -> dict:
    """A validated config (defaults filled) of these models; `quantization` keys are set after
    validation, so this test does not depend on the schema's version of them."""
    plain = {m: {k: v for k, v in e.items() if k != "quantization"} for m, e in models.items()}
    config = {
        "platforms": {"cpu": {}},
        "families": {"llama-2": {"tokenizer": "builtin", "max_tokens": 64}},
        "models": plain,
    }
    validate(config, str(repo / "workflow/schemas/config.schema.yaml"))
    for m, e in models.items():
        if "quantization" in e:
            config["models"][m]["quantization"] = e["quantization"]
    return config


WQ4 = {"scheme": "int4_weight_only", "group_size": 128}
MODELS = {
    "llama-2-7b": {"architecture": "llama-2-7b", "family": "llama-2", "dtype": "float16"},
    "llama-2-13b": {"architecture": "llama-2-13b", "family": "llama-2", "dtype": "float16"},
    "llama-2-7b-wq4": {"architecture": "llama-2-7b", "family": "llama-2", "dtype": "bfloat16", "quantization": WQ4},
    "llama-2-13b-wq4": {"architecture": "llama-2-13b", "family": "llama-2", "dtype": "bfloat16", "quantization": WQ4},
}  # fmt: skip


def test_table3_orders_each_model_before_its_quantized_sibling_with_its_weights(repo, tmp_path):
    info = Study(Plan(study_config(repo, MODELS))).model_info()
    assert info["llama-2-13b-wq4"] == {"architecture": "llama-2-13b", "dtype": "bfloat16",
                                       "quantization": "int4_weight_only", "quant_group_size": 128}  # fmt: skip
    table = max_batch_table(PROBES, model_info=info)
    assert list(table.index) == ["llama-2-7b", "llama-2-7b-wq4", "llama-2-13b", "llama-2-13b-wq4"]
    assert list(table.columns) == ["weights", "h200-32gb", "h200-40gb"]
    path = tmp_path / "table3_max_batch.csv"
    write_max_batch_csv(PROBES, path, model_info=info)
    assert path.read_text() == (
        "model,weights,h200-32gb,h200-40gb\n"
        "llama-2-7b,float16,14,22\n"
        'llama-2-7b-wq4,"int4 g128, torchao 0.18.0",22,30\n'
        "llama-2-13b,float16,4,8\n"
        "llama-2-13b-wq4,int4 g128,12,16\n"
    )
    md = max_batch_markdown(PROBES, title="Table 3", model_info=info)
    assert "| model | weights | h200-32gb (capped at 32 GB) | h200-40gb (capped at 40 GB) |" in md
    rows = [line for line in md.splitlines() if line.startswith("| llama")]
    assert rows == [
        "| llama-2-7b | float16 | 14 | 22 |",
        "| llama-2-7b-wq4 | int4 g128, torchao 0.18.0 | 22 | 30 |",
        "| llama-2-13b | float16 | 4 | 8 |",
        # no library: the probe result predates the quantization keys; 16+: no OOM seen
        "| llama-2-13b-wq4 | int4 g128 | 12 | 16+ |",
    ]
    assert "32 GB stands for the study's V100 32GB; 40 GB stands for the study's A100 40GB" in md
    assert "WQ4bit) 22 and 12" in md  # the study's V100 values beside ours


def test_table3_without_quantized_models_keeps_its_columns(repo):
    info = Study(Plan(study_config(repo, {m: MODELS[m] for m in ("llama-2-7b", "llama-2-13b")}))).model_info()
    plain = [p for p in PROBES if p["model"] in ("llama-2-7b", "llama-2-13b")]
    table = max_batch_table(plain, model_info=info)
    assert list(table.columns) == ["h200-32gb", "h200-40gb"]  # no weights column
    assert list(table.index) == ["llama-2-7b", "llama-2-13b"]  # 7 before 13
    md = max_batch_markdown(plain, model_info=info)
    assert "| llama-2-13b | 4 | 8 |" in md and "WQ4bit" not in md


# --- figure 4c ----------------------------------------------------------------------------------


def test_fig4c_is_wanted_iff_a_quantized_model_is_configured(repo):
    with_wq4 = Study(Plan(study_config(repo, MODELS)))
    assert with_wq4.quantized_models() == ["llama-2-13b-wq4", "llama-2-7b-wq4"]
    assert with_wq4.unquantized_siblings() == ["llama-2-13b", "llama-2-7b"]
    assert "results/figures/fig4c_throughput_latency.png" in targets(with_wq4)
    plain = Study(Plan(study_config(repo, {m: MODELS[m] for m in ("llama-2-7b", "llama-2-13b")})))
    got = targets(plain)
    assert "results/figures/fig4a_throughput_latency.png" in got
    assert not any("fig4c" in t for t in got)


def test_fig4c_draws_quantized_models_with_their_sibling_faded_and_no_layout_problem(repo, tmp_path):
    path = tmp_path / "metrics.parquet"
    metrics(CELLS).to_parquet(path)
    study = Study(Plan(study_config(repo, {m: MODELS[m] for m in ("llama-2-7b", "llama-2-7b-wq4")})))
    artifact = BY_NAME["fig4c_throughput_latency"]
    params = artifact.params(study)
    assert params["models"] == ["llama-2-7b-wq4"] and params["references"] == ["llama-2-7b"]
    fig = artifact.draw({"metrics": str(path)}, params)
    assert layout_problems(fig) == []
    ax = fig.axes[0]
    lines = [line for line in ax.lines if len(line.get_xdata())]
    # int4: static (1, 8, 16) and continuous (cb4); float16 reference: static (1, 8)
    by_points = sorted((len(line.get_xdata()), line.get_alpha() or 1.0) for line in lines)
    assert by_points == [(1, 1.0), (2, REFERENCE_ALPHA), (3, 1.0)]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    # the library is the metrics' (what ran); the reference's weights its dtype
    assert "llama-2-7b-wq4 (int4 g128, torchao 0.18.0)" in legend
    assert "llama-2-7b (float16, unquantized reference)" in legend
    assert "llama-2-13b-wq4" not in " ".join(legend)  # not in this study's models
    assert "faded: unquantized reference" in " ".join(ax.get_title(loc="left").split())
    # ms/token of the int4 batch-1 point: 0.017 s = 17 ms at 60 tokens/s
    q = next(line for line in lines if len(line.get_xdata()) == 3)
    assert (q.get_xdata()[0], q.get_ydata()[0]) == pytest.approx((17.0, 60.0))


def test_fig4c_without_rows_of_its_quantized_models_is_an_error(repo, tmp_path):
    from tokencarbon.errors import InputError

    path = tmp_path / "metrics.parquet"
    metrics([c for c in CELLS if c["quantization"] == "none"]).to_parquet(path)
    study = Study(Plan(study_config(repo, {m: MODELS[m] for m in ("llama-2-7b", "llama-2-7b-wq4")})))
    artifact = BY_NAME["fig4c_throughput_latency"]
    with pytest.raises(InputError, match="fig4_throughput_latency.*llama-2-7b-wq4"):
        artifact.draw({"metrics": str(path)}, artifact.params(study))


def test_table3_and_summary_artifacts_build_from_the_registry(repo, tmp_path):
    # The rules' own path: params from the Study, probes and metrics from files.
    study = Study(Plan(study_config(repo, MODELS)))
    probes = []
    for i, p in enumerate(PROBES):
        f = tmp_path / f"probe{i}.json"
        f.write_text(json.dumps(p))
        probes.append(str(f))
    table3 = BY_NAME["table3_max_batch"]
    outputs = {k: str(tmp_path / Path(v).name) for k, v in table3.outputs.items()}
    table3.build({"probes": probes}, table3.params(study), outputs)
    assert "| llama-2-7b-wq4 | int4 g128, torchao 0.18.0 | 22 | 30 |" in Path(outputs["md"]).read_text()
    metrics_path = tmp_path / "metrics.parquet"
    metrics(CELLS).to_parquet(metrics_path)
    summary = BY_NAME["summary"]
    outputs = {k: str(tmp_path / Path(v).name) for k, v in summary.outputs.items()}
    inputs = {"metrics": str(metrics_path), "probes": probes}
    summary.build(inputs, summary.params(study), outputs)
    md = Path(outputs["md"]).read_text()
    assert "| llama-2-7b-wq4 (int4 g128, torchao 0.18.0) | llama-2-7b | a100-sxm4-40gb | batch 1 " in md
    assert "| llama-2-7b | float16 | 14 | 22 |" in md  # the probes' table, in the study's order
    assert "<h3>Weight-quantized against unquantized models</h3>" in Path(outputs["html"]).read_text()


def test_two_capped_variants_of_one_card_are_two_columns_and_two_fig2a_levels(repo):
    # The study's V100 32GB and A100 40GB emulated on one H200 by two capped platforms naming the
    # same row of resources/platforms.csv (config key platforms.<name>.hardware).
    config = study_config(repo, {m: MODELS[m] for m in ("llama-2-7b", "llama-2-7b-wq4")})
    config["platforms"] = {
        "h200-32gb": {"hardware": "h200-141gb", "memory_limit_gb": 32.0},
        "h200-40gb": {"hardware": "h200-141gb", "memory_limit_gb": 40.0},
    }
    validate(config, str(repo / "workflow/schemas/config.schema.yaml"))  # the platforms' defaults
    study = Study(Plan(config))
    assert study.platform_hardware() == {"h200-32gb": "h200-141gb", "h200-40gb": "h200-141gb"}
    fig2a = BY_NAME["fig2a_memory_vs_seqlen"]
    fig = fig2a.draw(fig2a.inputs(study), fig2a.params(study))
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert any("h200-32gb capped at 32 GB" in t for t in labels)
    assert any("h200-40gb capped at 40 GB" in t for t in labels)
    assert layout_problems(fig) == []
    probes = [p for p in PROBES if p["model"] in ("llama-2-7b", "llama-2-7b-wq4")]
    md = max_batch_markdown(probes, model_info=study.model_info())
    assert "| model | weights | h200-32gb (capped at 32 GB) | h200-40gb (capped at 40 GB) |" in md
    # float16 14 at 32 GB and 22 at 40 GB; int4 22 and 30 (PROBES)
    assert "| llama-2-7b | float16 | 14 | 22 |" in md
    assert "| llama-2-7b-wq4 | int4 g128, torchao 0.18.0 | 22 | 30 |" in md
    # without `hardware`, fig2a's params are as before (no rerun of figure 2a)
    assert "platform_hardware" not in fig2a.params(Study(Plan(study_config(repo, MODELS))))
