"""Former entry point of the figure rules, now tokencarbon.figures.registry (build); kept only while
workflow/rules/common.smk's committed FIGURE_CODE still names this file."""

from tokencarbon.figures.inputs import read_probes
from tokencarbon.figures.registry import build, intensity_series

__all__ = ["build", "intensity_series", "read_probes"]
