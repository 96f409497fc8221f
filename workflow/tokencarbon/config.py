"""Config checks the JSON schema cannot express.

The schema (workflow/schemas/config.schema.yaml) checks types and keys; here, when the DAG is built
(common.smk: prepare_config), we check the config files' YAML (syntax and duplicate keys, naming
file and line), names against resources/, cross-key consistency, that every configured path
exists, and that each platform measured here is the hardware visible here. What each job depends
on (the plain-builtin slices its params carry) is the plan's (tokencarbon.plan). A bad value stops
Snakemake before any job runs: a failed job would have its old outputs deleted by Snakemake, so a
typo must never reach one (issue 10 §7).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tokencarbon.errors import ConfigError, HardwareMismatchError

# Characters a model, family or platform name may use: it becomes a path component and a
# Snakemake wildcard value, so no "/", no regex or glob characters, no spaces.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"
# What AutoTokenizer reads from a local folder (fast tokenizer, or the slow ones' vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
WEIGHT_FILES = ("*.safetensors", "*.bin")
_NULL_WORDS = {"null", "Null", "NULL", "~"}


# ---------------------------------------------------------------- config files


def _loader_for(path: str):
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """PyYAML keeps the last of two equal keys silently; this one refuses them."""

        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges may repeat keys
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(
                        f"{path} line {line}: key {key!r} appears twice in one mapping (first at "
                        f"line {seen[key]}); YAML would keep only the last silently: keep one"
                    )
                seen[key] = line
            return super().construct_mapping(node, deep)

        def construct_yaml_timestamp(self, node):
            try:
                return super().construct_yaml_timestamp(node)
            except ValueError as e:
                mark = node.start_mark
                line = mark.buffer.splitlines()[mark.line] if mark.buffer else ""
                key = re.match(r"^\s*-?\s*([^:#]+?)\s*:", line)
                raise ConfigError(
                    f"{path} line {mark.line + 1}"
                    + (f", key {key.group(1)}" if key else "")
                    + f": {node.value!r} is no calendar date ({e}); YAML reads an unquoted "
                    "YYYY-MM-DD as a date: give a day that exists, e.g. "
                    f"{_nearest_day(node.value)!r}"
                ) from None

    UniqueKeyLoader.add_constructor("tag:yaml.org,2002:timestamp",
                                    UniqueKeyLoader.construct_yaml_timestamp)  # fmt: skip
    return UniqueKeyLoader


def _nearest_day(text: str) -> str:
    """The last real day of a YYYY-MM-DD whose day is past its month's end ('2023-02-30' ->
    '2023-02-28'); the text itself where it is not such a date."""
    import calendar

    m = re.match(r"^(\d{4})-(\d{1,2})-(\d{1,2})", text)
    if not m or not 1 <= int(m[2]) <= 12:
        return text
    year, month = int(m[1]), int(m[2])
    return f"{year:04d}-{month:02d}-{min(int(m[3]), calendar.monthrange(year, month)[1]):02d}"


def load_yaml_strict(path: str | Path) -> Any:
    """A YAML file's content, refusing duplicate keys. Raises ConfigError naming the file and line
    of a syntax error, of the second of two equal keys in one mapping, or of an unquoted date
    that is no calendar day (`trace_day: 2023-02-30`: YAML 1.1 reads it as a date and fails)."""
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    try:
        return yaml.load(text, Loader=_loader_for(str(path)))  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        what = " ".join(p for p in (e.context, e.problem) if p)
        raise ConfigError(f"{path}{where}: YAML syntax error: {what}") from None


def check_config_files(paths: Iterable[str | Path]) -> None:
    """load_yaml_strict on each config file that exists (Snakemake names the missing ones)."""
    for path in paths:
        if Path(path).is_file():
            load_yaml_strict(path)


# ---------------------------------------------------------------- --config strings


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
    scalars arrive as strings ('1.2', 'null'); where the schema does not allow a string, parse them
    as YAML; where it allows null, 'null' (or '~') is null, not a file or option named "null".
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
    if isinstance(instance, str) and instance in _NULL_WORDS and "null" in _types(schema):
        return None
    if isinstance(instance, str) and _types(schema) and "string" not in _types(schema):
        import yaml

        try:
            parsed = yaml.safe_load(instance)
        except yaml.YAMLError:
            return instance
        return instance if isinstance(parsed, str) else coerce_cli_strings(parsed, schema)
    return instance


# ---------------------------------------------------------------- values YAML reads otherwise

# The largest integer a config key may hold: seeds go to torch.Generator and numpy, counts to
# int64 table columns and meta.json, both signed 64-bit.
MAX_INT = 2**63 - 1
# YAML 1.1 (PyYAML, Snakemake's loader) reads these unquoted words as booleans, so a model named
# `no` becomes the key False.
_YAML_BOOLEANS = "y, n, yes, no, on, off, true, false"


def _is_integer_schema(schema: dict[str, Any]) -> bool:
    types = _types(schema)
    return "integer" in types and "number" not in types


def _child_schema(schema: dict[str, Any], key) -> dict[str, Any]:
    props = schema.get("properties", {})
    if key in props:
        return props[key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else {}


def normalize_config_values(instance: Any, schema: dict[str, Any], path: str = "") -> Any:
    """The config with the values YAML 1.1 reads as something else checked at the door, before
    the schema (whose messages name neither the cause nor the fix):

    - a mapping key that is not a string (a model named `no` or `7`: YAML made it False or 7):
      ConfigError naming the key and the fix (quote it);
    - a float where the schema wants an integer (`num_prompts: 8.0`, `batch_sizes: [1, 2.0]`;
      JSON Schema counts 8.0 as an integer, and a cell bs2.0 would never be found): ConfigError;
    - an integer beyond MAX_INT (a seed of 2^64 + 1): ConfigError;
    - an unquoted date (`trace_day: 2023-02-28`, a datetime.date to YAML) where the schema takes
      text: the date written as YYYY-MM-DD (an impossible one, 2023-02-30, is refused by
      load_yaml_strict naming file and line).
    Returns the config with dates as text; raises ConfigError naming the key path, value and fix.
    """
    if isinstance(instance, dict):
        for key in instance:
            if not isinstance(key, str):
                where = f"{path}.{key!r}" if path else repr(key)
                word = "a boolean" if isinstance(key, bool) else "a number"
                example = "'no': rather than no:" if isinstance(key, bool) else f"'{key}':"
                raise ConfigError(
                    f"config key {where}: YAML read this key as {word} ({key!r}), not a name "
                    f"(unquoted {_YAML_BOOLEANS} are booleans to YAML 1.1, digits numbers): "
                    f"quote the name in the config file, e.g. {example}"
                )
        return {
            k: normalize_config_values(v, _child_schema(schema, k), f"{path}.{k}" if path else k)
            for k, v in instance.items()
        }
    if isinstance(instance, list):
        array = next((a for a in schema.get("oneOf", []) + [schema] if "items" in a), {})
        return [
            normalize_config_values(v, array.get("items", {}), f"{path}[{i}]")
            for i, v in enumerate(instance)
        ]
    if isinstance(instance, float) and _is_integer_schema(schema):
        whole = instance.is_integer() and math.isfinite(instance)
        raise ConfigError(
            f"config key {path}: "
            + (f"{instance!r} is a whole number written with a decimal point; write "
               f"{int(instance)}" if whole else f"{instance!r} is not a whole number; give one")
            + " (a count, size or seed: cells and files are named by it, bs2, not bs2.0)"
        )  # fmt: skip
    if isinstance(instance, int) and not isinstance(instance, bool) and _types(schema):
        if abs(instance) > MAX_INT:
            raise ConfigError(
                f"config key {path}: {instance} is beyond {MAX_INT} (2^63 - 1), the largest "
                "integer tokencarbon passes on (torch's and numpy's generators take seeds, the "
                "tables and meta.json store counts, as signed 64-bit integers): give a smaller one"
            )
    if isinstance(instance, dt.date) and "string" in _types(schema):
        return instance.isoformat()
    return instance


def schema_error_message(cause) -> str:
    """The message of a jsonschema ValidationError, naming the key, with the fix where the cause is
    YAML's: '4.13e2' is text to YAML 1.1 (an exponent needs a sign, a mantissa a dot)."""
    key = ".".join(str(p) for p in cause.absolute_path) or "(top level)"
    hint = ""
    value = cause.instance
    if cause.validator == "type" and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and math.isfinite(number):
            hint = (
                f"; YAML 1.1 reads {value!r} as text, not a number (an exponent needs a sign and "
                f"the mantissa a dot, 4.13e+2): write {number!r}"
            )
    return (
        f"invalid config at key {key}: {cause.message}{hint} "
        f"(schema: workflow/schemas/config.schema.yaml; keys: config/README.md)"
    )


