"""Weight-quantized models in the study's outputs (issue 16; Lim, Pan, Zhou 2024 measured
Llama-2-7B and -13B with TensorRT-LLM's 4-bit weight-only quantization, "WQ4bit"): how a model's
weights are named in tables and legends, which configured models are quantized and which
unquantized model of the same architecture is each one's sibling, and the quantized-vs-unquantized
comparison of carbon and energy per output token that results/summary.md shows.

A quantized model is its own config model (`models.<name>.quantization`: "none" (default),
"int8_weight_only", "int4_weight_only" or {scheme, group_size}), e.g.

    llama-2-7b:     {architecture: llama-2-7b, family: llama-2, dtype: bfloat16}
    llama-2-7b-wq4: {architecture: llama-2-7b, family: llama-2, dtype: bfloat16,
                     quantization: {scheme: int4_weight_only, group_size: 128}}

and its sibling is every unquantized model of the same architecture (same `architecture` name).
The metrics table and the probes' results record what ran in columns `quantization` (scheme,
"none" for unquantized), `quant_group_size` (weights per scale and zero point; NA for none and
int8) and `quant_library` (e.g. "torchao 0.18.0"; "" for none). Tables written before those
columns existed (the committed GPU studies) are read as all "none" (with_quantization).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pandas as pd

from tokencarbon.figures.inputs import STATIC
from tokencarbon.quantization import NONE_SCHEME as NONE  # "none": the one place it is named
QUANT_COLUMNS = ("quantization", "quant_group_size", "quant_library")
# How a scheme is named in tables and legends (the weights' integer width; weight-only: activations
# and arithmetic stay in the model's dtype).
SCHEME_SHORT = {"int4_weight_only": "int4", "int8_weight_only": "int8"}
# Row order within one architecture: unquantized first, then narrower weights after wider ones.
SCHEME_ORDER = {NONE: 0, "int8_weight_only": 1, "int4_weight_only": 2}
WEIGHTS_NOTE = (
    "Weights: the unquantized model's dtype, or a weight-only quantization: int8 (8-bit integer "
    "weights, a scale per output channel) or int4 gN (4-bit integer weights with a scale and a "
    "zero point per group of N weights), and the library that quantized them; activations and "
    "arithmetic stay in the model's dtype."
)


def config_quantization(entry: Mapping[str, Any]) -> tuple[str, int | None]:
    """(scheme, group size or None) of a config model entry's `quantization` key, as
    tokencarbon.quantization parses it: absent or "none" -> ("none", None); "int4_weight_only" ->
    its default group size (128); {scheme, group_size} -> both. Raises ConfigError as it does."""
    from tokencarbon.quantization import of_model

    q = of_model(entry)
    return q.scheme, q.group_size


def is_quantized_scheme(scheme: Any) -> bool:
    return isinstance(scheme, str) and scheme not in (NONE, "")


def weights_label(
    scheme: str, group_size: Any = None, library: Any = "", dtype: Any = None
) -> str:
    """How a model's weights are named: "int4 g128, torchao 0.18.0" (int4 weight-only, a scale and
    zero point per 128 weights, quantized by torchao 0.18.0), "int8, torchao 0.18.0", or for an
    unquantized model its dtype ("bfloat16"; "unquantized" where the dtype is unknown)."""
    if not is_quantized_scheme(scheme):
        return str(dtype) if isinstance(dtype, str) and dtype else "unquantized"
    text = SCHEME_SHORT.get(scheme, scheme)
    if group_size is not None and not pd.isna(group_size):
        text += f" g{int(group_size)}"
    if isinstance(library, str) and library:
        text += f", {library}"
    return text


def natural_key(name: str) -> tuple:
    """Sort key that orders the digits in a name by value: llama-2-7b before llama-2-13b."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(name)))


def with_quantization(df: pd.DataFrame) -> pd.DataFrame:
    """df with QUANT_COLUMNS, each absent one filled as an unquantized table's: quantization
    "none", quant_group_size NA (nullable Int64), quant_library "". Tables written before
    quantization existed (the committed GPU studies) hold unquantized models only."""
    out = df
    if "quantization" not in out.columns:
        out = out.assign(quantization=NONE)
    if "quant_group_size" not in out.columns:
        out = out.assign(quant_group_size=pd.array([pd.NA] * len(out), dtype="Int64"))
    if "quant_library" not in out.columns:
        out = out.assign(quant_library="")
    return out


def is_quantized(df: pd.DataFrame) -> pd.Series:
    """Per row: whether its model ran with quantized weights (quantization != "none")."""
    return with_quantization(df)["quantization"].map(is_quantized_scheme).astype(bool)


