"""The workflow run by Snakemake itself in a temporary directory: what reruns after a config change,
what one figure target builds, and a cell killed mid-run. Marked slow; run by `make test`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from harness import REPO, SNAKEMAKE, Project, study_config, tiny_study
from helpers import gpu_present

pytestmark = pytest.mark.slow

# The tiny CPU study (.test/config-cpu): three tiny models, static batches 1 and 2, continuous
# max_num_seqs 2, each cell repeated 3 times; `built` is its run, shared with test_figures.py.
MODELS = ["tiny-gpt2", "tiny-llama", "tiny-llama-int8"]
# The default config's cpu platform (config/config.yaml): this CPU's peaks measured, 2 logical CPUs,
# an assumed TDP share; the cpu row alone describes only an AMD EPYC 7763.
MEASURED_CPU = study_config("cpu")["platforms"]["cpu"]["spec"]


def snakemake(project: Project, *args: str, timeout: int = 600):
    return project.run(*args, timeout=timeout)


def planned_jobs(project: Project, *args: str) -> dict[str, int]:
    return project.planned_jobs(*args)


def planned_outputs(project: Project, pattern: str, *args: str) -> set[str]:
    return project.planned_outputs(pattern, *args)


def write_config(project: Project, name: str, edit) -> str:
    return project.write_config(name, edit)


def make_project(tmp: Path, config: dict) -> Project:
    return Project.make(tmp / "p", config)


CELL_OUT = r"results/cells/cpu/([\w-]+)/bs\d+/batches.parquet"
ENGINE_OUT = r"results/engines/cpu/([\w-]+)/torch/manifest.json"


@pytest.fixture(scope="module")
def built(tiny_run) -> Project:
    return tiny_run


def test_all_builds_every_table_and_figure(built):
    cells = pd.read_parquet(built / "results/tables/cells.parquet")
    # 3 models x (static batch sizes [1, 2] + continuous max_num_seqs [2]) on one platform = 9 cells
    assert sorted(zip(cells.model, cells["mode"], cells.batch_size)) == [
        (m, mode, n) for m in MODELS for mode, n in [("continuous", 2), ("static", 1), ("static", 2)]
    ]
    batches = pd.read_parquet(built / "results/tables/batches.parquet")
    # 4 prompts: 4 batches at bs1, 2 at bs2, and one row (the request set) for cb2, per model and
    # repeat: 3 models x 3 repeats x 7
    assert len(batches) == 3 * 3 * (4 + 2 + 1)
    requests = pd.read_parquet(built / "results/tables/requests.parquet")
    assert len(requests) == 3 * 3 * 4  # every prompt once per continuous cell and repeat
    for fig in ["fig1_flops_vs_seqlen", "fig4a_throughput_latency", "fig6c_power_over_time", "fig7_carbon_per_token"]:
        assert (built / f"results/figures/{fig}.png").stat().st_size > 10_000
    assert "tiny-llama" in (built / "results/summary.md").read_text()


def test_nothing_to_do_when_nothing_changed(built):
    assert planned_jobs(built, "all") == {}


def test_changing_carbon_intensity_reruns_no_cell_probe_or_engine(built):
    jobs = planned_jobs(built, "all", "--config", 'carbon={"intensity_g_per_kwh": 250}')
    assert jobs.get("compute_metrics") == 1
    for rule in ["run_cell", "run_continuous_cell", "probe_max_batch", "build_torch_engine",
                 "aggregate_cells", "filter_sharegpt"]:  # fmt: skip
        assert rule not in jobs, jobs


def test_serving_changes_rerun_only_continuous_cells(built):
    jobs = planned_jobs(built, "all", "--config", 'serving={"arrival": "poisson", "request_rate_per_s": 50}')
    assert jobs["run_continuous_cell"] == 3 and "run_cell" not in jobs, jobs
    cells = planned_outputs(built, r"results/cells/cpu/([\w-]+/\w+)/batches.parquet", "all", "--config",
                            'serving={"arrival": "poisson", "request_rate_per_s": 50}')  # fmt: skip
    assert cells == {f"{m}/cb2" for m in MODELS}


def test_adding_continuous_cells_reruns_no_cell(built):
    variant = write_config(built, "more_cb.yaml", lambda c: c["sweep"].update(max_num_seqs=[2, 4]))
    cells = planned_outputs(built, r"results/cells/cpu/([\w-]+/\w+)/batches.parquet", "all", "--configfile", variant)
    assert cells == {f"{m}/cb4" for m in MODELS}


def test_other_repeats_rerun_every_cell_and_nothing_before_them(built):
    # (run.repeats 1, the default, is no param at all: tests/test_plan.py, so that cells measured
    # before repeats existed are not rerun by it)
    variant = write_config(built, "repeats2.yaml", lambda c: c.update(run={"repeats": 2}))
    jobs = planned_jobs(built, "all", "--configfile", variant)
    assert jobs["run_cell"] == 6 and jobs["run_continuous_cell"] == 3
    assert "build_torch_engine" not in jobs and "sample_workload" not in jobs


def test_adding_one_batch_size_runs_exactly_one_new_cell(built):
    # One model, so one new batch size is one new cell (dropping a model from the config reruns
    # nothing of the other: its cells' params are its own slice).
    def one_model_one_more_batch(config):
        del config["models"]["tiny-gpt2"], config["models"]["tiny-llama-int8"]
        config["sweep"]["batch_sizes"] = [1, 2, 3]

    variant = write_config(built, "one_more.yaml", one_model_one_more_batch)
    cells = planned_outputs(built, r"(results/cells/\S+)/batches.parquet", "all", "--configfile", variant)
    assert cells == {"results/test-cpu/cells/cpu/tiny-llama/bs3"}  # .test/config-cpu's study
    jobs = planned_jobs(built, "all", "--configfile", variant)
    assert jobs["run_cell"] == 1
    assert "build_torch_engine" not in jobs and "probe_max_batch" not in jobs


def test_changing_one_models_dtype_reruns_only_that_model(built):
    variant = write_config(built, "other.yaml", lambda c: c["models"]["tiny-gpt2"].update(dtype="bfloat16"))
    args = ("all", "--configfile", variant)
    assert planned_outputs(built, CELL_OUT, *args) == {"tiny-gpt2"}
    assert planned_outputs(built, ENGINE_OUT, *args) == {"tiny-gpt2"}


def test_quantizing_one_model_reruns_only_that_model_and_none_keeps_every_job(built):
    # models.<name>.quantization enters the model's slice (config.model_slice) only where set: an
    # explicit none plans nothing; int8 re-plans that model's engine, probe and cells alone.
    none = write_config(built, "none.yaml", lambda c: c["models"]["tiny-llama"].update(quantization="none"))
    assert planned_jobs(built, "all", "--configfile", none) == {}
    int8 = write_config(
        built, "int8.yaml", lambda c: c["models"]["tiny-llama"].update(quantization="int8_weight_only")
    )
    args = ("all", "--configfile", int8)
    assert planned_outputs(built, CELL_OUT, *args) == {"tiny-llama"}
    assert planned_outputs(built, ENGINE_OUT, *args) == {"tiny-llama"}


def test_one_figure_target_builds_only_its_upstream(built, tmp_path):
    project = make_project(tmp_path, tiny_study())
    jobs = planned_jobs(project, "results/figures/fig2b_gpu_generations.png")
    assert jobs == {"plot_fig2b": 1}  # analytic: no workload, no cell
    jobs = planned_jobs(project, "results/figures/fig7_carbon_per_token.png")
    assert jobs["run_cell"] == 6 and jobs["compute_metrics"] == 1 and jobs["plot_fig7"] == 1
    for unrelated in ["plot_fig1", "plot_fig5", "tabulate_table3", "summarize_headlines"]:
        assert unrelated not in jobs


def test_auto_sweep_reads_the_probe(tmp_path):
    config = tiny_study(models=["tiny-llama"], run={"repeats": 1},
                        sweep={"batch_sizes": "auto", "max_batch": 4, "max_num_seqs": "auto"})
    project = make_project(tmp_path, config)
    snakemake(project, "results/tables/cells.parquet")
    probe = yaml.safe_load((project / "results/cells/cpu/tiny-llama/probe.json").read_text())
    assert probe["max_ok"] == 4 and probe["min_failed"] is None  # the 0.06 GB cap admits 4 at these lengths
    # the continuous sweep searched up to min(max_batch 4, num_prompts 4) = 4
    assert probe["max_num_seqs_limit"] == 4 and 1 <= probe["max_num_seqs_ok"] <= 4
    cells = pd.read_parquet(project / "results/tables/cells.parquet")
    assert sorted(cells.loc[cells["mode"] == "static", "batch_size"]) == [1, 2, 4]
    # powers of two up to the probe's max_num_seqs_ok, plus it
    top = probe["max_num_seqs_ok"]
    expected = sorted({2**k for k in range(3) if 2**k <= top} | {top})
    assert sorted(cells.loc[cells["mode"] == "continuous", "batch_size"]) == expected


def test_a_capped_variant_of_a_platform_is_its_own_column_of_cells_and_probes(tmp_path):
    # The study's Table 4 (max batch with and without a 40 GB cap) on one card: platform cpu and
    # cpu-30mb, the same row of resources/platforms.csv (`hardware: cpu`) capped at 0.03 GB. Peaks
    # given in config (this CPU is not the cpu row's EPYC), so no measurement runs.
    spec = {"logical_cpus": 2, "tdp_w": 4.375, "peak_tflops_fp32": 0.25, "memory_gb_per_s": 40.0}
    platforms = {"cpu": {"memory_limit_gb": 0.06, "spec": spec},
                 "cpu-30mb": {"hardware": "cpu", "memory_limit_gb": 0.03, "spec": spec}}  # fmt: skip
    config = tiny_study(models=["tiny-llama"]) | {"platforms": platforms}
    project = make_project(tmp_path, config)
    cells = planned_outputs(project, r"results/cells/([\w-]+)/tiny-llama/bs\d+/batches.parquet", "all")
    assert cells == {"cpu", "cpu-30mb"}  # each platform's cells under its own name
    snakemake(project, *(f"results/cells/{p}/tiny-llama/probe.json" for p in platforms))
    whole, capped = (json.loads((project / f"results/cells/{p}/tiny-llama/probe.json").read_text())
                     for p in platforms)  # fmt: skip
    # tiny-llama in float32 (resources/models/tiny-llama.json): embeddings and head 2 x 4096 x 256,
    # per layer q,o 256 x 256, k,v 256 x 128, gate,up,down 256 x 688, two norms of 256; four layers
    # and a final norm: 2,097,152 + 4 x 725,504 + 256 = 4,999,424 parameters x 4 B = 19,997,696 B.
    assert whole["weight_bytes"] == capped["weight_bytes"] == 19_997_696
    assert (whole["platform"], whole["memory_limit_gb"]) == ("cpu", 0.06)
    assert (capped["platform"], capped["memory_limit_gb"]) == ("cpu-30mb", 0.03)
    # per sequence the same bytes on both: the capped budget (30 MB less the weights, 10.0 MB)
    # is a quarter of the whole one's (40.0 MB), so it admits fewer sequences
    assert 1 <= capped["max_ok"] < whole["max_ok"]


def test_killed_cell_is_rerun_cleanly(tmp_path):
    config = tiny_study(models=["tiny-llama"], workload={"num_prompts": 24, "synthetic_conversations": 2000},
                        power={"idle_s": 0.1}, run={"repeats": 1})
    project = make_project(tmp_path, config)
    cell = project / "results/cells/cpu/tiny-llama/bs1"
    snakemake(project, "results/workload/tiny-llama.parquet", "results/engines/cpu/tiny-llama/torch/manifest.json")
    proc = subprocess.Popen(
        SNAKEMAKE + ["--cores", "1", str(cell.relative_to(project) / "meta.json")],
        cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 120
    while not list(cell.glob(".power.parquet.parts/part-*.parquet")):  # mid-run: samples flowing
        assert proc.poll() is None and time.time() < deadline, "the cell ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for name in ["batches.parquet", "power.parquet", "meta.json"]:
        assert not (cell / name).exists(), f"{name} of a killed cell looks finished"
    # What a user does after a killed run: release Snakemake's lock, then run again; the profile's
    # rerun-incomplete reruns the cell Snakemake had marked as started.
    snakemake(project, "--unlock")
    snakemake(project, str(cell.relative_to(project) / "meta.json"))
    meta = yaml.safe_load((cell / "meta.json").read_text())
    assert meta["n_batches"] == 24 and not (cell / ".power.parquet.parts").exists()


def dag_jobs(project: Path, *targets: str) -> dict[str, int]:
    """Jobs by rule in Snakemake's --dag (the DAG without an executor: no hardware check, so a GPU
    platform's DAG can be looked at on this CPU machine)."""
    out = snakemake(project, "--dag", "dot", *targets).stdout
    rules = re.findall(r'\[label = "(\w+)', out)
    return {r: rules.count(r) for r in set(rules)}


