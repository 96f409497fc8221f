"""tokencarbon: energy and carbon per token of LLM inference, measured as one Snakemake DAG."""

__version__ = "0.1.0"
