"""tokencarbon: energy and carbon per token of LLM inference, measured as one Snakemake DAG.

The measurement API (tokencarbon.measure, Monitor, Measurement; module tokencarbon.monitor) loads
on first use, so `import tokencarbon` stays cheap for the workflow's scripts.
"""

__version__ = "0.1.0"

_API = ("measure", "Monitor", "Measurement")


def __getattr__(name: str):
    if name in _API:
        import tokencarbon.monitor

        return getattr(tokencarbon.monitor, name)
    raise AttributeError(f"module 'tokencarbon' has no attribute {name!r}")
