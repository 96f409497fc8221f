"""Adapter for checkpoint probe_max_batch (workflow/rules/probe.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import contextlib
import os

from tokencarbon import tables
from tokencarbon.errors import ConfigError
from tokencarbon.lease import apply, lease_gpu
from tokencarbon.probe import run_probe

platform = snakemake.params.platform
if snakemake.params.backend != "torch":
    raise ConfigError(
        f"config key backend.name: the OOM probe drives the torch backend only, not "
        f"{snakemake.params.backend!r}; give sweep.batch_sizes as a list for this backend"
    )
with contextlib.ExitStack() as stack:
    if platform["kind"] == "gpu":
        # Like a cell, the probe takes a GPU of its own before CUDA starts (tokencarbon/lease.py).
        cell = f"probe {platform['name']}/{snakemake.wildcards.model}"
        lease = stack.enter_context(lease_gpu(f"/tmp/tokencarbon-gpu-leases-{os.getuid()}", cell=cell))
        print(f"{cell}: leased GPU {apply(lease)}", file=sys.stderr)
    result = run_probe(
        model=snakemake.params.model,
        platform=platform,
        limits=snakemake.params.limits,
        workload=tables.read(snakemake.input.workload, tables.WORKLOAD),
        out_path=snakemake.output[0],
    )
print(f"max batch {result['max_ok']}, first failure {result['min_failed']}", file=sys.stderr)
