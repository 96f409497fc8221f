"""Adapter for rule measure_platform (workflow/rules/probe.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon.lease import die_with_supervisor

die_with_supervisor()  # no orphaned measurement beside a rerun of it (tokencarbon/lease.py)

from tokencarbon.peak import measure_platform

measure_platform(dict(snakemake.params.platform), snakemake.output[0])
