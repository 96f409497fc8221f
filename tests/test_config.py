"""Config validation: the schema's shape, its rejections with the key path, and name checks."""

import copy
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from harness import Project
from helpers import gpu_present
from tiny_checkpoints import save_checkpoint

from tokencarbon.config import check_config, check_hardware, coerce_cli_strings, load_yaml_strict
from tokencarbon.plan import auto_batch_sizes, model_slice, platform_slice, probe_platform_slice
from tokencarbon.errors import ConfigError, HardwareMismatchError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())


def _walk(schema, path=""):
    """Yield (key path, subschema) for every property the schema defines."""
    for key, sub in schema.get("properties", {}).items():
        yield f"{path}{key}", sub
        yield from _walk(sub, f"{path}{key}.")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _walk(extra, f"{path}<name>.")


# Keys with no default on purpose: a platform's spec overrides (absent = the row's value) and its
# `imported` section (absent = measured here), and backend.openai_server (required with that
# backend only; its own keys and defaults are in workflow/schemas/openai_server.schema.yaml);
# their descriptions say so.
NO_DEFAULT = re.compile(r"^(platforms\.<name>\.(spec\.\w+|imported)|backend\.openai_server)$")


def test_every_key_has_description_and_default_and_objects_are_closed():
    keys = list(_walk(SCHEMA))
    assert len(keys) > 80  # the schema really was walked (it has 87 keys today)
    for path, sub in keys:
        assert "description" in sub, path
        assert "default" in sub or NO_DEFAULT.match(path), path
        if sub.get("type") == "object" and "properties" in sub:
            assert sub.get("additionalProperties") is False, path


def test_config_readme_explains_every_key():
    readme = (REPO / "config/README.md").read_text()
    for path, _ in _walk(SCHEMA):
        leaf = path.rsplit(".", 1)[-1]
        if leaf != "<name>":
            # leaves appear as `key` in a table, sections as a `section` or `section.<name>` heading
            assert f"`{leaf}`" in readme or f"`{leaf}.<name>`" in readme, f"config/README.md does not explain {path}"


def _validated(name: str) -> dict:
    """Validate a config file the way the workflow does (snakemake.utils.validate, defaults set)."""
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config" / name).read_text())
    validate(config, schema=str(REPO / "workflow/schemas/config.schema.yaml"))
    return config


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_validate(name):
    config = _validated(name)
    check_config(config)


def test_paper_config_is_the_studys_grid():
    config = _validated("paper.yaml")
    # Lim et al. 2024: Llama-2 7B/13B at 4..1000 tokens, GPT-2 124M/774M/1.5B at 4..500, 100 prompts, fp16.
    archs = {m["architecture"]: m for m in config["models"].values()}
    assert {"llama-2-7b", "llama-2-13b", "gpt2", "gpt2-large", "gpt2-xl"} <= set(archs)
    assert all(m["dtype"] == "float16" for m in archs.values())
    fam = config["families"]
    assert (fam[archs["llama-2-7b"]["family"]]["min_tokens"], fam[archs["llama-2-7b"]["family"]]["max_tokens"]) == (4, 1000)
    assert (fam[archs["gpt2"]["family"]]["min_tokens"], fam[archs["gpt2"]["family"]]["max_tokens"]) == (4, 500)
    assert config["workload"]["num_prompts"] == 100
    assert config["sweep"]["batch_sizes"] == "auto"
    assert config["carbon"]["intensity_g_per_kwh"] == 413


def test_defaults_fill_missing_sections():
    from snakemake.utils import validate

    config = {"models": {"m": {"architecture": "tiny-llama", "family": "tiny"}}}
    validate(config, schema=str(REPO / "workflow/schemas/config.schema.yaml"))
    assert config["carbon"]["intensity_g_per_kwh"] == 413
    assert config["families"]["tiny"]["max_tokens"] == 1000
    assert config["platforms"] == {
        "cpu": {"hardware": None, "memory_limit_gb": None, "import_only": False, "spec": {}}
    }
    assert config["run"] == {"repeats": 1, "repeats_at_ends": None} and config["sweep"]["max_num_seqs"] == []


@pytest.mark.parametrize(
    "override, key, reason",
    [
        ("workload={'num_prompts': 'many'}", "workload.num_prompts", "is not of type 'integer'"),
        ("carbon={'pue': 0.5}", "carbon.pue", "less than the minimum of 1.0"),
        ("sweep={'batch_sizes': [0]}", "sweep.batch_sizes", "is not valid under any of the given schemas"),
        ("power={'interval': 1}", "power", "Additional properties are not allowed ('interval' was unexpected)"),
    ],
)
def test_invalid_config_fails_before_any_job_naming_the_key(tmp_path, override, key, reason):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--cores", "1", "--config", override],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"invalid config at key {key}:" in out, out[-2000:]
    assert reason in out, out[-2000:]
    assert "Job stats" not in out  # no job was planned, let alone run


