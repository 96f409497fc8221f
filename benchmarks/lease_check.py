"""Checks a multi-GPU run's GPU leases from its cells' own records: which GPU each cell leased
(meta.json's gpu_lease), which GPU the cell saw as its CUDA device 0 and its sidecar sampled (the
UUID that NVML reported for device 0 under the cell's CUDA_VISIBLE_DEVICES, meta.json's hardware),
and that cells whose batch windows overlapped in time held distinct GPUs.

    python benchmarks/lease_check.py results/cells/h100-sxm-80gb [--out lease.json]

Exit status 1 when a check fails; the record (JSON) lists every cell and every overlapping pair.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import pandas as pd

from tokencarbon.files import write_json


def read_cells(platform_dir: Path) -> list[dict]:
    cells = []
    for meta_path in sorted(platform_dir.glob("*/bs*/meta.json")):
        meta = json.loads(meta_path.read_text())
        lease = meta.get("gpu_lease")
        if not lease:
            raise SystemExit(f"{meta_path}: no gpu_lease recorded (not a GPU cell, or run unleased)")
        power = pd.read_parquet(meta_path.parent / "power.parquet", columns=["power_w"])
        cells.append(
            {
                "cell": f"{meta['model']}/bs{meta['batch_size']}",
                "gpu_index": lease["gpu_index"],
                "gpu_uuid": lease.get("gpu_uuid"),
                "sampled_gpu_uuid": meta["hardware"].get("gpu", {}).get("uuid"),
                "mean_power_w": float(power["power_w"].mean()),
                "window_start_wall_ns": meta["window_start_wall_ns"],
                "window_end_wall_ns": meta["window_end_wall_ns"],
            }
        )
    if not cells:
        raise SystemExit(f"{platform_dir}: no cells (expected <model>/bs<N>/meta.json under it)")
    return cells


def check(cells: list[dict]) -> dict:
    """Overlapping windows on one GPU, and sidecars that sampled a GPU other than the lease."""
    overlaps = []
    for a, b in itertools.combinations(cells, 2):
        start = max(a["window_start_wall_ns"], b["window_start_wall_ns"])
        end = min(a["window_end_wall_ns"], b["window_end_wall_ns"])
        if end > start:
            overlaps.append(
                {
                    "cells": [a["cell"], b["cell"]],
                    "gpus": [a["gpu_index"], b["gpu_index"]],
                    "overlap_s": (end - start) / 1e9,
                }
            )
    return {
        "n_cells": len(cells),
        "gpus_used": sorted({c["gpu_index"] for c in cells}),
        "overlapping_pairs": overlaps,
        "same_gpu_overlaps": [o for o in overlaps if o["gpus"][0] == o["gpus"][1]],
        "sidecar_mismatches": [
            c["cell"] for c in cells if c["sampled_gpu_uuid"] != c["gpu_uuid"]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("platform_dir", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    cells = read_cells(args.platform_dir)
    summary = check(cells)
    for c in cells:
        print(
            f"{c['cell']:<22} GPU {c['gpu_index']} {c['gpu_uuid']} sampled {c['sampled_gpu_uuid']} "
            f"{(c['window_end_wall_ns'] - c['window_start_wall_ns']) / 1e9:7.1f} s"
        )
    print(
        f"{summary['n_cells']} cells on GPUs {summary['gpus_used']}; "
        f"{len(summary['overlapping_pairs'])} pairs ran at the same time, "
        f"{len(summary['same_gpu_overlaps'])} of them on one GPU; "
        f"sidecar on another GPU: {summary['sidecar_mismatches'] or 'none'}"
    )
    if args.out:
        write_json(args.out, {"cells": cells, "summary": summary})
    return 1 if summary["same_gpu_overlaps"] or summary["sidecar_mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
