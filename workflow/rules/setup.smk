# Before the config is read (the Snakefile includes this first): the package this workflow's jobs
# run, and the YAML of every config file checked, naming file and line.
import functools
import os
import sys
from pathlib import Path

# The package beside this Snakefile, for the DAG (sys.path) and for every job (PYTHONPATH,
# inherited by script jobs, their subprocesses and cluster jobs, which re-read this file), ahead
# of any installed copy: a venv shared by several checkouts, or a non-editable install, still runs
# each checkout's own code and reads its own resources/.
PKG_ROOT = Path(workflow.basedir) / "workflow"
sys.path.insert(0, str(PKG_ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(PKG_ROOT)]
    + [
        p
        for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if p and p != str(PKG_ROOT)
    ]
)


envvars:
    "PYTHONPATH",


from tokencarbon.config import check_config_files

# Snakemake reads these with a YAML loader that keeps the last of two equal keys and, on a syntax
# error, names neither file nor line. The default file is the Snakefile's `configfile:`; a
# --configfile with a syntax error is refused by Snakemake's command line before this runs.
check_config_files(["config/config.yaml", *workflow.overwrite_configfiles])