def metrics_weights_labels(metrics: pd.DataFrame) -> dict[str, str]:
    """model -> weights_label, from the metrics table's own columns (quantization, group size,
    library, dtype: what ran), one per model (its first row)."""
    df = with_quantization(metrics)
    out = {}
    for model, rows in df.groupby("model", sort=True):
        r = rows.iloc[0]
        out[model] = weights_label(
            r["quantization"], r["quant_group_size"], r["quant_library"], r.get("dtype")
        )
    return out


# ------------------------------------------------------------------ quantized vs unquantized

COMPARED = ("g_per_token", "j_per_token")


def _static(metrics: pd.DataFrame) -> pd.DataFrame:
    df = with_quantization(metrics)
    return df[df["mode"] == STATIC] if "mode" in df.columns else df


def quantized_comparison(metrics: pd.DataFrame) -> pd.DataFrame:
    """Each quantized model beside each unquantized sibling (same `architecture`) on the same
    platform, static cells only, at two points:

    - "smallest": the smallest static batch both measured (batch 1 in the study's sweep);
    - "largest": each model's own largest static batch (quantized weights free memory for a
      larger batch: Table 3), so the two batch sizes may differ.

    One row per (quantized model, sibling, platform, point) with columns model_q, model_u,
    architecture, platform, point, batch_q, batch_u, and for each of g_per_token (operational
    gCO2eq per output token) and j_per_token (J per output token): <value>_q, <value>_u and
    <value>_ratio = quantized / unquantized (< 1: the quantized model costs less per token);
    weights_q (weights_label) and energy_method (the methods of both cells, "; "-joined).
    Empty (those columns) where no quantized model has a sibling measured on its platform."""
    columns = ["model_q", "model_u", "architecture", "platform", "point", "batch_q", "batch_u"]
    columns += [f"{v}_{s}" for v in COMPARED for s in ("q", "u", "ratio")]
    columns += ["weights_q", "energy_method"]
    df = _static(metrics)
    quantized = is_quantized(df)
    labels = metrics_weights_labels(df)
    rows = []
    keys = ["architecture", "platform"]
    for (arch, platform), cells in df.groupby(keys, sort=False):
        q_mask = quantized.loc[cells.index]
        for model_q in sorted(cells.loc[q_mask, "model"].unique(), key=natural_key):
            q = cells[cells["model"] == model_q]
            for model_u in sorted(cells.loc[~q_mask, "model"].unique(), key=natural_key):
                u = cells[cells["model"] == model_u]
                common = sorted(set(q["batch_size"]) & set(u["batch_size"]))
                points = []
                if common:
                    points.append(("smallest", common[0], common[0]))
                points.append(("largest", q["batch_size"].max(), u["batch_size"].max()))
                for point, bq, bu in points:
                    rq = q[q["batch_size"] == bq].iloc[0]
                    ru = u[u["batch_size"] == bu].iloc[0]
                    row = {
                        "model_q": model_q,
                        "model_u": model_u,
                        "architecture": arch,
                        "platform": platform,
                        "point": point,
                        "batch_q": int(bq),
                        "batch_u": int(bu),
                        "weights_q": labels[model_q],
                        "energy_method": "; ".join(
                            sorted({str(rq.get("energy_method", "")), str(ru.get("energy_method", ""))} - {""})
                        ),
                    }
                    for v in COMPARED:
                        row[f"{v}_q"], row[f"{v}_u"] = float(rq[v]), float(ru[v])
                        row[f"{v}_ratio"] = float(rq[v]) / float(ru[v]) if float(ru[v]) > 0 else float("nan")
                    rows.append(row)
    out = pd.DataFrame(rows, columns=columns)
    if out.empty:
        return out
    out["_point"] = out["point"].map({"smallest": 0, "largest": 1})
    out["_arch"] = out["architecture"].map(natural_key)
    out = out.sort_values(["platform", "_arch", "model_q", "model_u", "_point"], kind="stable")
    return out.drop(columns=["_point", "_arch"]).reset_index(drop=True)


def unpaired_quantized(metrics: pd.DataFrame) -> list[tuple[str, str]]:
    """(model, platform) of quantized models measured (static) with no unquantized sibling of
    the same architecture measured on that platform."""
    df = _static(metrics)
    quantized = is_quantized(df)
    out = []
    for (arch, platform), cells in df.groupby(["architecture", "platform"], sort=True):
        q_mask = quantized.loc[cells.index]
        if q_mask.all():
            out += [(m, platform) for m in sorted(cells["model"].unique(), key=natural_key)]
    return out
