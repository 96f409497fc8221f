"""tokencarbon.chunks and benchmarks/run_chunks.py: the dry-run parser, the run order, the time
estimates (worked by hand, and against committed cells left out of the fit), packs, and (slow) a
chunked run stopped by SIGINT then resumed in a fresh clone (issue 23's must-show)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tokencarbon import chunks
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import load_architecture
from tokencarbon.quantization import NONE, from_columns

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks/results"

# Snakemake 9.27.1's dry-run text for two jobs of the default workflow (input lists shortened).
DRY_RUN = """\
Building DAG of jobs...
Job stats:
job                    count
-------------------  -------
run_cell                   1
total                      2

[Mon Dec  7 10:00:56 2026]
rule run_cell:
    input: results/s/engines/cpu/tiny-gpt2/torch/manifest.json, results/s/workload/tiny-gpt2.parquet, workflow/tokencarbon/cell.py
    output: results/s/cells/cpu/tiny-gpt2/bs4/batches.parquet, results/s/cells/cpu/tiny-gpt2/bs4/power.parquet, results/s/cells/cpu/tiny-gpt2/bs4/meta.json
    log: results/s/logs/run_cell/cpu/tiny-gpt2/bs4.log
    jobid: 29
    reason: Forced execution
    wildcards: platform=cpu, model=tiny-gpt2, batch=4
    resources: tmpdir=/tmp, gpu=0
Shell command: None

[Mon Dec  7 10:00:56 2026]
localcheckpoint probe_max_batch:
    input: results/s/engines/cpu/tiny-gpt2/torch/manifest.json, results/s/workload/tiny-gpt2.parquet
    output: results/s/cells/cpu/tiny-gpt2/probe.json
    log: results/s/logs/probe_max_batch/cpu/tiny-gpt2.log
    jobid: 6
    reason: Input files updated by another job: results/s/workload/tiny-gpt2.parquet
    wildcards: platform=cpu, model=tiny-gpt2
    resources: tmpdir=/tmp, gpu=0
