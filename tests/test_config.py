"""Config validation: the schema's shape, its rejections with the key path, and name checks."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tokencarbon.config import auto_batch_sizes, check_config, model_slice
from tokencarbon.errors import ConfigError

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


def test_every_key_has_description_and_default_and_objects_are_closed():
    keys = list(_walk(SCHEMA))
    assert len(keys) > 30  # the schema really was walked (it has 37 keys today)
    for path, sub in keys:
        assert "description" in sub, path
        assert "default" in sub, path
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
    assert config["platforms"] == {"cpu": {"memory_limit_gb": None, "import_only": False}}


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
    ],
)
def test_semantic_errors_name_key_and_valid_values(mutate, message):
    config = copy.deepcopy(_base())
    mutate(config)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_config(config)


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


def test_model_slice_is_plain_and_only_the_model():
    config = _base()
    s = model_slice(config, "tiny-llama")
    assert s == {"name": "tiny-llama", "architecture": "tiny-llama", "dtype": "float32", "checkpoint": None, "seed": 0}
