# Imported platforms: cells built from an external power log and a timing file
# (platforms.<name>.imported in the config; docs/import.md), never measured here. Their cells are in
# the measured cells' schemas, so aggregation, metrics, figures and export cover them. The helpers
# live in tokencarbon.importing (unit-tested there), bound here to this workflow's config.
import functools

from tokencarbon import importing as _importing

IMPORTED_SOURCE = _importing.imported_platforms(config)
IMPORTED_SOURCE_PATTERN = "|".join(IMPORTED_SOURCE) or "(?!)"
# (platform, model) -> batch sizes in the timing file; common.smk's batch_sizes calls it.
imported_source_batch_sizes = functools.partial(
    _importing.imported_batch_sizes, config, MODELS
)
imported_inputs = functools.partial(
    _importing.import_cell_inputs, config, code_inputs("import_cell")
)
imported_params = functools.partial(_importing.import_cell_params, config)


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