# TensorRT-LLM runs on GPUs only: its DAG on an H100 platform, read without running anything.
TRT = tiny_study(models=["tiny-gpt2", "tiny-llama"], backend={"name": "tensorrt_llm"},
                 sweep={"max_num_seqs": []}) | {"platforms": {"h100-sxm-80gb": {}}}  # fmt: skip


def test_tensorrt_llm_backend_selects_its_engine_rule(tmp_path):
    project = make_project(tmp_path, TRT)
    jobs = dag_jobs(project, "results/engines/h100-sxm-80gb/tiny-llama/tensorrt_llm/manifest.json")
    assert jobs == {"build_trtllm_engine": 1}
    out = snakemake(project, "--dag", "dot", "results/tables/cells.parquet").stdout
    assert "build_trtllm_engine" in out and "build_torch_engine" not in out


def test_tensorrt_llm_all_needs_no_torch_probe(tmp_path):
    # The probe drives the torch backend: with TensorRT-LLM, `all` plans no probe and no max-batch
    # tables (their source), but every cell, figure and the summary.
    jobs = dag_jobs(make_project(tmp_path, TRT), "all")
    assert "probe_max_batch" not in jobs
    assert "tabulate_table3" not in jobs and "tabulate_table4" not in jobs
    n_cells = len(TRT["models"]) * len(TRT["sweep"]["batch_sizes"])
    assert jobs["run_cell"] == n_cells and jobs["summarize_headlines"] == 1