def _base() -> dict:
    return _validated("config.yaml")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["platforms"].update({"tpu-v9": {}}), "platforms.tpu-v9: unknown platform 'tpu-v9'"),
        (lambda c: c["models"]["tiny-llama"].update(architecture="llama-9"), "models.tiny-llama.architecture: unknown architecture 'llama-9'"),
        (lambda c: c["models"]["tiny-llama"].update(family="nope"), "models.tiny-llama.family: 'nope' is not a key of families"),
        (lambda c: c["families"]["tiny"].update(min_tokens=50, max_tokens=40), "families.tiny: min_tokens 50 is larger than max_tokens 40"),
        # tiny architectures have 512 positions: 2 x 300 = 600 > 512, so at most 256.
        (lambda c: c["families"]["tiny"].update(max_tokens=300), "lower max_tokens to at most 256"),
        (lambda c: c["carbon"].update(source="trace", trace=None), "carbon.trace"),
        (lambda c: c["sweep"].update(batch_sizes=[1, 64], max_batch=16), "sweep.batch_sizes: 64 exceeds sweep.max_batch 16"),
        # issue 10 §7: config.yaml samples 16 prompts; a bs32 cell would run one batch of 16
        (lambda c: c["sweep"].update(batch_sizes=[1, 32]), "sweep.batch_sizes: [32] exceed workload.num_prompts 16"),
        (lambda c: c["sweep"].update(max_num_seqs=[4, 17, 64]), "sweep.max_num_seqs: [17, 64] exceed workload.num_prompts 16"),
        # issue 10 §8: figures 5 and 7 and the summary compare against batch 1
        (lambda c: c["sweep"].update(batch_sizes=[2, 4]), "sweep.batch_sizes: [2, 4] has no batch size 1"),
        # NaN and infinity pass the schema's minimum (every comparison with NaN is false)
        (lambda c: c["carbon"].update(pue=float("nan")), "config key carbon.pue: nan is not a finite number"),
        (lambda c: c["carbon"].update(intensity_g_per_kwh=float("inf")), "config key carbon.intensity_g_per_kwh: inf is not a finite number"),
        (lambda c: c["summary"].update(latency_slos_s_per_token=[0.1, float("nan")]), r"summary.latency_slos_s_per_token[1]: nan"),
        (lambda c: c["platforms"]["cpu"]["spec"].update(tdp_w=float("inf")), "platforms.cpu.spec.tdp_w: inf"),
        # the cpu row is an 8 GB slice (resources/platforms.csv)
        (lambda c: c["platforms"]["cpu"].update(memory_limit_gb=9), "platforms.cpu.memory_limit_gb: 9 GB is more than the platform's 8.0 GB"),
        (lambda c: c["platforms"]["cpu"]["spec"].update(memory_gb=16), None),  # a larger spec admits 9 GB below
        (lambda c: c["platforms"]["cpu"]["spec"].update(embodied_kg_co2e_high=1.0), "embodied_kg_co2e_high 1.0 is below embodied_kg_co2e 3.4"),
        (lambda c: c["models"].update({"tiny+llama": c["models"]["tiny-llama"]}), "models.tiny+llama: the name 'tiny+llama' becomes a path"),
        (lambda c: c["families"].update({"my family": c["families"]["tiny"]}), "letters, digits, '.', '_' and '-'"),
        (lambda c: c["backend"].update(name="tensorrt_llm"), "'tensorrt_llm' runs on GPUs only, and platform 'cpu'"),
        (lambda c: c["backend"].update(name="transformers"), "sweep.batch_sizes: 'auto' takes its sizes from the OOM probe"),
        (lambda c: c["sweep"].update(max_num_seqs="auto") or c["backend"].update(name="transformers") or c["sweep"].update(batch_sizes=[1]), "sweep.max_num_seqs: 'auto'"),
        (lambda c: c["serving"].update(arrival="poisson"), "serving.request_rate_per_s: arrival 'poisson' needs a rate"),
        # an engine job failing on a typo would delete its manifest, and every cell would rerun
        (lambda c: c["backend"].update(name="transformers", transformers={"attn_implementation": "spda"}) or c["sweep"].update(batch_sizes=[1]),
         "backend.transformers.attn_implementation: 'spda' is no attention implementation"),
        (lambda c: c["carbon"].update(trace_day="2023-02-30"), "carbon.trace_day: '2023-02-30' is no calendar day"),
        (lambda c: c["platforms"]["cpu"].update(import_only=True, imported={"power_log": "a", "timing": "b"}), "import_only (cells copied from another machine) and imported"),
        # a variant of a card names its row (platforms.<name>.hardware)
        (lambda c: c["platforms"].update({"cpu-capped": {**c["platforms"]["cpu"], "hardware": "cpu-x"}}), "platforms.cpu-capped.hardware: unknown row 'cpu-x'; valid rows"),
        (lambda c: c["platforms"].update({"cpu-capped": {**c["platforms"]["cpu"], "hardware": None}}), "a platform named otherwise (a capped variant of a card) names its row in platforms.cpu-capped.hardware"),
        (lambda c: c["platforms"].update({"cpu-capped": {**c["platforms"]["cpu"], "hardware": "cpu", "memory_limit_gb": 9}}), "platforms.cpu-capped.memory_limit_gb: 9 GB is more than the platform's 8.0 GB"),
        (lambda c: c["platforms"].update({"cpu-log": {**c["platforms"]["cpu"], "hardware": "cpu", "imported": {"power_log": "a", "timing": "b"}}}), "platforms.cpu-log.hardware: imported cells are judged by the device"),
    ],
)
def test_semantic_errors_name_key_and_valid_values(mutate, message):
    config = copy.deepcopy(_base())
    mutate(config)
    if message is None:
        check_config(config)
        config["platforms"]["cpu"]["memory_limit_gb"] = 9
        check_config(config)
        return
    with pytest.raises(ConfigError) as err:
        check_config(config)
    assert message in str(err.value)


def test_unknown_platform_lists_the_valid_ones():
    config = copy.deepcopy(_base())
    config["platforms"] = {"h100": {}}
    with pytest.raises(ConfigError) as err:
        check_config(config)
    for valid in ["cpu", "v100s-pcie-32gb", "a100-sxm4-40gb", "a100-sxm4-80gb", "h100-sxm-80gb", "h200-141gb"]:
        assert valid in str(err.value)