# ---------------------------------------------------------------- checks


def _non_finite(value: Any, path: str) -> Iterable[tuple[str, float]]:
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{path}[{i}]")


def _check_names(config: dict[str, Any]) -> None:
    for section in ("platforms", "families", "models"):
        for name in config[section]:
            if not re.match(NAME_PATTERN, str(name)):
                raise ConfigError(
                    f"config key {section}.{name}: the name {name!r} becomes a path and a Snakemake "
                    f"wildcard, so it may hold only {NAME_RULE}; rename it"
                )


def _local_path(spec: str) -> bool:
    """Whether a tokenizer/checkpoint/dataset spec is meant as a local path (not a hub id)."""
    return spec.startswith(("/", ".", "~")) or Path(spec).expanduser().exists()


def _check_hub_or_path(
    spec: str, key: str, valid: str, repo_type: str = "model", needs: tuple[str, ...] = ()
) -> None:
    """A local directory (holding one of the glob patterns `needs`, if given), or a Hugging Face
    id already in the local cache (offline); `valid` says what the key takes."""
    path = Path(spec).expanduser()
    if _local_path(spec):
        if not path.is_dir():
            raise ConfigError(
                f"config key {key}: {spec!r} is no directory (resolved: {path.absolute()}); "
                f"valid: {valid}"
            )
        if needs and not any(any(path.glob(pattern)) for pattern in needs):
            raise ConfigError(
                f"config key {key}: the directory {spec!r} holds none of {', '.join(needs)}; "
                f"valid: {valid}"
            )
        return
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(spec, repo_type=repo_type, local_files_only=True)
    except Exception as e:  # not an id, not cached: the message says what to give
        flag = " --repo-type dataset" if repo_type == "dataset" else ""
        raise ConfigError(
            f"config key {key}: {spec!r} is neither a local directory nor a Hugging Face "
            f"{repo_type} id in the local cache ({type(e).__name__}); valid: {valid} (download "
            f"an id first: `hf download {spec}{flag}`)"
        ) from None


