"""A study's grid in chunks that resume on another machine (issue 23; docs/chunks.md).

    python benchmarks/run_chunks.py --configfile config/paper-h200.yaml --budget 25m --cores 16

restores the cells committed under benchmarks/results/paper-<gpu>/ (--pack) into the study's folder
(results/<study>/cells/, the config's `study`), runs the setup and the
OOM probes that are missing, plans the cells not yet measured from Snakemake's dry run, prints
each one's expected device time, then measures them one Snakemake call per cell in priority order
(batch 1 and the largest batch first, continuous after static, quantized models last) while each
next cell's estimate fits what is left of --budget, packing every finished cell into a copy of
the pack under results/chunks/ (--out; --update-pack copies it back for commit).
SIGINT or SIGTERM stops it cleanly: the running cell is discarded, every finished one is kept.
tokencarbon/chunks.py holds the logic and explains the choices.

Exit status: 0 when every cell that fitted ran, 1 when a cell failed, 130 when stopped by a signal,
2 for a bad argument or configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "workflow"))

from tokencarbon import chunks  # noqa: E402
from tokencarbon.errors import TokencarbonError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--budget",
        required=True,
        help="device time for this chunk: seconds (900), minutes (25m), hours (1h30m)",
    )
    p.add_argument("--configfile", default=None, help="the study (default: config/config.yaml)")
    p.add_argument(
        "--config", nargs="*", default=[], metavar="KEY=VALUE", help="passed to snakemake --config"
    )
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="snakemake --cores")
    p.add_argument(
        "--pack",
        type=Path,
        default=None,
        help="the committed pack whose cells are restored "
        "(default: benchmarks/results/paper-<first measured platform's prefix>)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where this run grows its copy of the pack (default: results/chunks/<pack's "
        "name>, ignored by git, so cells record a clean commit); copy it over --pack to commit",
    )
    p.add_argument(
        "--update-pack",
        action="store_true",
        help="at the end, copy --out over --pack (then commit it)",
    )
    p.add_argument(
        "--remeasure",
        nargs="+",
        default=[],
        metavar="CELL",
        help="cells (platform/model/bs4) to measure again though committed",
    )
    p.add_argument(
        "--plan-only",
        action="store_true",
        help="restore, run setup and missing probes, print the plan; measure no cell",
    )
    p.add_argument(
        "--tar",
        type=Path,
        default=None,
        help="also write the pack as one .tar.gz after each cell (e.g. $OUT/paper-h200.tar.gz)",
    )
    p.add_argument(
        "--target",
        nargs="+",
        default=["all"],
        help="the DAG target(s) whose cells are planned, e.g. cells' meta.json files: with --config "
        "run='{\"repeats_at_ends\": 1}', cells too long for a call at their config's repeats "
        "(docs/chunks.md)",
    )
    p.add_argument(
        "--records",
        type=Path,
        default=None,
        help="committed records for the estimates (default: benchmarks/results)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=HERE.parent,
        help="the checkout whose workflow runs (default: this script's)",
    )
    p.add_argument(
        "--grace-s",
        type=float,
        default=120.0,
        help="seconds a stopped Snakemake call gets before SIGKILL",
    )
    p.add_argument(
        "--cells-per-call",
        type=int,
        default=8,
        help="cells expected to take at most 2 min each share one Snakemake call, up to this many "
        "(default 8; 1: a call per cell): each call costs seconds beside its job",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.cells_per_call < 1:
        p.error(f"--cells-per-call {a.cells_per_call}: expected a whole number >= 1")
    try:
        opts = chunks.Options(
            workdir=a.workdir,
            budget_s=chunks.parse_budget(a.budget),
            configfile=a.configfile,
            config=a.config,
            cores=a.cores,
            pack_dir=a.pack,
            out_dir=a.out,
            update_pack=a.update_pack,
            remeasure=a.remeasure,
            plan_only=a.plan_only,
            tar=a.tar,
            targets=tuple(a.target),
            records_dir=a.records,
            grace_s=a.grace_s,
            progress=not a.no_progress,
            cells_per_call=a.cells_per_call,
        )
        return chunks.run(opts)
    except TokencarbonError as exc:
        print(f"run_chunks: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