@pytest.mark.parametrize(
    "max_ok, expected",
    [(1, [1]), (2, [1, 2]), (16, [1, 2, 4, 8, 16]), (22, [1, 2, 4, 8, 16, 22]), (8 + 1, [1, 2, 4, 8, 9])],
)
def test_auto_batch_sizes_are_powers_of_two_plus_the_maximum(max_ok, expected):
    assert auto_batch_sizes(max_ok) == expected


@pytest.mark.parametrize(
    "max_ok, cap, expected",
    [
        (32, 16, [1, 2, 4, 8, 16]),  # config.yaml: 16 prompts under a probe that fits 32
        (22, 100, [1, 2, 4, 8, 16, 22]),  # the cap above the probe changes nothing
        (1024, 100, [1, 2, 4, 8, 16, 32, 64, 100]),  # paper.yaml: not 128..1024 of 100 requests
    ],
)
def test_auto_batch_sizes_stop_at_the_number_of_prompts(max_ok, cap, expected):
    assert auto_batch_sizes(max_ok, cap) == expected


def test_model_slice_is_plain_and_only_the_model():
    config = _base()
    s = model_slice(config, "tiny-llama")
    assert s == {"name": "tiny-llama", "architecture": "tiny-llama", "dtype": "float32", "checkpoint": None, "seed": 0}


# --- config files: duplicate keys and syntax errors, named by file and line ----------------------


def test_a_duplicate_key_is_refused_naming_file_and_both_lines(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("seed: 0\ncarbon:\n  pue: 1.2\n  source: constant\n  pue: 1.5\n")
    with pytest.raises(ConfigError) as err:
        load_yaml_strict(path)
    # the second `pue` is on line 5, the first on line 3
    assert f"{path} line 5: key 'pue' appears twice in one mapping (first at line 3)" in str(err.value)


def test_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("base: &b {pue: 1.2, source: constant}\ncarbon:\n  <<: *b\n  pue: 1.5\n")
    assert load_yaml_strict(path)["carbon"] == {"pue": 1.5, "source": "constant"}


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("seed: 0\nmodels:\n  a: [1, 2\nfoo: 1\n")  # the flow list never closes
    with pytest.raises(ConfigError) as err:
        load_yaml_strict(path)
    assert f"{path} line 4 column 4: YAML syntax error" in str(err.value)


def _project(tmp_path: Path, config_text: str | None = None) -> Path:
    """A working copy of the workflow (tests/harness.py), config/config.yaml the embedded default
    unless config_text is given."""
    return Project.make(tmp_path, config_text).path


def _dry_run(project: Path, *args: str) -> subprocess.CompletedProcess:
    return Project(project).run("--dry-run", *args, cores=1, timeout=300, check=False)


def test_duplicate_keys_in_a_configfile_stop_snakemake_before_any_job(tmp_path):
    project = _project(tmp_path)
    text = (REPO / "config/config.yaml").read_text() + "seed: 1\n"
    (project / "config/dup.yaml").write_text(text)
    line = len(text.splitlines())
    proc = _dry_run(project, "--configfile", "config/dup.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert f"config/dup.yaml line {line}: key 'seed' appears twice" in out, out[-2000:]


def test_a_syntax_error_in_the_default_config_names_its_line(tmp_path):
    project = _project(tmp_path, "seed: 0\nmodels:\n  a: [1, 2\nfoo: 1\n")
    proc = _dry_run(project)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert "config/config.yaml line 4 column 4: YAML syntax error" in out, out[-2000:]


# --- --config values ------------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["null", "~", "Null"])
def test_null_on_the_command_line_is_null(word):
    # Snakemake parses `--config carbon='{"fill": null, "trace": null}'` with YAML's BaseLoader,
    # which keeps every scalar a string.
    parsed = yaml.load(f'{{"fill": {word}, "trace": {word}, "pue": 1.5}}', Loader=yaml.BaseLoader)
    assert parsed == {"fill": word, "trace": word, "pue": "1.5"}
    coerced = coerce_cli_strings({"carbon": parsed}, SCHEMA)["carbon"]
    assert coerced == {"fill": None, "trace": None, "pue": 1.5}


def test_a_string_key_keeps_the_word_null():
    # families.<name>.tokenizer allows no null: the text stays (and is then checked as a path)
    out = coerce_cli_strings({"families": {"f": {"tokenizer": "null"}}}, SCHEMA)
    assert out["families"]["f"]["tokenizer"] == "null"


def test_null_fill_given_on_the_command_line_validates(tmp_path):
    project = _project(tmp_path)
    proc = _dry_run(project, "--config", 'carbon={"fill": null, "trace": null}')
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]


# --- paths: a typo never reaches a job -----------------------------------------------------------


def _tokenizer_dir(tmp: Path) -> str:
    """A folder the tokenizer check accepts (it looks for the files, it does not load them)."""
    (tmp / "tok").mkdir(exist_ok=True)
    (tmp / "tok/tokenizer.json").write_text("{}")
    return str(tmp / "tok")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c, t: c["families"]["tiny"].update(tokenizer=str(t / "tokenizr")),
         "config key families.tiny.tokenizer: '{t}/tokenizr' is no directory"),
        (lambda c, t: c["families"]["tiny"].update(tokenizer="no-such-org/no-such-tokenizer"),
         "config key families.tiny.tokenizer: 'no-such-org/no-such-tokenizer' is neither a local "
         "directory nor a Hugging Face model id in the local cache"),
        (lambda c, t: c["workload"].update(source=str(t / "sharegpt.jsn")),
         "config key workload.source: no file '{t}/sharegpt.jsn'"),
        (lambda c, t: c["workload"].update(source="hf:no-such-org/no-such-dataset")
         or c["families"]["tiny"].update(tokenizer=_tokenizer_dir(t)),
         "config key workload.source: 'no-such-org/no-such-dataset' is neither a local directory "
         "nor a Hugging Face dataset id in the local cache"),
        (lambda c, t: c["carbon"].update(source="trace", trace=str(t / "trace.cvs")),
         "config key carbon.trace: no file '{t}/trace.cvs'"),
        (lambda c, t: c["models"]["tiny-llama"].update(checkpoint=str(t / "ckpt")),
         "config key models.tiny-llama.checkpoint: '{t}/ckpt' is no directory"),
        (lambda c, t: c["platforms"]["cpu"].update(imported={"power_log": str(t / "smi.csv"),
                                                             "timing": str(t / "t.csv")}),
         "config key platforms.cpu.imported.power_log: no file '{t}/smi.csv'"),
    ],
)  # fmt: skip
def test_every_configured_path_is_checked(tmp_path, mutate, message):
    config = copy.deepcopy(_base())
    mutate(config, tmp_path)
    with pytest.raises(ConfigError) as err:
        check_config(config)
    assert message.format(t=tmp_path) in str(err.value)