def test_a_gpu_platform_is_refused_by_a_dry_run_here(tmp_path):
    if gpu_present():
        pytest.skip("a GPU is visible here")
    proc = subprocess.run(SNAKEMAKE + ["--cores", "1", "--dry-run", "all"], cwd=make_project(tmp_path, TRT),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0 and "platforms.h100-sxm-80gb: needs a GPU" in proc.stdout + proc.stderr


def test_bad_source_fails_its_job_and_leaves_no_output(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "x", "conversations": [{"from": "human"}]}]')  # a turn without "value"
    (tmp_path / "p").mkdir()
    project = make_project(tmp_path / "p", tiny_study(workload={"source": str(bad)}))
    pool = project.in_study("results/dataset/tiny.parquet")
    proc = subprocess.run(SNAKEMAKE + ["--cores", "1", pool], cwd=project,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    # The builtin tokenizer learns the source's text, so its job is the first to read the file.
    log = (project / "logs/train_tokenizer.log").read_text()
    assert str(bad) in log and "value" in log
    assert not list((project / "results").rglob("*.parquet"))
    assert not (project / "results/tokenizer/builtin").exists()


def test_cells_measured_elsewhere_merge_without_rerunning(built, tmp_path):
    # Another machine's cells (here: `built`'s) copied in, their platform marked import_only, with
    # that machine's measured peaks (results/platforms/cpu/spec.json) and its TDP and CPUs in spec.
    spec = {"tdp_w": MEASURED_CPU["tdp_w"], "logical_cpus": MEASURED_CPU["logical_cpus"]}
    config = tiny_study() | {"platforms": {"cpu": {"import_only": True, "spec": spec}}}
    project = make_project(tmp_path, config)
    shutil.copytree(built / "results/cells", project / "results/cells")
    if built_on_the_cpu_row(built):
        return  # the EPYC the row describes needs no measurement; the rest is for any other CPU
    # Without the measurement the copied cells' CPU is not described: refused at DAG build,
    # naming the device and what to copy.
    proc = subprocess.run(SNAKEMAKE + ["--cores", "1", "--dry-run", "all"], cwd=project,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert f"platforms.cpu: its copied cells ({project.in_study('results')}/cells/cpu/) ran on" in out
    assert "spec.json" in out
    shutil.copytree(built / "results/platforms", project / "results/platforms")
    jobs = planned_jobs(project, "all")
    for rule in ["run_cell", "probe_max_batch", "build_torch_engine", "measure_platform"]:
        assert rule not in jobs, jobs
    assert jobs["aggregate_cells"] == 1 and jobs["compute_metrics"] == 1
    snakemake(project, "all")
    here = pd.read_parquet(project / "results/tables/cells.parquet")
    there = pd.read_parquet(built / "results/tables/cells.parquet")
    pd.testing.assert_frame_equal(here, there)
    # the same peaks, labelled alike: MFU, MBU and spec_source equal the measuring machine's
    cols = ["model", "mode", "batch_size", "mfu", "mbu", "spec_source", "qa_flags"]
    here = pd.read_parquet(project / "results/tables/metrics.parquet")[cols]
    there = pd.read_parquet(built / "results/tables/metrics.parquet")[cols]
    pd.testing.assert_frame_equal(here, there)


def built_on_the_cpu_row(project: Path) -> bool:
    """Whether the cells were measured on the CPU resources/platforms.csv's cpu row describes."""
    cells = pd.read_parquet(project / "results/tables/cells.parquet")
    return bool(cells.device_name.eq("AMD EPYC 7763 64-Core Processor").all())


def test_an_imported_platform_without_cells_is_a_clear_error(tmp_path):
    project = make_project(tmp_path, tiny_study() | {"platforms": {"cpu": {"import_only": True}}})
    proc = subprocess.run(SNAKEMAKE + ["--cores", "1", "--dry-run", "all"], cwd=project,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "platforms.cpu.import_only: no cells of" in proc.stdout + proc.stderr


def test_dtype_change_under_auto_sweep_reruns_only_that_models_probe(tmp_path):
    config = tiny_study(models=["tiny-gpt2", "tiny-llama"], run={"repeats": 1})
    project = make_project(tmp_path, config | {"sweep": {"batch_sizes": "auto", "max_batch": 2}})
    snakemake(project, "results/tables/cells.parquet")
    variant = write_config(project, "changed.yaml", lambda c: c["models"]["tiny-llama"].update(dtype="bfloat16"))
    args = ("results/tables/cells.parquet", "--configfile", variant)
    assert planned_outputs(project, r"results/cells/cpu/([\w-]+)/probe.json", *args) == {"tiny-llama"}
    assert planned_outputs(project, ENGINE_OUT, *args) == {"tiny-llama"}


def readme_config(heading: str) -> str:
    """The first ```yaml block after the line of config/README.md starting with `heading`."""
    text = (REPO / "config/README.md").read_text()
    after = text[text.index("\n" + heading) :]
    return after.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_your_own_checkpoint_runs_the_whole_dag_on_the_first_try(tmp_path):
    # issue 11: a checkpoint directory ./my-model plus config/README.md's "Your own model" config,
    # run exactly as written there (read from the README, so the doc cannot drift from what runs):
    # transformers backend, `architecture: auto`, the checkpoint's own tokenizer. The checkpoint is
    # saved here with transformers; its tokenizer is a byte-level BPE (vocabulary 4096, the
    # model's) trained on the synthetic corpus and saved into the same folder, as a hub download has.
    from tiny_checkpoints import save_checkpoint

    from tokencarbon.synthetic import synthetic_conversations
    from tokencarbon.tokenizer import train_builtin_tokenizer

    project = make_project(tmp_path, tiny_study())  # config/config.yaml unused: --configfile replaces it
    ckpt = save_checkpoint(project / "my-model", "llama", vocab_size=4096, max_position_embeddings=512)
    texts = (t["value"] for c in synthetic_conversations(600, seed=1) for t in c["conversations"])
    train_builtin_tokenizer(texts, 4096, tmp_path / "tok")
    for f in (tmp_path / "tok").iterdir():
        shutil.copy(f, ckpt / f.name)
    (project / "my-model.yaml").write_text(readme_config("Your own model"))
    snakemake(project, "all", "--configfile", "my-model.yaml", timeout=1200)
    # its own study folder (the block's `study`), beside nothing of config/config.yaml's study
    out = project.path / "results/my-model"
    assert {p.name for p in (project.path / "results").iterdir()} - {".cache"} == {"my-model"}
    manifest = yaml.safe_load((out / "engines/cpu/my-model/transformers/manifest.json").read_text())
    # tiny_checkpoints.LLAMA_SHAPE with vocab 4096, by hand: per layer q 64x64 + k, v 64x32 each +
    # o 64x64 = 12,288, MLP 3 x 64 x 96 = 18,432, 2 norms x 64 -> 30,848; x 2 layers = 61,696;
    # final norm 64; embedding and untied head 2 x 4096 x 64 = 524,288. Total 586,048.
    assert manifest["param_count"] == 586_048
    assert manifest["architecture"]["hidden_size"] == 64 and manifest["architecture"]["num_kv_heads"] == 2
    metrics = pd.read_parquet(out / "tables/metrics.parquet")
    assert sorted(metrics.batch_size) == [1, 4] and set(metrics.model) == {"my-model"}
    assert (metrics.j_per_token > 0).all()
    # 16 prompts (the README's num_prompts) served in each cell, none lost
    cells = pd.read_parquet(out / "tables/cells.parquet")
    assert (cells.n_requests == 16).all()
    assert (out / "summary.md").is_file()
    # issue 10 §4: this CPU described by the README's spec, every number labelled where it came from
    assert set(metrics.spec_source) == {
        "datasheet; row of another device (cpu): memory_gb, embodied_kg_co2e, embodied_kg_co2e_high, "
        "lifetime_years; measured: peak_tflops_fp32, peak_tflops_fp16, peak_tflops_bf16, "
        "memory_gb_per_s; config: tdp_w, logical_cpus"
    } or cells.device_name.eq("AMD EPYC 7763 64-Core Processor").all()
    measured = yaml.safe_load((out / "platforms/cpu/spec.json").read_text())
    assert measured["device_name"] == cells.device_name.iloc[0] and measured["logical_cpus"] == 2
    # measuring again reruns metrics and what reads them, never a cell
    jobs = planned_jobs(project, "all", "--configfile", "my-model.yaml", "--forcerun", "measure_platform")
    assert jobs["measure_platform"] == 1 and jobs["compute_metrics"] == 1
    assert not {"run_cell", "run_continuous_cell", "build_transformers_engine"} & set(jobs), jobs


def test_trace_day_with_a_constant_intensity_draws_figure_6a(tmp_path):
    # issue 10 §5: trace_day set with source constant crashed figure 6a (a TypeError in render),
    # so `all` failed. The constant is drawn over that day; no cell is needed for it.
    project = make_project(tmp_path, tiny_study(carbon={"source": "constant", "trace_day": "2023-07-15"}))
    target = "results/figures/fig6a_intensity_day.png"
    assert planned_jobs(project, target) == {"plot_fig6a": 1}
    snakemake(project, target)
    assert (project / target).stat().st_size > 10_000


def test_correcting_a_spec_number_only_metrics_read_reruns_no_cell(built):
    # issue 21: cells took the whole platforms.<name>.spec as params, so correcting a number only
    # metrics read (a bandwidth, the lifetime) re-measured every cell. Now only metrics and what
    # follows replan; the TDP a cpu cell models its power with reruns the cells.
    def spec(**numbers):
        return lambda c: c["platforms"]["cpu"]["spec"].update(numbers)

    for name, edit in [("bw.yaml", spec(memory_gb_per_s=51.0)), ("life.yaml", spec(lifetime_years=4))]:
        jobs = planned_jobs(built, "all", "--configfile", write_config(built, name, edit))
        assert jobs.get("compute_metrics") == 1, jobs
        for rule in ["run_cell", "run_continuous_cell", "probe_max_batch", "measure_platform",
                     "build_torch_engine", "aggregate_cells", "sample_workload"]:  # fmt: skip
            assert rule not in jobs, (name, jobs)
    jobs = planned_jobs(built, "all", "--configfile", write_config(built, "tdp.yaml", spec(tdp_w=5.0)))
    assert jobs["run_cell"] == 6 and jobs["run_continuous_cell"] == 3
