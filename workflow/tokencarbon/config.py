"""Config checks the JSON schema cannot express, and the per-job config slices rules pass as params.

The schema (workflow/schemas/config.schema.yaml) checks types and keys; here we check names against
resources/ and cross-key consistency, and cut the plain-builtin slices each job depends on, so that
changing one key reruns only the jobs that read it.
"""

from __future__ import annotations

from typing import Any

from tokencarbon.errors import ConfigError


def _types(schema: dict[str, Any]) -> set[str]:
    alternatives = schema.get("oneOf", []) + schema.get("anyOf", []) + [schema]
    out: set[str] = set()
    for alt in alternatives:
        t = alt.get("type", [])
        out |= {t} if isinstance(t, str) else set(t)
    return out


def coerce_cli_strings(instance: Any, schema: dict[str, Any]) -> Any:
    """Turn the strings Snakemake's --config leaves in nested values into the schema's types.

    `--config carbon='{"pue": 1.2}'` is parsed by Snakemake with YAML's BaseLoader, so nested
    scalars arrive as strings ('1.2'); where the schema does not allow a string, parse them as YAML.
    """
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            k: coerce_cli_strings(v, props.get(k, extra if isinstance(extra, dict) else {}))
            for k, v in instance.items()
        }
    if isinstance(instance, list):
        array = next((a for a in schema.get("oneOf", []) + [schema] if "items" in a), {})
        return [coerce_cli_strings(v, array.get("items", {})) for v in instance]
    if isinstance(instance, str) and _types(schema) and "string" not in _types(schema):
        import yaml

        try:
            parsed = yaml.safe_load(instance)
        except yaml.YAMLError:
            return instance
        return instance if isinstance(parsed, str) else coerce_cli_strings(parsed, schema)
    return instance


def check_config(config: dict[str, Any]) -> None:
    """Raise ConfigError naming the key path for names and combinations the schema cannot check."""
    from tokencarbon.models import available_architectures, load_architecture
    from tokencarbon.platforms import load_platforms

    known_platforms = sorted(load_platforms())
    for name in config["platforms"]:
        if name not in known_platforms:
            raise ConfigError(
                f"config key platforms.{name}: unknown platform {name!r}; valid platforms "
                f"(resources/platforms.csv): {', '.join(known_platforms)}"
            )
    for name, family in config["families"].items():
        if family["min_tokens"] > family["max_tokens"]:
            raise ConfigError(
                f"config key families.{name}: min_tokens {family['min_tokens']} is larger than "
                f"max_tokens {family['max_tokens']}; need min_tokens <= max_tokens"
            )
    archs = available_architectures()
    for name, model in config["models"].items():
        if model["architecture"] not in archs:
            raise ConfigError(
                f"config key models.{name}.architecture: unknown architecture "
                f"{model['architecture']!r}; valid architectures (resources/models): {', '.join(archs)}"
            )
        if model["family"] not in config["families"]:
            raise ConfigError(
                f"config key models.{name}.family: {model['family']!r} is not a key of families; "
                f"valid families: {', '.join(config['families'])}"
            )
        arch = load_architecture(model["architecture"])
        longest = 2 * config["families"][model["family"]]["max_tokens"]
        if longest > arch.max_positions:
            raise ConfigError(
                f"config key families.{model['family']}.max_tokens: a request may need "
                f"{longest} positions (prompt + answer), more than {model['architecture']}'s "
                f"max_positions {arch.max_positions}; lower max_tokens to at most "
                f"{arch.max_positions // 2}"
            )
    for name, family in config["families"].items():
        if family["tokenizer"] == "builtin" and config["workload"]["source"].startswith("hf:"):
            raise ConfigError(
                f"config key families.{name}.tokenizer: 'builtin' trains on the workload's text, "
                f"which an 'hf:' source ({config['workload']['source']}) does not give as a file; "
                "use a local Hugging Face tokenizer directory or a cached id"
            )
    if config["carbon"]["source"] == "trace" and not config["carbon"]["trace"]:
        raise ConfigError(
            "config key carbon.trace: carbon.source is 'trace' but no trace file is given; set "
            "carbon.trace to an Electricity Maps CSV export or carbon.source to 'constant'"
        )
    batches = config["sweep"]["batch_sizes"]
    if batches != "auto" and max(batches) > config["sweep"]["max_batch"]:
        raise ConfigError(
            f"config key sweep.batch_sizes: {max(batches)} exceeds sweep.max_batch "
            f"{config['sweep']['max_batch']}; raise max_batch or drop that batch size"
        )
    measured = [name for name, p in config["platforms"].items() if not p["import_only"]]
    if config["backend"]["name"] == "tensorrt_llm" and batches == "auto" and measured:
        # The probe finds the largest batch the torch backend fits; a TensorRT-LLM engine's memory
        # is another matter (its KV cache is sized up front, and a batch that does not fit is
        # queued, not refused), so no batch size is guessed from it.
        raise ConfigError(
            "config key sweep.batch_sizes: 'auto' takes the batch sizes from the OOM probe, which "
            "runs the torch backend only, and backend.name is 'tensorrt_llm'; list the batch sizes "
            f"to measure, each at most sweep.max_batch {config['sweep']['max_batch']} (the "
            "max_batch_size every engine is built with), e.g. [1, 2, 4, 8]"
        )


def auto_batch_sizes(max_ok: int) -> list[int]:
    """Powers of two up to the probed maximum batch, plus the maximum itself."""
    sizes = []
    b = 1
    while b <= max_ok:
        sizes.append(b)
        b *= 2
    if sizes[-1] != max_ok:
        sizes.append(max_ok)
    return sizes


def model_slice(config: dict[str, Any], model: str) -> dict[str, Any]:
    """What the engine, probe and cells of `model` depend on (plain builtins)."""
    m = config["models"][model]
    return {
        "name": model,
        "architecture": m["architecture"],
        "dtype": m["dtype"],
        "checkpoint": m["checkpoint"],
        "seed": config["seed"],
    }


def probe_platform_slice(platform: str) -> dict[str, Any]:
    """What the OOM probe needs of its platform: only enough to check the hardware."""
    from tokencarbon.platforms import get_platform

    p = get_platform(platform)
    return {"name": platform, "kind": p.kind, "device_name_pattern": p.device_name_pattern}


def platform_slice(config: dict[str, Any], platform: str) -> dict[str, Any]:
    """What a cell needs of its platform: the spec row (to check hardware, model CPU power)."""
    from tokencarbon.platforms import get_platform

    p = get_platform(platform)
    interval = config["power"]["interval_s"]
    if interval is None:
        interval = 0.1 if p.kind == "cpu" else 0.05
    return {
        **probe_platform_slice(platform),
        "logical_cpus": p.logical_cpus,
        "tdp_w": float(p.tdp_w),
        "power_interval_s": float(interval),
        "idle_s": float(config["power"]["idle_s"]),
    }