def test_a_directory_without_what_the_key_needs_is_refused(tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok/README.md").write_text("not a tokenizer")
    config = copy.deepcopy(_base())
    config["families"]["tiny"]["tokenizer"] = str(tmp_path / "tok")
    with pytest.raises(ConfigError, match="holds none of tokenizer.json, tokenizer_config.json"):
        check_config(config)
    ckpt = save_checkpoint(tmp_path / "ckpt", "llama", vocab_size=4096, max_position_embeddings=512)
    for weights in ckpt.glob("*.safetensors"):
        weights.unlink()  # config.json alone: the architecture reads, the weights would not load
    config = copy.deepcopy(_base())
    config["models"]["tiny-llama"]["checkpoint"] = str(ckpt)
    config["models"]["tiny-llama"]["architecture"] = "auto"
    with pytest.raises(ConfigError, match=r"models.tiny-llama.checkpoint: the directory .* holds none of \*.safetensors, \*.bin"):
        check_config(config)


def test_a_tokenizer_typo_stops_the_dag_so_no_measured_output_is_deleted(tmp_path):
    # Snakemake deletes a failed job's old outputs; refused at DAG build, no job starts.
    project = _project(tmp_path)
    proc = _dry_run(project, "--config", 'families={"tiny": {"tokenizer": "./tokenizr"}}')
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert "config key families.tiny.tokenizer: './tokenizr' is no directory" in out


# --- hardware ------------------------------------------------------------------------------------

XEON = {"cpu": "Intel(R) Xeon(R) Processor", "gpus": [], "gpu_note": "NVML unavailable"}


def test_a_gpu_platform_without_a_visible_gpu_is_refused_naming_what_is_visible():
    config = _validated("paper.yaml")
    with pytest.raises(HardwareMismatchError) as err:
        check_hardware(config, XEON)
    text = str(err.value)
    assert "platforms.h100-sxm-80gb: needs a GPU whose name matches '^NVIDIA H100 80GB HBM3$'" in text
    assert "Visible here: CPU 'Intel(R) Xeon(R) Processor'; NVIDIA GPUs: none (NVML unavailable)" in text


def test_the_platforms_gpu_among_the_visible_ones_passes_and_another_is_named():
    config = _validated("paper.yaml")
    # "NVIDIA H100 80GB HBM3": the name NVML gave on the H100 of docs/results.md
    check_hardware(config, {"cpu": "x", "gpus": ["NVIDIA H200", "NVIDIA H100 80GB HBM3"]})
    with pytest.raises(HardwareMismatchError) as err:
        check_hardware(config, {"cpu": "x", "gpus": ["NVIDIA GH200 480GB"]})
    assert "'NVIDIA GH200 480GB'" in str(err.value) and "h100-sxm-80gb" in str(err.value)


def _h200_whole_and_capped() -> dict:
    """config/paper-h200.yaml with a second platform: the same card capped at 40 GB (the study's
    Table 4 column), named h200-40gb, its row h200-141gb."""
    config = _validated("paper-h200.yaml")
    config["platforms"]["h200-40gb"] = {"hardware": "h200-141gb", "memory_limit_gb": 40.0,
                                        "import_only": False, "spec": {}}  # fmt: skip
    check_config(config)
    return config


def test_a_capped_variant_of_a_card_is_that_cards_row_under_its_own_name():
    config = _h200_whole_and_capped()
    # Both are the H200 that NVML names "NVIDIA H200"; an A100 is neither, and the error names the
    # variant by its own config key.
    check_hardware(config, {"cpu": "x", "gpus": ["NVIDIA H200"]})
    with pytest.raises(HardwareMismatchError) as err:
        check_hardware(config, {"cpu": "x", "gpus": ["NVIDIA A100-SXM4-40GB"]})
    assert "platforms.h200-40gb:" in str(err.value) and "platforms.h200-141gb:" in str(err.value)
    # The cells' and probes' params: the variant's name, its row, the row's device pattern and TDP
    # (resources/platforms.csv: ^NVIDIA H200$, 700 W); the whole card's params have no
    # `hardware`, so its existing jobs are not replanned.
    capped = platform_slice(config, "h200-40gb")
    assert capped["name"] == "h200-40gb" and capped["hardware"] == "h200-141gb"
    assert capped["device_name_pattern"] == "^NVIDIA H200$" and capped["tdp_w"] == 700.0
    assert "hardware" not in probe_platform_slice("h200-141gb", config)


def test_a_variants_cells_take_the_rows_numbers_for_mfu():
    import pandas as pd

    from tokencarbon.metrics import resolve_cell_platforms

    cells = pd.DataFrame([{"platform": "h200-40gb", "device_name": "NVIDIA H200"}])
    p = resolve_cell_platforms(cells, rows={"h200-40gb": "h200-141gb"})["h200-40gb"]
    # the H200 row: 989.4 dense fp16 TFLOP/s, 4800 GB/s, 141 GB; named as the cells are
    assert p.platform == "h200-40gb" and p.peak_tflops_fp16 == 989.4
    assert p.memory_gb_per_s == 4800 and p.memory_gb == 141
    with pytest.raises(ConfigError, match="platform 'h200-40gb'; valid rows"):
        resolve_cell_platforms(cells)


def test_imported_platforms_are_not_checked_against_this_machine():
    config = _validated("gpu-study.yaml")  # H100 and H200, both import_only
    check_hardware(config, XEON)


def test_the_gpu_configs_dry_run_stops_at_once_on_a_machine_without_that_gpu(tmp_path):
    if gpu_present():
        pytest.skip("a GPU is visible here; the refusal is for machines without one")
    project = _project(tmp_path)
    shutil.copy(REPO / "config/paper.yaml", project / "paper.yaml")
    start = time.monotonic()
    proc = _dry_run(project, "all", "--configfile", "paper.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "platforms.h100-sxm-80gb: needs a GPU" in out and "Visible here: CPU" in out, out[-2000:]
    assert "Job stats" not in out
    assert time.monotonic() - start < 120  # was: 3.5 minutes of dataset and tokenizer jobs first


def test_tensorrt_llm_on_a_cpu_platform_is_a_config_error(tmp_path):
    project = _project(tmp_path)
    proc = _dry_run(project, "--config", 'backend={"name": "tensorrt_llm"}', 'sweep={"batch_sizes": [1, 2]}')
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "'tensorrt_llm' runs on GPUs only, and platform 'cpu'" in out


# --- architecture: auto, and a checkpoint that disagrees ------------------------------------------


def test_auto_architecture_comes_from_the_checkpoint_and_reaches_the_params(tmp_path):
    save_checkpoint(tmp_path / "ckpt", "qwen2")
    config = copy.deepcopy(_base())
    config["models"]["mine"] = {"architecture": "auto", "checkpoint": str(tmp_path / "ckpt"),
                                "family": "tiny", "dtype": "float32"}  # fmt: skip
    config["families"]["tiny"]["max_tokens"] = 128  # 2 x 128 = 256 = the checkpoint's positions
    check_config(config)
    arch = model_slice(config, "mine")["architecture"]
    # tiny_checkpoints.LLAMA_SHAPE, qwen2 (tied embeddings, q/k/v biases)
    assert (arch["hidden_size"], arch["num_layers"], arch["num_heads"], arch["num_kv_heads"]) == (64, 2, 4, 2)
    assert (arch["vocab_size"], arch["max_positions"], arch["model_type"]) == (128, 256, "qwen2")
    assert model_slice(config, "tiny-llama")["architecture"] == "tiny-llama"  # named: a file input


def test_a_checkpoint_disagreeing_with_its_architecture_stops_the_dry_run_naming_both(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt", "llama")  # hidden_size 64
    (tmp_path / "p").mkdir()
    project = _project(tmp_path / "p")
    override = f'models={{"tiny-llama": {{"architecture": "tiny-llama", "family": "tiny", "checkpoint": "{ckpt}"}}}}'
    proc = _dry_run(project, "--config", override)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    tiny = json.loads((REPO / "resources/models/tiny-llama.json").read_text())
    assert f"hidden_size=64 in the checkpoint but hidden_size={tiny['hidden_size']} in the architecture" in out, out[-2000:]


# --- the cpu platform on any CPU (issue 10 §4) ----------------------------------------------------


def test_the_default_describes_any_cpu_and_a_bare_cpu_row_is_refused_naming_the_cpu():
    config = _validated("config.yaml")  # spec: measure, logical_cpus 2, an assumed tdp_w
    check_hardware(config, XEON)
    check_hardware(config, {**XEON, "cpu": "AMD EPYC 9654 96-Core Processor"})
    bare = _validated("config.yaml")
    bare["platforms"]["cpu"]["spec"] = {}
    with pytest.raises(HardwareMismatchError) as err:
        check_hardware(bare, XEON)
    text = str(err.value)
    assert "this machine's CPU is 'Intel(R) Xeon(R) Processor'" in text
    assert "platforms.cpu.spec the values of this CPU for tdp_w, logical_cpus, peak_tflops_fp32, memory_gb_per_s" in text
    assert "`measure: true`" in text
    # the CPU the row was written for needs nothing
    check_hardware(bare, {**XEON, "cpu": "AMD EPYC 7763 64-Core Processor"})


def test_a_bare_cpu_platform_on_another_cpu_stops_the_dry_run_naming_it(tmp_path):
    from tokencarbon.hardware import cpu_model_name

    cpu = cpu_model_name()
    if cpu == "AMD EPYC 7763 64-Core Processor":
        pytest.skip("this is the CPU the cpu row describes")
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    del config["platforms"]["cpu"]["spec"]
    proc = _dry_run(_project(tmp_path, yaml.safe_dump(config)))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert f"this machine's CPU is {cpu!r}" in out and "platforms.cpu.spec" in out


def test_measure_is_refused_where_this_machine_did_not_run_the_cells_or_is_no_cpu():
    config = _validated("gpu-study.yaml")  # H100 and H200, import_only
    config["platforms"]["h100-sxm-80gb"]["spec"] = {"measure": True}
    with pytest.raises(ConfigError, match=r"platforms.h100-sxm-80gb.spec.measure: the cells .* ran on another machine \(import_only\)"):
        check_config(config)
    config = _validated("paper.yaml")
    config["platforms"]["h100-sxm-80gb"]["spec"] = {"measure": True}
    with pytest.raises(ConfigError, match=r"platforms.h100-sxm-80gb.spec.measure: measures a CPU.* is a gpu"):
        check_config(config)


def test_the_measurement_depends_only_on_its_platform():
    # rule measure_platform's params: changing power, models or the sweep never re-measures
    from tokencarbon.config import platforms_to_measure
    from tokencarbon.plan import measure_slice

    config = _validated("config.yaml")
    assert platforms_to_measure(config) == ["cpu"]
    before = measure_slice(config, "cpu")
    assert before == {"name": "cpu", "kind": "cpu", "device_name_pattern": "^AMD EPYC 7763 64-Core Processor$",
                      "spec": {"measure": True, "logical_cpus": 2, "tdp_w": 4.375}, "logical_cpus": 2}  # fmt: skip
    config["power"]["idle_s"] = 5.0
    config["models"]["tiny-llama"]["dtype"] = "bfloat16"
    config["sweep"]["max_num_seqs"] = []
    assert measure_slice(config, "cpu") == before
    config["platforms"]["cpu"]["spec"]["measure"] = False
    assert platforms_to_measure(config) == []


# --- issue 21: values YAML reads otherwise, refused (or understood) at the door -------------------


@pytest.mark.parametrize(
    "mutate, message",
    [
        # a model named `no` (YAML 1.1: False) or `7` (an int): named before any name check
        (lambda c: c["models"].update({False: c["models"]["tiny-llama"]}),
         "config key models.False: YAML read this key as a boolean (False), not a name"),
        (lambda c: c["models"].update({7: c["models"]["tiny-llama"]}),
         "config key models.7: YAML read this key as a number (7), not a name"),
        # JSON Schema's "integer" takes 8.0; a cell bs2.0 would never be found
        (lambda c: c["workload"].update(num_prompts=8.0),
         "config key workload.num_prompts: 8.0 is a whole number written with a decimal point; write 8"),
        (lambda c: c["sweep"].update(batch_sizes=[1, 2.0]),
         "config key sweep.batch_sizes[1]: 2.0 is a whole number written with a decimal point; write 2"),
        (lambda c: c["workload"].update(num_prompts=8.5), "8.5 is not a whole number; give one"),
        # 2^64 + 1 = 18446744073709551617 and 2^63 = 9223372036854775808: beyond 2^63 - 1
        (lambda c: c.update(seed=2**64 + 1),
         "config key seed: 18446744073709551617 is beyond 9223372036854775807 (2^63 - 1)"),
        (lambda c: c["serving"].update(seed=2**63), "config key serving.seed: 9223372036854775808 is beyond"),
        (lambda c: c["platforms"]["cpu"]["spec"].update(logical_cpus=2.0), "platforms.cpu.spec.logical_cpus: 2.0"),
    ],
)  # fmt: skip
def test_yaml_values_are_refused_at_the_door_naming_key_value_and_fix(mutate, message):
    from tokencarbon.config import normalize_config_values

    config = copy.deepcopy(_base())
    mutate(config)
    with pytest.raises(ConfigError) as err:
        normalize_config_values(config, SCHEMA)
    assert message in str(err.value)


def test_values_yaml_reads_as_dates_or_numbers_are_understood_where_unambiguous():
    import datetime as dt

    from tokencarbon.config import normalize_config_values

    config = copy.deepcopy(_base())
    config["carbon"]["trace_day"] = dt.date(2023, 2, 28)  # unquoted 2023-02-28 in YAML
    config["carbon"]["pue"] = 1  # an int where a number goes is a number
    out = normalize_config_values(config, SCHEMA)
    assert out["carbon"]["trace_day"] == "2023-02-28" and out["carbon"]["pue"] == 1
    assert out["seed"] == 0 and out["models"] == config["models"]


def test_an_impossible_unquoted_date_names_file_line_and_key(tmp_path):
    text = (REPO / "config/config.yaml").read_text()
    text = text.replace("  intensity_g_per_kwh: 413\n", "  intensity_g_per_kwh: 413\n  trace_day: 2023-02-30\n")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    line = text.splitlines().index("  trace_day: 2023-02-30") + 1
    with pytest.raises(ConfigError, match=re.escape(
        f"{path} line {line}, key trace_day: '2023-02-30' is no calendar date (day is out of range "
        "for month); YAML reads an unquoted YYYY-MM-DD as a date: give a day that exists, e.g. "
        "'2023-02-28'")):  # fmt: skip
        load_yaml_strict(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (("  tiny-gpt2:\n", "  no:\n"), "config key models.False: YAML read this key as a boolean"),
        (("  intensity_g_per_kwh: 413\n", "  intensity_g_per_kwh: 4.13e2\n"),
         "invalid config at key carbon.intensity_g_per_kwh: '4.13e2' is not of type 'number'; YAML "
         "1.1 reads '4.13e2' as text, not a number (an exponent needs a sign and the mantissa a "
         "dot, 4.13e+2): write 413.0"),
        (("seed: 0\n", "seed: 18446744073709551617\n"), "config key seed: 18446744073709551617 is beyond"),
    ],
)  # fmt: skip
def test_yaml_values_stop_the_dry_run_before_any_job(tmp_path, edit, message):
    text = (REPO / "config/config.yaml").read_text()
    assert edit[0] in text
    project = _project(tmp_path, text.replace(edit[0], edit[1], 1))
    proc = _dry_run(project)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out and "TypeError" not in out
    assert message in out, out[-2000:]


def test_a_vocabulary_smaller_than_the_builtin_tokenizers_is_refused():
    # tiny-llama's vocabulary is 4096 (resources/models/tiny-llama.json); the builtin tokenizer
    # of 5000 would give ids 4096..4999 that every cell of the model refuses.
    from tokencarbon.config import check_model_vocabulary

    config = copy.deepcopy(_base())
    config["workload"]["builtin_vocab_size"] = 5000
    with pytest.raises(ConfigError, match=re.escape(
        "config key workload.builtin_vocab_size: 5000 is more than the vocabulary of tiny-llama "
        "(4096, model tiny-llama, family tiny with the builtin tokenizer)")):  # fmt: skip
        check_model_vocabulary(config, "tiny-llama")
    config["workload"]["builtin_vocab_size"] = 4096
    check_model_vocabulary(config, "tiny-llama")


def test_a_vocabulary_too_small_stops_the_dry_run_of_its_cells(tmp_path):
    # The default's tiny models have 4096 ids; 5000 builtin ids would fail every cell.
    project = _project(tmp_path)
    proc = _dry_run(project, "--config", 'workload={"builtin_vocab_size": 5000}')
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert "config key workload.builtin_vocab_size: 5000 is more than the vocabulary" in out


def test_a_cells_params_hold_only_what_changes_its_measurement():
    from tokencarbon.plan import measure_slice

    def slices(config, name="cpu"):
        return (platform_slice(config, name), probe_platform_slice(name, config),
                measure_slice(config, name))  # fmt: skip

    base = _base()
    # The default's cpu spec, as its cells have always been planned (nothing reruns).
    default = slices(base)
    assert default[0]["spec"] == {"measure": True, "logical_cpus": 2, "tdp_w": 4.375}
    for numbers in (dict(memory_gb_per_s=51.0), dict(memory_gb_per_s=52.0, lifetime_years=4,
                    embodied_kg_co2e=3.0, peak_tflops_bf16=0.5, memory_gb=16.0)):  # fmt: skip
        # Given or corrected, a number only metrics read (the bandwidth measure supplies too)
        # leaves every measuring job's params as they were.
        config = copy.deepcopy(base)
        config["platforms"]["cpu"]["spec"].update(numbers)
        assert slices(config) == default
    # Without measure, the cpu row describes another CPU only with its peak and bandwidth given:
    # the params name them (the hardware check counts them), and a corrected value changes nothing.
    other = []
    for peak in (0.3, 0.4):
        config = copy.deepcopy(base)
        config["platforms"]["cpu"]["spec"] = {"tdp_w": 4.375, "logical_cpus": 2,
                                              "peak_tflops_fp32": peak, "memory_gb_per_s": 5.0}
        other.append(slices(config))
    assert other[0] == other[1]
    assert other[0][0]["spec"] == {"logical_cpus": 2, "tdp_w": 4.375,
                                   "given_for_metrics": ["memory_gb_per_s", "peak_tflops_fp32"]}
    # The TDP a cpu cell models its power with, and its CPUs, do change a measurement.
    config = copy.deepcopy(base)
    config["platforms"]["cpu"]["spec"]["tdp_w"] = 5.0
    assert platform_slice(config, "cpu") != default[0] and platform_slice(config, "cpu")["tdp_w"] == 5.0
    # A GPU's power is read through NVML: no spec value of a GPU platform reaches its cells (the
    # row's 700 W TDP stays), given or corrected.
    paper = _validated("paper.yaml")
    bare = slices(paper, "h100-sxm-80gb")
    for tdp in (500, 600):
        config = copy.deepcopy(paper)
        config["platforms"]["h100-sxm-80gb"]["spec"] = {"tdp_w": tdp, "memory_gb_per_s": 3000.0}
        assert slices(config, "h100-sxm-80gb") == bare
    assert bare[0]["tdp_w"] == 700.0 and "spec" not in bare[0]


def _pool(path: Path, n: int) -> Path:
    import pandas as pd

    from tokencarbon import tables

    rows = pd.DataFrame({"request_id": [str(k) for k in range(n)], "prompt": ["p"] * n,
                         "prompt_tokens": [1] * n, "output_tokens": [1] * n,
                         "prompt_token_ids": [[1]] * n})  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tables.write(rows, path, tables.WORKLOAD)
    return path


def test_num_prompts_above_the_pool_on_disk_is_refused_before_the_workload_is_deleted(tmp_path):
    from tokencarbon.config import check_pool_holds_num_prompts

    pool = _pool(tmp_path / "results/dataset/tiny.parquet", 5)
    config = copy.deepcopy(_base())
    config["workload"]["num_prompts"] = 5
    check_pool_holds_num_prompts(config, "tiny", pool)  # 5 of 5
    check_pool_holds_num_prompts(config, "tiny", tmp_path / "absent.parquet")  # built later
    config["workload"]["num_prompts"] = 6
    with pytest.raises(ConfigError, match=re.escape(
        f"config key workload.num_prompts: 6 requests, and the filtered pool of family tiny "
        f"({pool}) holds 5")):  # fmt: skip
        check_pool_holds_num_prompts(config, "tiny", pool)
    # Through Snakemake: refused at DAG build, so the workload the cells ran on stays.
    (tmp_path / "project").mkdir()
    project = _project(tmp_path / "project")
    _pool(Project(project) / "results/dataset/tiny.parquet", 20)  # the default's cb16 needs >= 16
    workload = _pool(Project(project) / "results/workload/tiny-llama.parquet", 16)
    before = workload.stat().st_mtime_ns
    proc = _dry_run(project, "--config", 'workload={"num_prompts": 21}')
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert "config key workload.num_prompts: 21 requests" in out and "holds 20" in out, out[-2000:]
    assert workload.stat().st_mtime_ns == before


def _trace_2024(path: Path) -> Path:
    path.write_text(
        "Datetime (UTC),Zone Id,Carbon Intensity gCO₂eq/kWh (direct),Carbon Intensity gCO₂eq/kWh (LCA)\n"
        "2024-01-01 00:00:00,DE,400,450\n2024-01-01 01:00:00,DE,300,350\n",
        encoding="utf-8",
    )
    return path


def test_the_trace_must_cover_the_cells_known_times(tmp_path):
    import pandas as pd

    from tokencarbon import tables
    from tokencarbon.config import cell_windows, check_trace_coverage

    trace = _trace_2024(tmp_path / "trace.csv")  # rows 00:00 and 01:00: it covers 00:00-02:00
    config = copy.deepcopy(_base())
    config["carbon"].update(source="trace", trace=str(trace), fill=None)
    t = lambda hhmm: pd.Timestamp(f"2024-01-01 {hhmm}", tz="UTC").value  # noqa: E731
    # A finished cell's windows from its batches.parquet: 00:30-00:40 and 01:50-02:10.
    cell = tmp_path / "results/cells/cpu/tiny-llama/bs2"
    cell.mkdir(parents=True)
    row = {"repeat": 0, "n_requests": 2, "input_tokens": 8, "output_tokens": 8,
           "padded_input_len": 4, "max_output_tokens": 4, "prompt_lens": [4, 4],
           "output_lens": [4, 4]}  # fmt: skip
    batches = pd.DataFrame([
        {**row, "batch_index": k, "start_ns": s, "first_token_ns": s, "end_ns": e,
         "start_wall_ns": s, "first_token_wall_ns": s, "end_wall_ns": e}
        for k, (s, e) in enumerate([(t("00:30"), t("00:40")), (t("01:50"), t("02:10"))])
    ])  # fmt: skip
    tables.write(batches, cell / "batches.parquet", tables.BATCHES)
    windows = cell_windows(cell)
    assert windows == [("cell cpu/tiny-llama/bs2", t("00:30"), t("00:40")),
                       ("cell cpu/tiny-llama/bs2", t("01:50"), t("02:10"))]  # fmt: skip
    check_trace_coverage(config, windows[:1])
    with pytest.raises(ConfigError, match=r"config key carbon.trace: cell cpu/tiny-llama/bs2: .* "
                       r"does not cover 2024-01-01T02:00:00\+00:00 to 2024-01-01T02:10:00\+00:00 "
                       r".*set the fill policy \(config carbon.fill\)"):
        check_trace_coverage(config, windows)
    # "previous" carries 01:00's value to 02:10: 10 minutes past its row's end is within 1 h.
    config["carbon"]["fill"] = "previous"
    check_trace_coverage(config, windows)
    # A cell of 2026 lies far beyond: refused naming max_fill_s; no limit accepts it.
    late = [("cells measured in this run (starting now)", t("00:00") + 2 * 365 * 86400 * 10**9,
             t("00:00") + 2 * 365 * 86400 * 10**9 + 1)]  # fmt: skip
    with pytest.raises(ConfigError, match=r"cells measured in this run .* more than "
                       r"carbon.max_fill_s = 3600 s"):
        check_trace_coverage(config, late)
    config["carbon"]["max_fill_s"] = None
    check_trace_coverage(config, late)


def test_a_trace_that_cannot_cover_this_runs_cells_stops_the_dry_run(tmp_path):
    project = _project(tmp_path)
    trace = _trace_2024(project / "trace.csv")
    proc = _dry_run(project, "--config", f'carbon={{"source": "trace", "trace": "{trace}"}}')
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert ("config key carbon.trace: cells measured in this run (starting now): "
            f"{trace}: the intensity trace (zone DE") in out, out[-2000:]


def test_a_trace_day_the_trace_does_not_give_is_refused(tmp_path):
    # Figure 6a and the time shift read the 24 hours of carbon.trace_day; this trace gives
    # 2024-01-01 00:00-02:00 only.
    trace = _trace_2024(tmp_path / "trace.csv")
    config = copy.deepcopy(_base())
    config["carbon"].update(source="trace", trace=str(trace), fill=None, trace_day="2024-01-01")
    with pytest.raises(ConfigError, match=r"config key carbon.trace_day: '2024-01-01': .* does not "
                       r"cover 2024-01-01T02:00:00\+00:00 to 2024-01-02T00:00:00\+00:00"):
        check_config(config)
    # "nearest" fills the other 22 hours from 01:00's row: 22 h is more than max_fill_s (1 h),
    # so that too is refused unless the limit is lifted.
    config["carbon"].update(fill="nearest")
    with pytest.raises(ConfigError, match="carbon.max_fill_s = 3600 s"):
        check_config(config)
    config["carbon"]["max_fill_s"] = None
    check_config(config)


def test_a_step_budget_below_max_num_seqs_is_refused_at_the_door():
    # 256 decode rows need 256 tokens of the step: a budget of 128 cannot hold them
    cfg = copy.deepcopy(_base())
    cfg["serving"]["max_num_batched_tokens"] = 128
    cfg["sweep"]["max_num_seqs"] = [16, 256]
    cfg["workload"]["num_prompts"] = 256
    with pytest.raises(ConfigError, match="max_num_batched_tokens: 128 .*max_num_seqs 256 .* at least 256"):
        check_config(cfg)
