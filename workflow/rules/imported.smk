# Imported platforms: cells built from an external power log and a timing file
# (platforms.<name>.imported in the config; docs/import.md), never measured here. Their cells are in
# the measured cells' schemas, so aggregation, metrics, figures and export cover them.


def imported_spec(platform):
    """The platform's `imported` config slice (None where the platform is measured here)."""
    return config["platforms"][platform].get("imported")


IMPORTED_SOURCE = [p for p in PLATFORMS if imported_spec(p)]
IMPORTED_SOURCE_PATTERN = "|".join(IMPORTED_SOURCE) or "(?!)"


def imported_windows(platform):
    """The timing file's windows of an imported platform (read when the DAG is built)."""
    from tokencarbon.importing import read_timing

    spec = imported_spec(platform)
    windows = read_timing(
        spec["timing"],
        spec.get("tz"),
        model=spec.get("model"),
        platform=platform,
        batch_size=spec.get("batch_size"),
    )
    unknown = sorted(set(windows["model"]) - set(MODELS))
    if unknown:
        raise ConfigError(
            f"config key platforms.{platform}.imported.timing: {spec['timing']} names models "
            f"{unknown} that are not keys of models ({', '.join(MODELS)}); add them to models "
            "(architecture and dtype) or fix the timing file"
        )
    return windows


def imported_source_batch_sizes(platform, model):
    """Batch sizes of `model` in an imported platform's timing file (common.smk's batch_sizes
    returns these for platforms in IMPORTED_SOURCE)."""
    windows = imported_windows(platform)
    return sorted(
        int(b) for b in set(windows.loc[windows["model"] == model, "batch_size"])
    )


def imported_inputs(wildcards):
    spec = imported_spec(wildcards.platform)
    return {
        "power_log": spec["power_log"],
        "timing": spec["timing"],
        "code": code_inputs("import_cell"),
    }


def imported_params(wildcards):
    """What an imported cell depends on: the platform's imported slice and the model's
    architecture and dtype (plain builtins)."""
    model = config["models"][wildcards.model]
    return {
        "imported": dict(imported_spec(wildcards.platform)),
        "architecture": model["architecture"],
        "dtype": model["dtype"],
    }


rule import_cell:
    input:
        unpack(imported_inputs),
    output:
        batches="results/cells/{platform}/{model}/bs{batch}/batches.parquet",
        power="results/cells/{platform}/{model}/bs{batch}/power.parquet",
        meta="results/cells/{platform}/{model}/bs{batch}/meta.json",
    log:
        "logs/import_cell/{platform}/{model}/bs{batch}.log",
    wildcard_constraints:
        platform=IMPORTED_SOURCE_PATTERN,
    conda:
        "../envs/tokencarbon.yaml"
    params:
        spec=imported_params,
    script:
        "../scripts/import_cell.py"