def _check_file(spec: str | None, key: str, what: str) -> None:
    if spec is None:
        return
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"config key {key}: no file {spec!r} (resolved: {path.absolute()}); give the path of "
            f"{what}"
        )


def platform_overrides(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The keys config sets in platforms.<name>.spec (None values dropped: the row's value),
    `measure` included: what platforms.resolve_platform takes as overrides."""
    spec = config["platforms"][name].get("spec") or {}
    return {k: v for k, v in spec.items() if v is not None}


def measures_platform(config: dict[str, Any], name: str) -> bool:
    """Whether config asks for platform `name`'s peaks to be measured on this machine
    (platforms.<name>.spec.measure: rule measure_platform)."""
    return bool(platform_overrides(config, name).get("measure", False))


def platforms_to_measure(config: dict[str, Any]) -> list[str]:
    """Platforms measured here whose peaks rule measure_platform measures (spec.measure)."""
    return [n for n in measured_platforms(config) if measures_platform(config, n)]


def platform_row(config: dict[str, Any], name: str) -> str:
    """The row of resources/platforms.csv that configured platform `name` is: its
    platforms.<name>.hardware where given (a variant of a card, e.g. h200-40gb, a memory-capped
    H200 beside the whole one), else `name` itself. Takes a config before validation too (a
    platform given as null, as `tokencarbon doctor` reads the YAML)."""
    return (config["platforms"][name] or {}).get("hardware") or name


def platform_spec(config: dict[str, Any], name: str):
    """The platform's row of resources/platforms.csv with config's overrides applied, as a
    platforms.Platform (no hardware detection: a cell resolves it against its device; fields a
    measurement gives keep the row's value here)."""
    from tokencarbon.platforms import load_platforms, split_measure

    row = load_platforms()[platform_row(config, name)]
    overrides, _ = split_measure(platform_overrides(config, name))
    spec = dataclasses.replace(
        row, **{k: int(v) if k == "logical_cpus" else float(v) for k, v in overrides.items()}
    )
    if spec.embodied_kg_co2e_high is not None and spec.embodied_kg_co2e_high < spec.embodied_kg_co2e:
        raise ConfigError(
            f"config key platforms.{name}.spec: embodied_kg_co2e_high {spec.embodied_kg_co2e_high} "
            f"is below embodied_kg_co2e {spec.embodied_kg_co2e}; the high bound must be >= the low"
        )
    return spec


def measured_platforms(config: dict[str, Any]) -> list[str]:
    """Platforms whose cells run on this machine: neither copied in (import_only) nor built from
    an external log (imported)."""
    return sorted(
        n for n, p in config["platforms"].items() if not p["import_only"] and not p.get("imported")
    )


def _check_platforms(config: dict[str, Any]) -> None:
    from tokencarbon.platforms import load_platforms

    table = load_platforms()
    known = sorted(table)
    for name, p in config["platforms"].items():
        row = p.get("hardware")
        if row is not None and row not in table:
            raise ConfigError(
                f"config key platforms.{name}.hardware: unknown row {row!r}; valid rows "
                f"(resources/platforms.csv): {', '.join(known)}"
            )
        if row is None and name not in table:
            raise ConfigError(
                f"config key platforms.{name}: unknown platform {name!r}; valid platforms "
                f"(resources/platforms.csv): {', '.join(known)}; a platform named otherwise (a "
                f"capped variant of a card) names its row in platforms.{name}.hardware"
            )
        if row is not None and p.get("imported"):
            raise ConfigError(
                f"config key platforms.{name}.hardware: imported cells are judged by the device "
                "their power log names, against the platform named as a row of "
                "resources/platforms.csv; name the platform after its row there and drop hardware"
            )
        if p["import_only"] and p.get("imported"):
            raise ConfigError(
                f"config key platforms.{name}: import_only (cells copied from another machine) and "
                "imported (cells built here from an external power log) exclude each other; keep one"
            )
        imported = p.get("imported")
        if imported:
            _check_file(imported["power_log"], f"platforms.{name}.imported.power_log", "a power log")
            _check_file(imported["timing"], f"platforms.{name}.imported.timing", "a timing CSV")
        spec = platform_spec(config, name)
        if measures_platform(config, name):
            if p["import_only"] or p.get("imported"):
                raise ConfigError(
                    f"config key platforms.{name}.spec.measure: the cells of platform {name!r} "
                    f"ran on another machine ({'import_only' if p['import_only'] else 'imported'}), "
                    "so this machine's peaks would not describe them; give that machine's numbers "
                    f"in platforms.{name}.spec (its results/<study>/platforms/{name}/spec.json holds them "
                    "where it measured them), or drop measure"
                )
            if spec.kind != "cpu":
                raise ConfigError(
                    f"config key platforms.{name}.spec.measure: measures a CPU's matmul peak and "
                    f"copy bandwidth (tokencarbon.peak), and platform {name!r} is a {spec.kind}; "
                    "give its numbers in platforms.<name>.spec instead, or drop measure"
                )
        limit = p["memory_limit_gb"]
        if limit is not None and limit > spec.memory_gb:
            raise ConfigError(
                f"config key platforms.{name}.memory_limit_gb: {limit} GB is more than the "
                f"platform's {spec.memory_gb} GB; give at most {spec.memory_gb}, or null for the "
                "whole device"
            )
        backend = config["backend"]["name"]
        if backend == "tensorrt_llm" and spec.kind == "cpu" and name in measured_platforms(config):
            raise ConfigError(
                f"config key backend.name: 'tensorrt_llm' runs on GPUs only, and platform {name!r} "
                "is a CPU measured here; use backend.name 'torch' or 'transformers' for it"
            )


def _check_families(config: dict[str, Any]) -> None:
    source = config["workload"]["source"]
    for name, family in config["families"].items():
        if family["min_tokens"] > family["max_tokens"]:
            raise ConfigError(
                f"config key families.{name}: min_tokens {family['min_tokens']} is larger than "
                f"max_tokens {family['max_tokens']}; need min_tokens <= max_tokens"
            )
        tokenizer = family["tokenizer"]
        if tokenizer == "builtin":
            if source.startswith("hf:"):
                raise ConfigError(
                    f"config key families.{name}.tokenizer: 'builtin' trains on the workload's "
                    f"text, which an 'hf:' source ({source}) does not give as a file; use a local "
                    "Hugging Face tokenizer directory or a cached id"
                )
        else:
            _check_hub_or_path(
                tokenizer,
                f"families.{name}.tokenizer",
                "'builtin', a local Hugging Face tokenizer directory, or a cached hub id",
                needs=TOKENIZER_FILES,
            )


@functools.lru_cache(maxsize=None)
def _resolved(architecture: str, checkpoint: str | None, name: str, workflow_dir: str | None):
    from tokencarbon.models import resolve_architecture

    model = {"name": name, "architecture": architecture, "checkpoint": checkpoint}
    return resolve_architecture(model, workflow_dir)


def resolve_model_architecture(config: dict[str, Any], name: str, workflow_dir=None):
    """models.<name>'s Architecture: a resources/models name (checked against its checkpoint's
    config.json when one is set) or "auto" (read from the checkpoint). Cached per process."""
    m = config["models"][name]
    return _resolved(
        m["architecture"], m["checkpoint"], name, None if workflow_dir is None else str(workflow_dir)
    )


def _check_models(config: dict[str, Any], workflow_dir) -> None:
    for name, model in config["models"].items():
        if model["checkpoint"] and _local_path(model["checkpoint"]):
            _check_hub_or_path(
                model["checkpoint"],
                f"models.{name}.checkpoint",
                "a local Hugging Face model directory (config.json and weights), a cached hub "
                "id, or null for dummy weights",
                needs=WEIGHT_FILES,
            )
        if model["family"] not in config["families"]:
            raise ConfigError(
                f"config key models.{name}.family: {model['family']!r} is not a key of families; "
                f"valid families: {', '.join(config['families'])}"
            )
        arch = resolve_model_architecture(config, name, workflow_dir)
        _check_quantization(config, name, arch)
        longest = 2 * config["families"][model["family"]]["max_tokens"]
        if longest > arch.max_positions:
            raise ConfigError(
                f"config key families.{model['family']}.max_tokens: a request may need "
                f"{longest} positions (prompt + answer), more than {arch.name}'s "
                f"max_positions {arch.max_positions} (model {name}); lower max_tokens to at most "
                f"{arch.max_positions // 2}"
            )


def check_model_vocabulary(config: dict[str, Any], name: str, workflow_dir=None) -> None:
    """A model's cells (and its probe) refuse a workload holding token ids outside its vocabulary;
    the builtin tokenizer's ids run up to workload.builtin_vocab_size - 1. Called when the DAG
    plans a job that runs the model (Plan.engine_manifest), so a DAG of figures 1 and 2a
    alone is not refused. ConfigError naming the key, both sizes and the fix."""
    model = config["models"][name]
    vocab = config["workload"]["builtin_vocab_size"]
    if config["families"][model["family"]]["tokenizer"] != "builtin":
        return
    arch = resolve_model_architecture(config, name, workflow_dir)
    if vocab > arch.vocab_size:
        raise ConfigError(
            f"config key workload.builtin_vocab_size: {vocab} is more than the vocabulary of "
            f"{arch.name} ({arch.vocab_size}, model {name}, family {model['family']} with the "
            f"builtin tokenizer): its cells would refuse the workload's token ids; give at most "
            f"{arch.vocab_size}"
        )


def _check_quantization(config: dict[str, Any], name: str, arch) -> None:
    """models.<name>.quantization: a scheme torchao runs for this model, dtype, backend and every
    platform measured here (tokencarbon.quantization). int4_weight_only needs dtype bfloat16 and
    GPU platforms (torchao 0.18's tinygemm kernel is CUDA- and bf16-only); the tensorrt_llm backend
    runs no torchao scheme; transformers' GPT-2 holds its projections in Conv1D modules, which
    torchao's nn.Linear filter passes over."""
    from tokencarbon.quantization import INT4, INT8, parse_quantization

    model, key = config["models"][name], f"models.{name}.quantization"
    q = parse_quantization(model.get("quantization"), key)
    if not q.quantized:
        return
    backend = config["backend"]["name"]
    if backend == "tensorrt_llm":
        raise ConfigError(
            f"config key {key}: {q.label()!r} is applied through torchao, which the tensorrt_llm "
            "backend does not run; use backend.name 'torch' or 'transformers', or quantization "
            "'none'"
        )
    if backend == "transformers" and arch.family == "gpt2":
        raise ConfigError(
            f"config key {key}: {q.label()!r} on GPT-2 ({arch.name}) with the transformers backend: "
            "transformers' GPT-2 holds attention and MLP weights in Conv1D modules, which torchao "
            "does not quantize (its filter takes nn.Linear); use backend.name 'torch' for it, or "
            "quantization 'none'"
        )
    if q.scheme == INT4:
        if model["dtype"] != "bfloat16":
            raise ConfigError(
                f"config key {key}: {q.label()!r} with models.{name}.dtype {model['dtype']!r}; "
                "torchao's int4 tinygemm kernel (tile_packed_to_4d) takes bfloat16 weights only: "
                f"set models.{name}.dtype to bfloat16, or use quantization {INT8!r} (any dtype)"
            )
        cpus = [p for p in measured_platforms(config) if platform_spec(config, p).kind == "cpu"]
        if cpus:
            raise ConfigError(
                f"config key {key}: {q.label()!r}, and platform(s) {cpus} measured here are CPUs; "
                "torchao 0.18 has no CPU kernel for int4 weight-only (tinygemm needs CUDA, compute "
                "capability >= 8.0; its other int4 formats need CUDA too): measure this model on "
                f"GPU platforms only, or use quantization {INT8!r} on the CPU"
            )


def _check_workload(config: dict[str, Any]) -> None:
    source = config["workload"]["source"]
    if source == "synthetic":
        return
    if source.startswith("hf:"):
        _check_hub_or_path(
            source.removeprefix("hf:"),
            "workload.source",
            "'synthetic', a ShareGPT JSON file, 'hf:<folder of ShareGPT JSON files>' or "
            "'hf:<dataset id in the local cache>'",
            repo_type="dataset",
        )
        return
    _check_file(source, "workload.source", "a ShareGPT-format JSON file (or 'synthetic', or "
                "'hf:<dataset id>')")  # fmt: skip


def _check_carbon(config: dict[str, Any]) -> None:
    carbon = config["carbon"]
    if carbon["source"] == "trace":
        if not carbon["trace"]:
            raise ConfigError(
                "config key carbon.trace: carbon.source is 'trace' but no trace file is given; set "
                "carbon.trace to an Electricity Maps CSV export or carbon.source to 'constant'"
            )
        _check_file(carbon["trace"], "carbon.trace", "an Electricity Maps CSV export (hourly)")
    if carbon["trace_day"] is not None:
        try:
            dt.date.fromisoformat(carbon["trace_day"])
        except ValueError:
            raise ConfigError(
                f"config key carbon.trace_day: {carbon['trace_day']!r} is no calendar day; give "
                "a UTC day as YYYY-MM-DD, or null"
            ) from None
    if carbon["source"] == "trace" and carbon["trace_day"] is not None:
        # Figure 6a and the time-shift what-if read the trace's 24 hours of that day: a day the
        # trace does not give (under carbon.fill) fails those jobs; refused here instead.
        from tokencarbon.carbon import CarbonAccounting
        from tokencarbon.errors import InputError

        try:
            CarbonAccounting.from_config(carbon).day(carbon["trace_day"])
        except InputError as exc:
            raise ConfigError(f"config key carbon.trace_day: {carbon['trace_day']!r}: {exc}") from None


# The paged engine's settings and their defaults (backends/serving.py; the schema's `serving`).
PAGED_DEFAULTS = {"gpu_memory_utilization": 0.9, "block_size": 64, "max_num_batched_tokens": 2048}


def _check_sweep(config: dict[str, Any]) -> None:
    sweep, backend = config["sweep"], config["backend"]["name"]
    n_prompts = config["workload"]["num_prompts"]
    batches, seqs = sweep["batch_sizes"], sweep["max_num_seqs"]
    if batches == [] and backend != "openai_server":
        raise ConfigError(
            f"config key sweep.batch_sizes: [] with backend.name {backend!r}; list the batch "
            "sizes to measure (1 among them) or 'auto' ([] is for backend.name openai_server, "
            "whose cells are all continuous)"
        )
    if batches != "auto" and batches:
        if max(batches) > sweep["max_batch"]:
            raise ConfigError(
                f"config key sweep.batch_sizes: {max(batches)} exceeds sweep.max_batch "
                f"{sweep['max_batch']}; raise max_batch or drop that batch size"
            )
        if 1 not in batches:
            raise ConfigError(
                f"config key sweep.batch_sizes: {sorted(batches)} has no batch size 1; figure 5 "
                "(MFU at batch 1), figure 7 and the summary's headlines are measured against batch "
                "1: add it"
            )
    for key, sizes, what in (
        ("batch_sizes", batches, "batch"),
        ("max_num_seqs", seqs, "concurrency"),
    ):
        if sizes == "auto":
            continue
        over = sorted(n for n in sizes if n > n_prompts)
        if over:
            raise ConfigError(
                f"config key sweep.{key}: {over} exceed workload.num_prompts {n_prompts}; a cell "
                f"labelled with a {what} it never reaches would measure the {n_prompts}-request "
                f"case under another name: drop them, or raise num_prompts to {max(over)}"
            )
    measured = measured_platforms(config)
    if measured and backend != "torch":
        for key, sizes in (("batch_sizes", batches), ("max_num_seqs", seqs)):
            if sizes == "auto":
                # The probe finds what the torch engine fits; another backend's memory is another
                # matter (TensorRT-LLM sizes its KV cache up front and queues what does not fit).
                raise ConfigError(
                    f"config key sweep.{key}: 'auto' takes its sizes from the OOM probe, which "
                    f"runs the torch backend only, and backend.name is {backend!r}; list the sizes "
                    f"to measure, each at most sweep.max_batch {sweep['max_batch']} (the "
                    "max_batch_size every engine is built with), e.g. [1, 2, 4, 8]"
                )
    if backend == "tensorrt_llm" and seqs and measured:
        raise ConfigError(
            "config key sweep.max_num_seqs: backend.name 'tensorrt_llm' has no continuous-batching "
            "engine wired into cells; set max_num_seqs to [] or use backend.name 'torch' or "
            "'transformers'"
        )
    if backend == "transformers" and measured:
        _check_attention(config["backend"]["transformers"]["attn_implementation"])
    serving = config["serving"]
    budget = serving.get("max_num_batched_tokens", PAGED_DEFAULTS["max_num_batched_tokens"])
    largest = max(seqs) if seqs not in ("auto", None) and len(seqs) else 0
    if largest > budget:
        raise ConfigError(
            f"config key serving.max_num_batched_tokens: {budget} tokens per step cannot hold "
            f"sweep.max_num_seqs {largest} decode rows (one token each); raise it to at least "
            f"{largest}"
        )
    if serving["arrival"] == "poisson" and serving["request_rate_per_s"] is None:
        raise ConfigError(
            "config key serving.request_rate_per_s: arrival 'poisson' needs a rate (requests per "
            "second, > 0); set it, or arrival to 'offline'"
        )


def _check_attention(name: str) -> None:
    """backend.transformers.attn_implementation: "eager", an implementation transformers registers
    (AttentionInterface: sdpa, flash_attention_2, flex_attention, ...; "paged|" variants), or a
    kernels-hub id ("org/repo"), which only loading can check."""
    from transformers import AttentionInterface

    valid = sorted({"eager", *AttentionInterface().valid_keys()})
    bare = name.removeprefix("paged|")
    if "/" in bare or bare in valid or name in valid:
        return
    raise ConfigError(
        f"config key backend.transformers.attn_implementation: {name!r} is no attention "
        f"implementation of this transformers; valid: {', '.join(valid)} (or a kernels hub id)"
    )


def check_config(config: dict[str, Any], workflow_dir: str | Path | None = None) -> None:
    """Raise ConfigError naming the key path (and what would be valid) for what the schema cannot
    check: non-finite numbers, names unfit for paths, unknown platforms and architectures, a
    checkpoint disagreeing with its architecture, missing files and directories, cross-key
    conflicts. workflow_dir: the workflow's folder (resources/ beside it). Hardware: check_hardware.
    """
    for path, value in _non_finite(config, ""):
        raise ConfigError(
            f"config key {path}: {value} is not a finite number; every number in the config must "
            "be finite (config/README.md gives each key's range)"
        )
    _check_names(config)
    _check_platforms(config)
    _check_families(config)
    _check_models(config, workflow_dir)
    _check_workload(config)
    _check_carbon(config)
    if config["backend"]["name"] == "openai_server":
        check_server_config(config)  # before the sweep's checks, whose advice is for our engines
    _check_sweep(config)


SERVER_KEY = "backend.openai_server"


def check_server_config(config: dict[str, Any]):
    """backend.name openai_server: its options (openai_server.server_settings: the schema and
    what a schema cannot say) and how its cells fit the study, before any job; returns the
    ServerSettings.

    Refused, by ConfigError naming the key, the value and what is valid: sweep.batch_sizes other
    than [] (a server has no static batches); sweep.max_num_seqs 'auto' (no OOM probe measures a
    server) or []; a quantized model (the server loads its own weights); for each platform measured
    here, a server on another host (server_gpus.check_server_host: its energy needs an imported
    power log), a CPU platform without server_pid (the modeled CPU power source samples the
    server's process tree) or with gpus, a GPU platform whose server does not run on exactly one
    named GPU (one sidecar per cell: several GPUs are not wired yet). No connection is made
    (check_server_reachable does, where jobs will run)."""
    from tokencarbon.backends.openai_server import server_settings
    from tokencarbon.backends.server_gpus import check_server_host

    settings = server_settings(config["backend"].get("openai_server"))
    sweep = config["sweep"]
    if sweep["batch_sizes"] != []:
        raise ConfigError(
            f"config key sweep.batch_sizes: {sweep['batch_sizes']!r} with backend.name "
            "'openai_server'; a server is measured by continuous-batching cells only (cb<n>): set "
            "sweep.batch_sizes: [] and list sweep.max_num_seqs"
        )
    if sweep["max_num_seqs"] in ("auto", []):
        raise ConfigError(
            f"config key sweep.max_num_seqs: {sweep['max_num_seqs']!r} with backend.name "
            "'openai_server'; 'auto' reads the OOM probe, which cannot measure a server: list the "
            "requests in flight to measure, e.g. [1, 4, 16], each at most the server's own limit "
            "(vLLM --max-num-seqs, trtllm-serve --max_batch_size)"
        )
    for name, m in config["models"].items():
        if m.get("quantization") not in (None, "none"):
            raise ConfigError(
                f"config key models.{name}.quantization: {m['quantization']!r} with backend.name "
                "'openai_server'; the server runs the weights it loaded: remove the key (quantize "
                "on the server) and name its checkpoint's architecture"
            )
    for platform in measured_platforms(config):
        kind = platform_spec(config, platform).kind
        check_server_host(settings.base_url, settings.gpus, None, platform, kind)
        _check_server_devices(settings, platform, kind)
    return settings


def _check_server_devices(settings, platform: str, kind: str) -> None:
    """A server cell's devices on a platform measured here (check_server_config)."""
    if kind == "cpu" and settings.gpus:
        raise ConfigError(
            f"config key {SERVER_KEY}.gpus: {list(settings.gpus)} on the CPU platform "
            f"{platform!r}; a CPU platform's server runs on its CPUs: set gpus: [] (or measure a "
            "GPU platform)"
        )
    if kind == "cpu" and settings.server_pid is None:
        raise ConfigError(
            f"config key {SERVER_KEY}.server_pid: null on the CPU platform {platform!r}; its power "
            "is modeled from the CPU time of the server's process tree, so name the server's main "
            "process (e.g. `pgrep -f 'transformers serve'`)"
        )
    if kind == "gpu" and len(settings.gpus) != 1:
        raise ConfigError(
            f"config key {SERVER_KEY}.gpus: {list(settings.gpus)} on the GPU platform "
            f"{platform!r}; a server cell samples one GPU (one power sidecar per cell): name the "
            "one GPU the server runs on (NVML index or UUID); servers over several GPUs are not "
            "wired into cells yet (docs/server.md)"
        )


def check_server_reachable(config: dict[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """Where server cells will run: the server answers at base_url, serves `model`, takes the API
    key (from the variable api_key_env names), and server_pid runs. Raises ServerUnavailableError
    naming base_url, ConfigError naming the key (a model not served, listing the served ones; an
    unset key variable; a pid that does not run), ServerError for an answer that is no model
    list. One GET of base_url/models, before any job."""
    import os

    from tokencarbon.backends.openai_server import api_key, list_models, server_settings
    from tokencarbon.backends.server_gpus import process_tree

    settings = server_settings(config["backend"].get("openai_server"))
    list_models(settings, api_key(settings, os.environ if environ is None else environ))
    if settings.server_pid is not None:
        process_tree(settings.server_pid)


SCHEMA = Path("workflow/schemas/config.schema.yaml")


def prepare_config(config: Mapping[str, Any], workflow_dir: str | Path) -> dict[str, Any]:
    """The config as every job reads it: --config strings turned into the schema's types
    (coerce_cli_strings), YAML 1.1's misreadings refused (normalize_config_values), validated
    against workflow/schemas/config.schema.yaml under workflow_dir with its defaults filled in
    (snakemake.utils.validate), then check_config. What common.smk does when the DAG is built, and
    what a tool outside Snakemake (doctor, a chunked study runner) does to plan the same study.
    Raises ConfigError naming the key (schema_error_message) and what would be valid."""
    import copy

    import yaml
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    schema_path = Path(workflow_dir) / SCHEMA
    schema = yaml.safe_load(schema_path.read_text())
    out = normalize_config_values(coerce_cli_strings(copy.deepcopy(dict(config)), schema), schema)
    try:
        validate(out, schema=str(schema_path))
    except WorkflowError as exc:
        # snakemake.utils.validate raises inside its `except ValidationError` block
        cause = exc.__context__
        if not hasattr(cause, "absolute_path"):
            raise
        raise ConfigError(schema_error_message(cause)) from None
    check_config(out, workflow_dir)
    return out


def load_config(path: str | Path, workflow_dir: str | Path) -> dict[str, Any]:
    """A config file as the DAG reads it with --configfile: load_yaml_strict, then
    prepare_config. Raises ConfigError naming the file, line or key."""
    return prepare_config(load_yaml_strict(path) or {}, workflow_dir)


# ---------------------------------------------------------------- hardware


def check_hardware(config: dict[str, Any], visible: Mapping[str, Any]) -> None:
    """Raise HardwareMismatchError unless each platform measured here is a device visible here.

    visible: hardware.visible_devices() ({"cpu": model name, "gpus": [NVML names], "gpu_note"}).
    Each measured platform's row, with config's spec overrides, is resolved against the CPU or
    each visible GPU (platforms.resolve_platform); the error names every platform that fits no
    visible device and what is visible. import_only and imported platforms are not checked.
    """
    from tokencarbon.platforms import resolve_platform

    problems = []
    for name in measured_platforms(config):
        overrides = platform_overrides(config, name)
        limit = config["platforms"][name]["memory_limit_gb"]
        spec = platform_spec(config, name)
        if spec.kind == "cpu":
            candidates = [visible["cpu"]]
        elif not visible["gpus"]:
            problems.append(
                f"platforms.{name}: needs a GPU whose name matches {spec.device_name_pattern!r} "
                "(resources/platforms.csv), and no GPU is visible"
            )
            continue
        else:
            candidates = list(visible["gpus"])
        errors = []
        for device in candidates:
            try:
                resolve_platform(name, device, overrides, memory_limit_gb=limit,
                                 row=platform_row(config, name))  # fmt: skip
                break
            except (HardwareMismatchError, ConfigError) as e:
                errors.append(str(e))
        else:
            problems.append(f"platforms.{name}: {errors[0]}" if len(errors) == 1 else
                            f"platforms.{name}: no visible device fits it ({'; '.join(errors)})")  # fmt: skip
    if problems:
        gpus = ", ".join(repr(g) for g in visible["gpus"]) or f"none ({visible.get('gpu_note')})"
        raise HardwareMismatchError(
            "config: platform(s) measured here are not this machine's hardware, so no job is "
            f"started. {' | '.join(problems)}. Visible here: CPU {visible['cpu']!r}; NVIDIA GPUs: "
            f"{gpus}. Run on the machine each platform is, mark a platform measured elsewhere "
            "import_only (its cells copied in), or measure platform 'cpu' here"
        )


def check_copied_cells(
    config: dict[str, Any], name: str, devices: Iterable[str], measured: Mapping[str, float] | None
) -> None:
    """Raise ConfigError unless import_only platform `name` describes every device its copied
    cells ran on (their meta.json device_name), as compute_metrics will resolve it: config's spec
    and, where copied in with the cells, the other machine's measurement (results/<study>/platforms/
    <name>/spec.json, its "measured" peaks). Called when the DAG is built, so a cpu platform
    measured on another CPU fails before any job, naming the device and the keys to give."""
    from tokencarbon.platforms import resolve_platform

    from tokencarbon.layout import study_name, study_root

    root = study_root(study_name(config))
    overrides = platform_overrides(config, name)
    for device in sorted(set(devices)):
        try:
            resolve_platform(name, device, overrides, measured, row=platform_row(config, name))
        except (HardwareMismatchError, ConfigError) as e:
            raise ConfigError(
                f"config key platforms.{name}: its copied cells ({root}/cells/{name}/) ran on "
                f"{device!r}, which the platform does not describe here: {e}. For cells measured "
                f"with spec.measure elsewhere, copy that machine's {root}/platforms/{name}/"
                f"spec.json beside them (its peaks are used) and give its tdp_w and logical_cpus "
                f"in platforms.{name}.spec"
            ) from None




# ---------------------------------------------------------------- what metrics will need


def cell_windows(cell_dir: str | Path) -> list[tuple[str, int, int]]:
    """(label, start_wall_ns, end_wall_ns) of each measured window of a finished cell (its
    batches.parquet), the windows metrics give carbon to."""
    import pyarrow.parquet as pq

    cell_dir = Path(cell_dir)
    table = pq.read_table(cell_dir / "batches.parquet", columns=["start_wall_ns", "end_wall_ns"])
    label = f"cell {'/'.join(cell_dir.parts[-3:])}"
    return [
        (label, int(s), int(e))
        for s, e in zip(table["start_wall_ns"].to_pylist(), table["end_wall_ns"].to_pylist())
    ]


def check_trace_coverage(config: dict[str, Any], windows: Iterable[tuple[str, int, int]]) -> None:
    """With carbon.source trace, every window (cells' known times, and the time cells measured in
    this run start at) must get an intensity from the trace under carbon.fill and max_fill_s, as
    compute_metrics will ask; else ConfigError naming carbon.trace, the cell, the window and the
    fix. Checked when the DAG is built: a compute_metrics job failing on it would have Snakemake
    delete the metrics table it replaces."""
    carbon = config["carbon"]
    if carbon["source"] != "trace":
        return
    from tokencarbon.carbon import CarbonAccounting
    from tokencarbon.errors import InputError

    try:
        accounting = CarbonAccounting.from_config(carbon)
    except InputError as exc:
        raise ConfigError(f"config key carbon.trace: {exc}") from None
    found = accounting.first_uncovered(windows)
    if found is not None:
        label, exc = found
        raise ConfigError(
            f"config key carbon.trace: {label}: {exc} (metrics would refuse it after every cell "
            "ran; checked before any job)"
        )


def check_pool_holds_num_prompts(config: dict[str, Any], family: str, pool: str | Path) -> None:
    """workload.num_prompts against the filtered pool of `family` already on disk, when the DAG is
    built: rule sample_workload would refuse more than the pool holds, and Snakemake deletes a
    failed job's output, so the workload every cell was measured on would be gone and restoring
    the config would re-measure every cell. The pool's size is known only once it is built: a
    pool not yet built is not checked (its sample is made in the same run, after it). ConfigError
    naming the key, the value, the pool's size and the fixes."""
    import pyarrow.parquet as pq

    pool = Path(pool)
    if not pool.is_file():
        return
    n = config["workload"]["num_prompts"]
    try:
        size = pq.read_metadata(pool).num_rows
    except Exception:  # a pool that cannot be read is rebuilt by its own rule's checks
        return
    if n > size:
        f = config["families"][family]
        raise ConfigError(
            f"config key workload.num_prompts: {n} requests, and the filtered pool of family "
            f"{family} ({pool}) holds {size}: sample_workload would refuse it after deleting the "
            f"workload the cells were measured on. Give at most {size}, or let the filter keep more "
            f"(families.{family}.min_tokens {f['min_tokens']} / max_tokens {f['max_tokens']}, "
            "workload.synthetic_conversations, another workload.source); if this run rebuilds "
            f"that pool with such a change, build it first: snakemake {pool}"
            + (" (a synthetic pool grows to hold num_prompts when it is rebuilt)"
               if config["workload"]["source"] == "synthetic" else "")  # fmt: skip
        )