Shell command: None
This was a dry-run (flag -n). The order of jobs does not reflect the order of execution.
"""


def test_dry_run_jobs_are_parsed_with_their_files_and_wildcards():
    cell_job, probe_job = chunks.parse_dry_run(DRY_RUN)
    assert cell_job.rule == "run_cell" and probe_job.rule == "probe_max_batch"
    assert cell_job.outputs[2] == "results/s/cells/cpu/tiny-gpt2/bs4/meta.json"
    assert probe_job.logs == ("results/s/logs/probe_max_batch/cpu/tiny-gpt2.log",)
    assert probe_job.reason.startswith("Input files updated by another job")
    cell = chunks.Cell.from_job(cell_job)
    assert (cell.name, cell.platform, cell.model, cell.mode, cell.n) == (
        "cpu/tiny-gpt2/bs4",
        "cpu",
        "tiny-gpt2",
        "static",
        4,
    )
    assert cell.meta.endswith("bs4/meta.json")
    assert (
        chunks.parse_dry_run(
            "Building DAG of jobs...\nNothing to be done (all requested files are present and up "
            "to date)."
        )
        == []
    )
    with pytest.raises(InputError, match="not a cell"):
        chunks.Cell.from_job(probe_job)
    stray = dataclasses.replace(cell_job, outputs=("results/s/bs4/meta.json",))
    with pytest.raises(InputError, match="outside a cells/<platform>/<model>/<cell> folder"):
        chunks.Cell.from_job(stray)
    # the study's cell tree: results/<study>/cells (no `study`: the default's)
    assert chunks.cells_dir({"study": "paper"}) == Path("results/paper/cells")
    assert chunks.cells_dir({}) == Path("results/default/cells")


def _cell(platform, model, mode, n):
    prefix = "bs" if mode == "static" else "cb"
    out = f"results/s/cells/{platform}/{model}/{prefix}{n}/meta.json"
    return chunks.Cell(f"{platform}/{model}/{prefix}{n}", platform, model, mode, n, (out,), (), ())


def test_run_order_puts_batch_1_and_the_largest_first_continuous_after_static_quantized_last():
    grid = [
        _cell("h200", m, mode, n)
        for m in ("7b", "13b", "7b-wq4")
        for mode, sizes in (("static", (1, 2, 4, 8, 16)), ("continuous", (1, 4, 16)))
        for n in sizes
    ]
    order = {"h200": 0, "7b": 1, "13b": 2, "7b-wq4": 3}
    ranked = [c.name for c in chunks.order_cells(grid, {"7b-wq4": True}, order)]
    # by hand: tier 0 (bs1 and the largest, 16) model by model, then the other static cells,
    # then cb1 and cb16, then cb4; the quantized model's cells after all others, same tiers
    expected = (
        ["h200/7b/bs1", "h200/7b/bs16", "h200/13b/bs1", "h200/13b/bs16"]
        + [f"h200/{m}/bs{n}" for m in ("7b", "13b") for n in (2, 4, 8)]
        + ["h200/7b/cb1", "h200/7b/cb16", "h200/13b/cb1", "h200/13b/cb16"]
        + ["h200/7b/cb4", "h200/13b/cb4"]
        + [
            "h200/7b-wq4/bs1",
            "h200/7b-wq4/bs16",
            "h200/7b-wq4/bs2",
            "h200/7b-wq4/bs4",
            "h200/7b-wq4/bs8",
            "h200/7b-wq4/cb1",
            "h200/7b-wq4/cb16",
            "h200/7b-wq4/cb4",
        ]
    )
    assert ranked == expected


def test_slots_are_taken_first_come_first_served():
    # by hand, 2 slots: request 0 (3 steps) and 1 (1 step) start at 0; 2 takes slot 1 at step 1
    # and ends at 3; 3 (2 steps) takes the first slot free at 3
    assert chunks.slot_schedule([3, 1, 2, 2], 2) == [(0, 3), (0, 1), (1, 3), (3, 5)]
    assert chunks.slot_schedule([5, 5], 8) == [(0, 5), (0, 5)]
    with pytest.raises(InputError):
        chunks.slot_schedule([1], 0)


# tiny-gpt2 (resources/models/tiny-gpt2.json) in float32, counted by hand: per layer qkv 256 x 768
# + 768, out 256 x 256 + 256, fc 256 x 1024 + 1024, proj 1024 x 256 + 256, two LayerNorms 4 x 256
# = 789,760; four layers, token embeddings 4096 x 256 (tied head), positions 512 x 256, final
# LayerNorm 512: 4,339,200 parameters, 17,356,800 bytes. K and V per token: 2 x 4 layers x 4 heads
# x 64 x 4 B = 8,192 bytes.
WEIGHTS, KV = 17_356_800, 8_192
RATES = chunks.Rates(
    step_fixed_s=1e-3, bytes_per_s=1e9, prefill_fixed_s=0.5, flops_per_s=math.inf, source="by hand"
)


def test_static_estimate_by_hand():
    arch = load_architecture("tiny-gpt2")
    # one batch of 2: prompts padded to 10, the longest output 5 -> 4 decode steps of 2 rows at
    # context 10 + 5 // 2 = 12, each reading the weights and (12 + 1) x 2 positions of K/V
    step = 1e-3 + (WEIGHTS + 26 * KV) / 1e9
    expected = 0.5 + 4 * step
    got = chunks.static_measured_s(arch, "float32", NONE, [10, 6], [5, 3], 2, RATES)
    assert got == pytest.approx(expected, rel=1e-12)
    # batch 1: two batches; the second has 2 decode steps at context 6 + 1 -> (7 + 1) positions
    one = 0.5 + 4 * (1e-3 + (WEIGHTS + 13 * KV) / 1e9) + 0.5 + 2 * (1e-3 + (WEIGHTS + 8 * KV) / 1e9)
    assert chunks.static_measured_s(
        arch, "float32", NONE, [10, 6], [5, 3], 1, RATES
    ) == pytest.approx(one)


def test_continuous_estimate_by_hand():
    arch = load_architecture("tiny-gpt2")
    # 2 slots, outputs [5, 3, 2]: the third request starts at step 3, ends at 5 -> 5 steps, each
    # one weight read; K/V: (o - 1) x (p + o // 2) positions per request: 4 x 12 + 2 x 7 + 1 x 5
    expected = 5 * (1e-3 + WEIGHTS / 1e9) + (48 + 14 + 5) * KV / 1e9
    got = chunks.continuous_measured_s(arch, "float32", NONE, [10, 6, 4], [5, 3, 2], 2, RATES)
    assert got == pytest.approx(expected, rel=1e-12)


def test_a_line_through_exact_points_is_recovered():
    a, b = chunks._fit_line([1.0, 2.0, 4.0], [3.0, 5.0, 9.0])  # y = 1 + 2x
    assert (a, b) == (pytest.approx(1.0), pytest.approx(2.0))


def test_a_plane_through_exact_points_is_recovered_else_the_line():
    # y = 1 + 0.5 L + 2 x at (L, x) = (12, 1), (36, 2), (48, 4), (32, 3): 9, 23, 33, 23
    a, c, b = chunks._fit_plane([12, 36, 48, 32], [1.0, 2.0, 4.0, 3.0], [9.0, 23.0, 33.0, 23.0])
    assert (a, c, b) == (pytest.approx(1.0), pytest.approx(0.5), pytest.approx(2.0))
    # one depth only: no layer term, the line of test_a_line_through_exact_points_is_recovered
    assert chunks._fit_plane([32, 32, 32], [1.0, 2.0, 4.0], [3.0, 5.0, 9.0]) == (
        pytest.approx(1.0), 0.0, pytest.approx(2.0))  # fmt: skip


def test_static_estimate_with_a_layer_term_by_hand():
    # tiny-gpt2 has 4 layers: each of the 4 decode steps of test_static_estimate_by_hand's batch of
    # 2 costs 4 x 0.2 ms more
    rates = dataclasses.replace(RATES, step_layer_s=2e-4)
    arch = load_architecture("tiny-gpt2")
    expected = 0.5 + 4 * (1e-3 + 4 * 2e-4 + (WEIGHTS + 26 * KV) / 1e9)
    got = chunks.static_measured_s(arch, "float32", NONE, [10, 6], [5, 3], 2, rates)
    assert got == pytest.approx(expected, rel=1e-12)


PAPER_H100 = "paper-h100/cells/h100-sxm-80gb"


@pytest.mark.parametrize(
    "train, test, tolerance",
    [
        (["gpu-study/cells/h100-sxm-80gb/*"], "gpu-large-batch/cells/h100-sxm-80gb/*", 0.15),
        (["gpu-study/cells/h200-141gb/*"], "h200-models/torch/cells/h200-141gb/*", 0.25),
        # GPT-2 (12 layers) and the Llamas (32, 40) predict GPT-2 Large (36) and XL (48): a
        # step-only fixed cost gave 0.57x their batch-1 and batch-2 windows (chunks' docstring)
        ([f"{PAPER_H100}/gpt2", f"{PAPER_H100}/llama-*"], f"{PAPER_H100}/gpt2-*", 0.10),
    ],
)
def test_estimates_of_committed_cells_left_out_of_the_fit_are_near_what_they_measured(
    train, test, tolerance
):
    # Rates fitted on one study's cells predict another study's cells on the same GPU (Llama-2-7B
    # batch 1..64 on the H100; Llama-3.1-8B static 1 and 8 and continuous 8 on the H200) from
    # their own request lengths; measured: the sum of their windows (batches.parquet).
    ((device, points),) = chunks.committed_cell_points(
        sorted(m for t in train for m in RECORDS.glob(f"{t}/bs*/meta.json"))
    ).items()
    rates = chunks.fit_rates(points, device)
    cells = sorted(RECORDS.glob(f"{test}/*/meta.json"))
    assert len(cells) >= 3
    for meta_path in cells:
        meta = json.loads(meta_path.read_text())
        b = pd.read_parquet(meta_path.parent / "batches.parquet")
        prompts = [int(x) for lens in b["prompt_lens"] for x in lens]
        outputs = [int(x) for lens in b["output_lens"] for x in lens]
        static = meta_path.parent.name.startswith("bs")
        estimate = (chunks.static_measured_s if static else chunks.continuous_measured_s)(
            load_architecture(meta["architecture"]),
            meta["dtype"],
            from_columns(meta.get("quantization"), meta.get("quant_group_size")),
            prompts,
            outputs,
            meta["batch_size"],
            rates,
        )
        measured = (b["end_ns"] - b["start_ns"]).sum() / 1e9
        assert estimate == pytest.approx(measured, rel=tolerance), meta_path


def test_overheads_come_from_the_devices_own_records_else_another_of_its_kind():
    from tokencarbon.platforms import load_platforms

    rows = load_platforms()
    h100 = chunks.load_overheads(RECORDS, rows["h100-sxm-80gb"].device_name_pattern, "gpu")
    # Per job: fixed + Snakemake's call - the job (the call's own start and end beside the job's
    # fixed cost); the median of each mode's jobs. h100-cell-overhead-bs8-static.json: 8.992 +
    # 83.795 - 78.547 = 14.240; -warm.json's bs8 passes: 9.615 + 46.203 - 40.468 = 15.350,
    # 6.665 + 42.364 - 37.103 = 11.926, 7.704 + 45.732 - 38.337 = 15.099; median of the four
    # (14.240 + 15.099) / 2. Continuous: -cb16-paged.json 33.820 + 53.483 - 44.018 = 43.285;
    # -warm.json's cb32 passes 21.758 + 40.022 - 34.478 = 27.302, 13.639 + 31.941 - 26.356 =
    # 19.224, 13.363 + 32.903 - 26.081 = 20.185; median (20.185 + 27.302) / 2. The "before"
    # record (commit 1a34afe's cost) is left out.
    assert h100.cell_fixed_s["static"] == pytest.approx((14.240 + 15.099) / 2, abs=3e-3)
    assert h100.cell_fixed_s["continuous"] == pytest.approx((20.185 + 27.302) / 2, abs=3e-3)
    assert h100.probe("llama-2-13b") == pytest.approx(25.111)  # h100-probe-time.json
    h200 = chunks.load_overheads(RECORDS, rows["h200-141gb"].device_name_pattern, "gpu")
    assert h200.cell_fixed_s == h100.cell_fixed_s
    assert any("another GPU" in s for s in h200.sources)


def test_budget_and_durations_read_and_print_as_people_write_them():
    assert chunks.parse_budget("900") == 900 and chunks.parse_budget("25m") == 1500
    assert chunks.parse_budget("1h30m") == 5400 and chunks.parse_budget("2h") == 7200
    for bad in ("", "soon", "5x"):
        with pytest.raises(ConfigError, match="budget"):
            chunks.parse_budget(bad)
    assert [chunks.format_seconds(s) for s in (42, 545, 9660, None)] == [
        "42 s",
        "9 min 05 s",
        "2 h 41 min",
        "?",
    ]


CELLS = Path("results/s/cells")  # a study's cell tree (chunks.cells_dir)


def _finished_cell(workdir: Path, name: str, payload: bytes) -> tuple[list[str], list[str]]:
    folder = workdir / CELLS / name
    folder.mkdir(parents=True)
    (folder / "batches.parquet").write_bytes(payload)
    (folder / "meta.json").write_text(json.dumps({"git_commit": "abc", "device_name": "cpu"}))
    log = workdir / "results/s/logs/run_cell" / f"{name}.log"
    log.parent.mkdir(parents=True)
    log.write_text("measured\n")
    return (
        [f"{CELLS}/{name}/batches.parquet", f"{CELLS}/{name}/meta.json"],
        [f"results/s/logs/run_cell/{name}.log"],
    )


def test_a_pack_restores_byte_identical_files_and_refuses_altered_ones(tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    files, logs = _finished_cell(here, "cpu/m/bs1", b"\x00measured\xff")
    pack = chunks.Pack.open(tmp_path / "pack")
    pack.add("cells", "cpu/m/bs1", files, logs, here, {"git_commit": "abc"}, CELLS)
    # a pack as git carries it: job logs outside any folder named logs/ (.gitignore), cells
    # relative to the study's cell tree
    assert (tmp_path / "pack/job-logs/run_cell/cpu/m/bs1.log").is_file()
    assert (tmp_path / "pack/cells/cpu/m/bs1/meta.json").is_file()
    # a log of a pack made before study folders (logs/...) lies in the same place
    assert chunks._packed_log("logs/run_cell/cpu/m/bs1.log") == Path("job-logs/run_cell/cpu/m/bs1.log")
    assert chunks.Pack.open(tmp_path / "pack").restore(there, CELLS) == ["cell cpu/m/bs1"]
    for f in [*files, *logs]:
        assert (there / f).read_bytes() == (here / f).read_bytes()
    assert chunks.Pack.open(tmp_path / "pack").restore(there, CELLS) == []  # already there, equal
    # a run's own copy of the committed pack takes its entries, file for file
    staging = chunks.Pack.open(tmp_path / "staging")
    assert staging.take_from(chunks.Pack.open(tmp_path / "pack")) == ["cell cpu/m/bs1"]
    assert (
        tmp_path / "staging/cells/cpu/m/bs1/batches.parquet"
    ).read_bytes() == b"\x00measured\xff"
    assert staging.take_from(chunks.Pack.open(tmp_path / "pack")) == []
    (there / files[0]).write_bytes(b"other")
    with pytest.raises(InputError, match="differs from the packed"):
        chunks.Pack.open(tmp_path / "pack").restore(there, CELLS)
    (tmp_path / "pack/cells/cpu/m/bs1/batches.parquet").write_bytes(b"tampered")
    with pytest.raises(InputError, match="not the file the manifest recorded"):
        chunks.Pack.open(tmp_path / "pack").restore(tmp_path / "elsewhere", CELLS)


# --------------------------------------------------------------------------------------------
# The must-show run (slow): stopped by SIGINT mid-grid, resumed in a fresh clone

TINY = {
    "platforms": {
        "cpu": {
            "memory_limit_gb": 0.06,
            "spec": {"measure": True, "logical_cpus": 2, "tdp_w": 4.375},
        }
    },
    "families": {"tiny": {"tokenizer": "builtin", "min_tokens": 4, "max_tokens": 128}},
    "models": {"tiny-gpt2": {"architecture": "tiny-gpt2", "family": "tiny", "dtype": "float32"}},
    "workload": {"num_prompts": 2, "synthetic_conversations": 600, "builtin_vocab_size": 2048},
    "sweep": {"batch_sizes": "auto", "max_batch": 4, "max_num_seqs": [2]},
    "power": {"interval_s": 0.05, "idle_s": 0.2},
}
RUN = [
    sys.executable,
    "benchmarks/run_chunks.py",
    "--configfile",
    "config/tiny.yaml",
    "--budget",
    "20m",
    "--cores",
    "2",
    "--no-progress",
    "--update-pack",
]


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def _committed_repo(repo: Path, config: dict) -> Path:
    """A repository at `repo` of this checkout's tracked files plus `config` as config/tiny.yaml,
    committed as "A"."""
    for rel in _git(REPO, "ls-files").splitlines():
        if (REPO / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, repo / rel)
    (repo / "config/tiny.yaml").write_text(yaml.safe_dump(config))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "A")
    return repo


def _cell_bytes(repo: Path, cells: list[str]) -> dict[str, bytes]:
    root = repo / "results/default/cells"  # TINY names no study: the default's folder
    return {
        str(p.relative_to(root)): p.read_bytes()
        for c in cells
        for p in sorted((root / c).iterdir())
        if p.is_file()
    }


@pytest.mark.slow
def test_a_chunked_run_stopped_by_sigint_resumes_in_a_fresh_clone_measuring_only_the_missing_cells(
    tmp_path,
):
    # A repository of this checkout's tracked files plus the tiny study, committed (commit A).
    first = _committed_repo(tmp_path / "first", TINY)
    commit_a = _git(first, "rev-parse", "HEAD")

    # Chunk 1: the grid is bs1 and bs2 (auto: the 2 prompts cap what the probe found to fit) and
    # cb2, run in that order (batch 1 and the largest first, continuous after
    # static); SIGINT once bs2's job has started (its log exists).
    pack = first / "benchmarks/results/paper-cpu"
    with open(tmp_path / "first.log", "w") as out:  # a Snakemake call per cell, as before groups
        proc = subprocess.Popen([*RUN, "--cells-per-call", "1"], cwd=first, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    log = lambda: (tmp_path / "first.log").read_text()[-4000:]  # noqa: E731
    deadline = time.time() + 420
    while not (first / "results/default/logs/run_cell/cpu/tiny-gpt2/bs2.log").exists():
        assert proc.poll() is None and time.time() < deadline, log()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends the runner
    assert proc.wait(timeout=180) == chunks.EXIT_INTERRUPTED, log()
    manifest = json.loads((pack / "manifest.json").read_text())
    assert sorted(manifest["cells"]) == ["cpu/tiny-gpt2/bs1"]
    assert manifest["runs"][-1]["stopped"] == "interrupted"
    running = first / "results/default/cells/cpu/tiny-gpt2/bs2"
    assert not any(
        (running / f).exists() for f in ("batches.parquet", "power.parquet", "meta.json")
    )
    kept = _cell_bytes(first, ["cpu/tiny-gpt2/bs1"])
    probe = (first / "results/default/cells/cpu/tiny-gpt2/probe.json").read_bytes()

    # The pack committed, then a package module edited and committed (commit B): the code input
    # of every cell and probe changes.
    _git(first, "add", "benchmarks/results/paper-cpu")
    _git(first, "commit", "-qm", "chunk 1")
    with open(first / "workflow/tokencarbon/cell.py", "a") as f:
        f.write("# edited between chunks\n")
    _git(first, "commit", "-qam", "B")
    commit_b = _git(first, "rev-parse", "HEAD")

    # Chunk 2 on a fresh clone: restores the packed cells and measures exactly bs2 and cb2.
    fresh = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(first), str(fresh)], check=True)
    done = subprocess.run(RUN, cwd=fresh, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    manifest = json.loads((fresh / "benchmarks/results/paper-cpu/manifest.json").read_text())
    # (in one Snakemake call, whose order Snakemake picks)
    assert sorted(manifest["runs"][-1]["measured"]) == ["cpu/tiny-gpt2/bs2", "cpu/tiny-gpt2/cb2"]
    assert sorted(manifest["cells"]) == [f"cpu/tiny-gpt2/{c}" for c in ("bs1", "bs2", "cb2")]
    assert _cell_bytes(fresh, ["cpu/tiny-gpt2/bs1"]) == kept
    assert (fresh / "results/default/cells/cpu/tiny-gpt2/probe.json").read_bytes() == probe
    # which commit measured each cell: the restored ones A, the new ones B (the clone's HEAD)
    commits = {
        c: json.loads((fresh / f"results/default/cells/cpu/tiny-gpt2/{c}/meta.json").read_text())[
            "git_commit"
        ]
        for c in ("bs1", "bs2", "cb2")
    }
    assert commits == {"bs1": commit_a, "bs2": commit_b, "cb2": commit_b}
    assert {c: e["git_commit"] for c, e in manifest["cells"].items()} == {
        f"cpu/tiny-gpt2/{c}": commit for c, commit in commits.items()
    }


# Snakemake 9.27.1's output while running two cell jobs, the first finished (input lists shortened)
RUN_LOG = """\
[Tue Dec  8 03:16:35 2026]
localrule run_cell:
    input: results/default/engines/cpu/tiny-gpt2/torch/manifest.json, workflow/tokencarbon/units.py
    output: results/default/cells/cpu/tiny-gpt2/bs2/batches.parquet, results/default/cells/cpu/tiny-gpt2/bs2/power.parquet, results/default/cells/cpu/tiny-gpt2/bs2/meta.json
    log: results/default/logs/run_cell/cpu/tiny-gpt2/bs2.log
    jobid: 2
    reason: Missing output files: results/default/cells/cpu/tiny-gpt2/bs2/meta.json
    wildcards: platform=cpu, model=tiny-gpt2, batch=2
    resources: tmpdir=/tmp, gpu=0
