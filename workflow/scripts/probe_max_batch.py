"""Adapter for checkpoint probe_max_batch (workflow/rules/probe.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon.lease import die_with_supervisor

die_with_supervisor()  # no orphaned probe beside a rerun of it (tokencarbon/lease.py)

import contextlib

from tokencarbon import tables
from tokencarbon.errors import ConfigError
from tokencarbon.layout import CACHE
from tokencarbon.lease import cell_leases
from tokencarbon.probe import run_probe

# Under the working directory, beside the study folders it serves and shared by them (its key is
# everything that changes a probe); `make clean` removes it with them.
PROBE_CACHE = f"{CACHE}/probe"

platform = dict(snakemake.params.platform)
if platform["kind"] == "cpu" and "logical_cpus" not in platform:
    # The probe's params carry only what checks the hardware; the CPUs to lease come from the row.
    from tokencarbon.platforms import get_platform

    platform["logical_cpus"] = get_platform(platform.get("hardware", platform["name"])).logical_cpus
if snakemake.params.backend != "torch":
    raise ConfigError(
        f"config key backend.name: the OOM probe drives the torch backend only, not "
        f"{snakemake.params.backend!r}; give sweep.batch_sizes as a list for this backend"
    )
with contextlib.ExitStack() as stack:
    # Like a cell, the probe leases its devices (a GPU before CUDA starts, or the platform's logical
    # CPUs): it must not run on a device while a cell measures there.
    cell = f"probe {platform['name']}/{snakemake.wildcards.model}"
    stack.enter_context(
        cell_leases(platform, cell=cell, log=lambda text: print(text, file=sys.stderr))
    )
    # the serving engine compiles its decode step: from and into the study's compilation cache,
    # as the cells do (tokencarbon/compile_cache.py; the key names torch and the device)
    from tokencarbon.compile_cache import configured
    from tokencarbon.hardware import detect

    stack.enter_context(
        configured(f"{CACHE}/compile", detect(platform["kind"])["device_name"] or "unknown")
    )
    result = run_probe(
        model=snakemake.params.model,
        platform=platform,
        limits=snakemake.params.limits,
        workload=tables.read(snakemake.input.workload, tables.WORKLOAD),
        out_path=snakemake.output[0],
        # A probe of the same key (hardware, cap, architecture, dtype, lengths, limits, code) that
        # ran before, for any model or config of this working directory, is reused from here.
        cache_dir=PROBE_CACHE,
        log=lambda text: print(text, file=sys.stderr),
    )
print(
    f"max batch {result['max_ok']}, first failure {result['min_failed']}"
    + (f"; reused from {result['reused_from']['cache']}" if result["reused_from"] else ""),
    file=sys.stderr,
)
