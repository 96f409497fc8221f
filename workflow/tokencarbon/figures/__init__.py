"""The study's figures and tables and ours: plain data in (DataFrames, architectures, platforms, a
Series), a matplotlib Figure, a table or a document out; save() writes a figure as PNG and PDF.
registry.ARTIFACTS lists everything the figures stage makes (workflow/rules/figures.smk)."""

import matplotlib

# Headless on CI and cluster nodes; must happen before seaborn imports pyplot.
matplotlib.use("Agg")

from tokencarbon.figures.analytic import (  # noqa: E402
    fig1_flops_vs_seqlen,
    fig2a_memory_vs_seqlen,
    fig2b_gpu_generations,
    fig6a_intensity_day,
)
from tokencarbon.figures.carbon_analysis import (  # noqa: E402
    carbon_optimal_points,
    pareto_carbon_latency,
    pareto_mask,
)
from tokencarbon.figures.common import save  # noqa: E402
from tokencarbon.figures.measured import (  # noqa: E402
    family_models,
    fig4_throughput_latency,
    fig5_mfu_batch1,
    fig6_power_over_time,
    fig7_carbon_per_token,
)
from tokencarbon.figures.summary import (  # noqa: E402
    carbon_optimal_batches,
    max_batch_markdown,
    max_batch_table,
    summary_markdown,
    write_max_batch_csv,
    write_max_batch_markdown,
)

__all__ = [
    "carbon_optimal_batches",
    "carbon_optimal_points",
    "family_models",
    "fig1_flops_vs_seqlen",
    "fig2a_memory_vs_seqlen",
    "fig2b_gpu_generations",
    "fig4_throughput_latency",
    "fig5_mfu_batch1",
    "fig6_power_over_time",
    "fig6a_intensity_day",
    "fig7_carbon_per_token",
    "max_batch_markdown",
    "max_batch_table",
    "pareto_carbon_latency",
    "pareto_mask",
    "save",
    "summary_markdown",
    "write_max_batch_csv",
    "write_max_batch_markdown",
]