[tokencarbon] cpu/tiny-gpt2/bs2: repeat 1/1 done: 20 output tokens in 0.4 s (50.0 tok/s)
[Tue Dec  8 03:18:18 2026]
Finished jobid: 2 (Rule: run_cell)
1 of 2 steps (50%) done
Select jobs to execute...
Execute 1 jobs...

[Tue Dec  8 03:18:19 2026]
localrule run_cell:
    input: results/default/engines/cpu/tiny-gpt2/torch/manifest.json, workflow/tokencarbon/units.py
    output: results/default/cells/cpu/tiny-gpt2/bs4/batches.parquet, results/default/cells/cpu/tiny-gpt2/bs4/power.parquet, results/default/cells/cpu/tiny-gpt2/bs4/meta.json
    log: results/default/logs/run_cell/cpu/tiny-gpt2/bs4.log
    jobid: 1
    reason: Missing output files: results/default/cells/cpu/tiny-gpt2/bs4/meta.json
"""


def test_a_cell_is_packed_once_snakemake_reports_its_job_finished():
    # bs2's job is reported finished (its process exited, its outputs checked); bs4's is running,
    # even if its meta.json were already there
    done = chunks.finished_outputs(RUN_LOG)
    assert done == {f"results/default/cells/cpu/tiny-gpt2/bs2/{f}"
                    for f in ("batches.parquet", "power.parquet", "meta.json")}  # fmt: skip
    assert chunks.finished_outputs("") == set()


def test_finished_cells_measured_under_another_repeat_count_are_named(tmp_path):
    # The first H100 chunks ran every cell once while the config asked 3 at the sweep's ends: the
    # runner keeps such cells and names them (with the count each ran and the config's)
    done = [_cell("h100", "llama-2-7b", mode, n)
            for mode, n in [("static", 1), ("static", 2), ("static", 4), ("continuous", 4)]]
    ran = {"h100/llama-2-7b/bs1": 1, "h100/llama-2-7b/bs2": 1, "h100/llama-2-7b/cb4": 3}
    for name, r in ran.items():
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "meta.json").write_text(json.dumps({"repeats": r}))
    (tmp_path / "h100/llama-2-7b/bs4").mkdir(parents=True)
    (tmp_path / "h100/llama-2-7b/bs4/meta.json").write_text("{}")  # before repeats: ran once
    wanted = {"h100/llama-2-7b/bs1": 3, "h100/llama-2-7b/bs2": 1, "h100/llama-2-7b/bs4": 3,
              "h100/llama-2-7b/cb4": 3}  # fmt: skip
    assert chunks.other_repeats(done, wanted, tmp_path) == [
        "h100/llama-2-7b/bs1 (ran 1, config 3)", "h100/llama-2-7b/bs4 (ran 1, config 3)"]


def test_sweeps_measured_on_several_cards_are_named(tmp_path):
    # gpt2 bs2 ran on one H100 (idle 114 W), bs1 and bs4 on another (124-132 W): the sweep is named
    # with each card's cells; llama's sweep (one card) and a CPU cell (no UUID) are not
    def meta(name, uuid):
        (tmp_path / name).mkdir(parents=True)
        gpu = {"gpu": {"uuid": uuid}} if uuid else {}
        (tmp_path / name / "meta.json").write_text(json.dumps({"hardware": gpu}))

    done = [_cell("h100", "gpt2", "static", n) for n in (1, 2, 4)]
    done += [_cell("h100", "llama-2-7b", "static", n) for n in (1, 2)]
    done += [_cell("cpu", "tiny", "static", 1), _cell("h100", "gpt2", "continuous", 1)]
    for name, uuid in [("h100/gpt2/bs1", "GPU-aa-7901c5"), ("h100/gpt2/bs2", "GPU-bb-480db6"),
                       ("h100/gpt2/bs4", "GPU-aa-7901c5"), ("h100/llama-2-7b/bs1", "GPU-bb-480db6"),
                       ("h100/llama-2-7b/bs2", "GPU-bb-480db6"), ("cpu/tiny/bs1", None),
                       ("h100/gpt2/cb1", "GPU-bb-480db6")]:  # fmt: skip
        meta(name, uuid)
    assert chunks.sweeps_on_several_cards(done, tmp_path) == [
        "h100/gpt2 static: 2 cards (...7901c5: bs1, bs4; ...480db6: bs2)"]


@pytest.mark.slow
def test_a_cell_too_long_for_a_call_runs_alone_with_fewer_repeats_and_is_kept_so(tmp_path):
    # docs/chunks.md's recipe for the Llama batch-1 cells that need 3.5-6.3 min a repeat (three do
    # not fit a 10-minute call): --target the cell's meta.json with --config run='{...: 1}'. Only
    # that cell runs, once; a later plain run measures the rest at the config's repeats, keeps it
    # byte for byte and names it as measured under another count.
    config = {**TINY, "sweep": {"batch_sizes": [1, 2], "max_num_seqs": []},
              "run": {"repeats": 1, "repeats_at_ends": 2}}  # fmt: skip
    repo = _committed_repo(tmp_path / "repo", config)
    cells = repo / "results/default/cells/cpu/tiny-gpt2"
    alone = [*RUN, "--target", "results/default/cells/cpu/tiny-gpt2/bs1/meta.json",
             "--config", 'run={"repeats": 1, "repeats_at_ends": 1}']  # fmt: skip
    first = subprocess.run(alone, cwd=repo, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-4000:]
    manifest = json.loads((repo / "benchmarks/results/paper-cpu/manifest.json").read_text())
    assert manifest["runs"][-1]["measured"] == ["cpu/tiny-gpt2/bs1"]
    assert json.loads((cells / "bs1/meta.json").read_text())["repeats"] == 1
    assert not (cells / "bs2").exists()
    kept = _cell_bytes(repo, ["cpu/tiny-gpt2/bs1"])

    rest = subprocess.run(RUN, cwd=repo, capture_output=True, text=True, timeout=600)
    assert rest.returncode == 0, rest.stdout[-3000:] + rest.stderr[-4000:]
    manifest = json.loads((repo / "benchmarks/results/paper-cpu/manifest.json").read_text())
    assert manifest["runs"][-1]["measured"] == ["cpu/tiny-gpt2/bs2"]
    assert json.loads((cells / "bs2/meta.json").read_text())["repeats"] == 2
    assert _cell_bytes(repo, ["cpu/tiny-gpt2/bs1"]) == kept
    assert "cpu/tiny-gpt2/bs1 (ran 1, config 2)" in rest.stdout + rest.stderr


@pytest.mark.slow
def test_a_cell_longer_than_the_budget_runs_in_parts_over_chunks_on_one_machine(tmp_path):
    # The runner gives each cell job the budget's end as its deadline (tokencarbon.parts): a job
    # starts a repeat only while it would end by then, keeps its finished repeats otherwise, and
    # the next chunk on the same machine with the same code measures the rest. Here no record
    # gives an estimate (--records of an empty folder: every cell starts) and the budget is spent
    # by the setup, so chunks 1 and 2 each measure one repeat of bs1's three; chunk 3 (a budget
    # to spare) measures the third and packs the cell.
    config = {**TINY, "sweep": {"batch_sizes": [1], "max_num_seqs": []},
              "run": {"repeats": 3, "repeats_at_ends": 3}}  # fmt: skip
    repo = _committed_repo(tmp_path / "repo", config)
    (tmp_path / "no-records").mkdir()
    short = [*RUN, "--records", str(tmp_path / "no-records"), "--budget", "1s"]
    cell = repo / "results/default/cells/cpu/tiny-gpt2/bs1"
    manifest = repo / "benchmarks/results/paper-cpu/manifest.json"
    for chunk in (1, 2):
        done = subprocess.run(short, cwd=repo, capture_output=True, text=True, timeout=600)
        text = done.stdout[-3000:] + done.stderr[-4000:]
        assert done.returncode == 0, text
        assert f"cpu/tiny-gpt2/bs1: {chunk} of 3 repeats kept (" in text, text
        assert "FAILED" not in text
        run = json.loads(manifest.read_text())["runs"][-1]
        assert run["partial"] == {"cpu/tiny-gpt2/bs1": chunk} and run["left"] == ["cpu/tiny-gpt2/bs1"]
        assert run["measured"] == [] and not (cell / "meta.json").exists()
        assert sorted(p.name for p in (cell / ".parts").iterdir()) == [
            f"part-{k}" for k in range(chunk)]
    done = subprocess.run(RUN, cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    packed = json.loads(manifest.read_text())
    assert packed["runs"][-1]["measured"] == ["cpu/tiny-gpt2/bs1"]
    assert "cpu/tiny-gpt2/bs1" in packed["cells"]
    meta = json.loads((cell / "meta.json").read_text())
    assert meta["repeats"] == 3 and [p["repeats"] for p in meta["parts"]] == [[0], [1], [2]]
    assert {p["git_commit"] for p in meta["parts"]} == {_git(repo, "rev-parse", "HEAD")}
    assert not (cell / ".parts").exists()
    batches = pd.read_parquet(cell / "batches.parquet")
    # 2 prompts at batch 1: 2 windows a repeat
    assert batches["repeat"].tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.slow
def test_small_cells_share_one_snakemake_call_and_a_stop_keeps_the_finished_ones(tmp_path):
    # bs1, bs2 and cb2 of the tiny grid, each expected well under GROUP_CELL_S, go to one
    # Snakemake call (one job at a time); each is packed as soon as its meta.json is there. SIGINT
    # once one is packed: the finished one is kept, the others discarded; the next chunk measures
    # exactly those two, again in one call.
    # idle windows of 3 s: a cell lasts several seconds after the one before it is packed
    config = {**TINY, "power": {"interval_s": 0.05, "idle_s": 3.0}}
    repo = _committed_repo(tmp_path / "repo", config)
    manifest = repo / "benchmarks/results/paper-cpu/manifest.json"
    grid = {f"cpu/tiny-gpt2/{c}" for c in ("bs1", "bs2", "cb2")}
    growing = repo / "results/chunks/paper-cpu/manifest.json"  # the run's own pack, saved per cell

    def packed(path=manifest):
        return set(json.loads(path.read_text())["cells"]) if path.exists() else set()

    with open(tmp_path / "first.log", "w") as out:
        proc = subprocess.Popen(RUN, cwd=repo, stdout=out, stderr=subprocess.STDOUT)
    log = lambda: (tmp_path / "first.log").read_text()  # noqa: E731
    deadline = time.time() + 420
    while not packed(growing):
        assert proc.poll() is None and time.time() < deadline, log()[-4000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=180) == chunks.EXIT_INTERRUPTED, log()[-4000:]
    assert "one Snakemake call for 3 cells" in log(), log()[-4000:]
    first = packed()
    assert len(first) == 1 and first < grid, log()[-4000:]
    for name in grid - first:
        cell = repo / "results/default/cells" / name
        assert not any((cell / f).exists() for f in ("meta.json", "batches.parquet", "power.parquet"))
    kept = _cell_bytes(repo, sorted(first))
    done = subprocess.run(RUN, cwd=repo, capture_output=True, text=True, timeout=600)
    text = done.stdout[-3000:] + done.stderr[-4000:]
    assert done.returncode == 0, text
    assert "one Snakemake call for 2 cells" in text, text
    record = json.loads(manifest.read_text())
    assert set(record["runs"][-1]["measured"]) == grid - first and packed() == grid
    assert _cell_bytes(repo, sorted(first)) == kept
    # each cell's seconds: the call's, from the cell finished before it; together the call's
    seconds = [record["cells"][c]["seconds"] for c in record["runs"][-1]["measured"]]
    assert all(s > 0 for s in seconds)
