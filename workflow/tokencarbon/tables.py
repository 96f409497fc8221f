"""Schemas of every table tokencarbon writes, written once and checked where tables are read.

docs/data.md documents each column; SI units, with the unit in the column name.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tokencarbon.errors import SchemaError

# Workload sample: one row per request a model will serve.
WORKLOAD = pa.schema(
    [
        ("request_id", pa.string()),
        ("prompt", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("prompt_token_ids", pa.list_(pa.int64())),  # the prompt as the family tokenizer encodes it
    ]
)

# One row per measured window of one cell. A static cell (mode "static", bs{n}) has one row per
# static batch of each repeat; a continuous-batching cell (mode "continuous", cb{n}) has one row per
# repeat: the whole request set served as one window (start: the first arrival; first_token: the
# first request's first token; end: the last request's last token; padded_input_len 0).
BATCHES = pa.schema(
    [
        ("repeat", pa.int64()),  # 0-based repeat of the cell's measured work (run.repeats)
        ("batch_index", pa.int64()),  # 0-based within its repeat
        ("n_requests", pa.int64()),
        ("input_tokens", pa.int64()),  # real prompt tokens, padding excluded
        ("output_tokens", pa.int64()),  # generated tokens summed over requests
        ("padded_input_len", pa.int64()),
        ("max_output_tokens", pa.int64()),
        ("start_ns", pa.int64()),  # time.monotonic_ns()
        ("first_token_ns", pa.int64()),  # end of prefill: first token of every request exists
        ("end_ns", pa.int64()),
        ("start_wall_ns", pa.int64()),  # time.time_ns(), to align with power samples and traces
        ("first_token_wall_ns", pa.int64()),
        ("end_wall_ns", pa.int64()),
        ("prompt_lens", pa.list_(pa.int64())),  # per request, real tokens (for FLOPs and bytes)
        ("output_lens", pa.list_(pa.int64())),  # per request, tokens generated
    ]
)

# Continuous-batching cells: one row per request per repeat (requests.parquet).
REQUESTS = pa.schema(
    [
        ("repeat", pa.int64()),
        ("request_id", pa.string()),
        ("input_tokens", pa.int64()),  # real prompt tokens
        ("output_tokens", pa.int64()),  # tokens generated (exactly the reference output length)
        ("arrival_ns", pa.int64()),  # time.monotonic_ns() when the request entered the queue
        ("first_token_ns", pa.int64()),  # its first output token exists (end of its prefill)
        ("finish_ns", pa.int64()),  # its last output token exists
        ("arrival_wall_ns", pa.int64()),  # time.time_ns() at the same three points
        ("first_token_wall_ns", pa.int64()),
        ("finish_wall_ns", pa.int64()),
        ("preemptions", pa.int64()),  # times its KV was given back to be recomputed; null: unknown
    ]
)

# Continuous-batching cells: one row per engine step per repeat (steps.parquet), for sharing energy
# among requests. Steps of a repeat tile its window: step k's energy window is
# [start_wall_ns[k], start_wall_ns[k + 1]) and the last step's ends at the repeat's end.
STEPS = pa.schema(
    [
        ("repeat", pa.int64()),
        ("step_index", pa.int64()),
        ("kind", pa.string()),  # "prefill", "decode" or "mixed"
        ("start_ns", pa.int64()),  # time.monotonic_ns() when the step was launched
        ("end_ns", pa.int64()),  # its results were on the host (synchronised)
        ("start_wall_ns", pa.int64()),
        ("end_wall_ns", pa.int64()),
        ("request_ids", pa.list_(pa.string())),  # requests that had tokens in the step
        ("request_tokens", pa.list_(pa.int64())),  # tokens each of them processed in the step
        ("new_tokens", pa.list_(pa.int64())),  # output tokens it generated for each; null: unknown
    ]
)

# One row per power sample of the sidecar (or an imported nvidia-smi log).
POWER = pa.schema(
    [
        ("t_wall_ns", pa.int64()),
        ("phase", pa.string()),  # "idle" (before the cell) or "run"
        ("source", pa.string()),  # "nvml", "modeled_cpu", "nvidia_smi_csv"
        ("modeled", pa.bool_()),  # True when power is an estimate, not a reading
        ("device_index", pa.int64()),
        ("power_w", pa.float64()),  # instant power
        ("power_avg_w", pa.float64()),  # driver's 1 s average, NaN where absent
        ("energy_counter_j", pa.float64()),  # cumulative energy counter, NaN where absent
        ("util_pct", pa.float64()),
        ("mem_used_bytes", pa.float64()),
        ("temperature_c", pa.float64()),
        ("sm_clock_mhz", pa.float64()),
        ("mem_clock_mhz", pa.float64()),
        ("throttle_reasons", pa.int64()),  # NVML clocks-event bitmask, -1 where absent
    ]
)

# One row per cell (aggregated from each cell's meta.json).
CELLS = pa.schema(
    [
        ("platform", pa.string()),
        ("model", pa.string()),
        ("mode", pa.string()),  # "static" (bs{n}) or "continuous" (cb{n})
        ("batch_size", pa.int64()),  # static: batch size; continuous: max_num_seqs
        ("architecture", pa.string()),
        ("dtype", pa.string()),
        ("quantization", pa.string()),  # weight-only scheme: "none", "int4_weight_only", ...
        ("quant_group_size", pa.int64()),  # int4's group size; null for none and int8 (per row)
        ("quant_library", pa.string()),  # "torchao 0.18.0"; "" for none
        ("backend", pa.string()),
        ("device_name", pa.string()),
        # the GPU's UUID (NVML, meta.json hardware.gpu.uuid): cards of one model differ (idle power
        # 114 and 124-132 W among the H100s of 2026-12-07); null on CPUs and imported cells
        ("gpu_uuid", pa.string()),
        ("arrival", pa.string()),  # "offline" (static cells, offline cb) or "poisson"
        ("request_rate_per_s", pa.float64()),  # Poisson arrivals' rate; NaN otherwise
        ("n_requests", pa.int64()),  # requests in the workload, served once per repeat
        ("n_batches", pa.int64()),  # measured windows per repeat: static batches; 1 for cb
        ("repeats", pa.int64()),  # run.repeats: times the measured work ran, each its own window
        ("max_batch_requests", pa.int64()),  # most requests served at once (below batch_size: unfilled)
        ("warmup_batches", pa.int64()),
        ("window_start_wall_ns", pa.int64()),  # first measured batch's start
        ("window_end_wall_ns", pa.int64()),  # last measured batch's end
        ("idle_power_w", pa.float64()),  # mean power over the idle samples before the cell
        ("idle_shared", pa.bool_()),  # idle window reused from an earlier cell (power.idle_share_s)
        ("power_source", pa.string()),
        ("power_interval_s", pa.float64()),
        ("peak_memory_bytes", pa.float64()),  # device peak allocated (CUDA) or process RSS peak (CPU)
        ("foreign_cpu_share", pa.float64()),  # other processes' CPU time / (window x pinned CPUs)
        ("cpu_steal_share", pa.float64()),  # hypervisor steal on the pinned CPUs / (window x CPUs)
        ("foreign_gpu_processes", pa.int64()),  # other processes on the cell's GPU; -1 not measured
        ("git_commit", pa.string()),
    ]
)

# One row per cell: energy, carbon, per-token figures and utilisation (tokencarbon.metrics).
METRICS = pa.schema(
    [
        ("platform", pa.string()),
        ("model", pa.string()),
        ("mode", pa.string()),
        ("batch_size", pa.int64()),
        ("architecture", pa.string()),
        ("dtype", pa.string()),
        ("quantization", pa.string()),  # as CELLS: the model's weight-only scheme, "none" default
        ("quant_group_size", pa.int64()),  # null for none and int8
        ("quant_library", pa.string()),
        ("gpu_uuid", pa.string()),  # as CELLS: the card that measured the cell; null on CPUs
        ("n_requests", pa.int64()),
        ("n_repeats", pa.int64()),  # repeats measured (rows of METRICS_REPEATS)
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("window_s", pa.float64()),  # sum of the measured windows' durations (set-up between excluded)
        ("n_power_samples", pa.int64()),
        ("energy_method", pa.string()),  # "counter" (NVML), "integrated", "modeled" or "mixed"
        ("energy_j", pa.float64()),  # the primary measurement: counter where present and plausible
        ("energy_counter_j", pa.float64()),
        ("energy_integrated_j", pa.float64()),
        ("energy_relative_difference", pa.float64()),  # (integrated - counter) / counter
        ("qa_flags", pa.string()),  # ";"-joined, empty when none
        ("idle_power_w", pa.float64()),  # from the cell's phase "idle" samples (energy.idle_power)
        ("idle_energy_j", pa.float64()),
        ("above_idle_energy_j", pa.float64()),
        ("intensity_g_per_kwh", pa.float64()),  # energy-weighted mean over the window
        ("filled_share", pa.float64()),  # share of window_s whose intensity a fill policy supplied
        ("pue", pa.float64()),
        ("operational_g", pa.float64()),  # energy x PUE x intensity
        ("embodied_g", pa.float64()),  # low bound (dies + memory) amortised over the window
        ("embodied_g_high", pa.float64()),  # high bound (vendor PCF or scaled, + host share)
        ("carbon_g", pa.float64()),  # operational + embodied (low)
        ("j_per_token", pa.float64()),  # energy_j / output_tokens
        ("g_per_token", pa.float64()),  # operational_g / output_tokens (the study's carbon per token)
        ("g_per_token_with_embodied", pa.float64()),
        ("embodied_g_per_token_low", pa.float64()),
        ("embodied_g_per_token_high", pa.float64()),
        ("tokens_per_s", pa.float64()),  # output tokens / window_s
        ("s_per_token_user", pa.float64()),  # the study's user-perceived latency: mean over batches of
        # batch time / generated tokens per request (prefill included, no queueing); continuous: mean
        # over requests of (finish - arrival) / output_tokens
        ("e2e_s_per_token", pa.float64()),  # the latency figures compare across modes: mean over
        # requests of E2E latency / its output tokens, every request of a repeat arriving at its start
        # (static: the batches before its own and its own; docs/metrics.md "One latency axis")
        ("ttft_s", pa.float64()),  # mean time to first token
        ("tpot_s", pa.float64()),  # mean time per output token after the first
        ("ttft_p50_s", pa.float64()),  # percentiles over requests
        ("ttft_p90_s", pa.float64()),
        ("ttft_p99_s", pa.float64()),
        ("tpot_p50_s", pa.float64()),
        ("tpot_p90_s", pa.float64()),
        ("tpot_p99_s", pa.float64()),
        ("e2e_p50_s", pa.float64()),
        ("e2e_p90_s", pa.float64()),
        ("e2e_p99_s", pa.float64()),
        ("j_per_request", pa.float64()),  # mean energy per request (steps' energy shared by tokens)
        ("j_per_token_ci_low", pa.float64()),  # bootstrap interval of the mean over repeats
        ("j_per_token_ci_high", pa.float64()),
        ("g_per_token_ci_low", pa.float64()),
        ("g_per_token_ci_high", pa.float64()),
        ("tokens_per_s_ci_low", pa.float64()),
        ("tokens_per_s_ci_high", pa.float64()),
        ("s_per_token_user_ci_low", pa.float64()),
        ("s_per_token_user_ci_high", pa.float64()),
        ("e2e_s_per_token_ci_low", pa.float64()),
        ("e2e_s_per_token_ci_high", pa.float64()),
        ("j_per_token_cv", pa.float64()),  # coefficient of variation of J/token over repeats
        ("steady_window_s", pa.float64()),  # time in steady state (docs/metrics.md's rule)
        ("j_per_token_steady", pa.float64()),
        ("tokens_per_s_steady", pa.float64()),
        ("flops", pa.float64()),  # analytical FLOPs over the real tokens of every batch
        ("mfu", pa.float64()),  # flops / (window_s x dense peak FLOP/s of the dtype)
        ("bytes_moved", pa.float64()),  # weights + KV cache read per step, summed
        ("mbu", pa.float64()),  # bytes_moved / (window_s x peak memory bandwidth)
        ("spec_source", pa.string()),  # platform numbers: "datasheet", or which came from config/measured
    ]
)

# One row per repeat of each cell (tokencarbon.metrics): the figures the intervals are taken over.
METRICS_REPEATS = pa.schema(
    [
        ("platform", pa.string()),
        ("model", pa.string()),
        ("mode", pa.string()),
        ("batch_size", pa.int64()),
        ("repeat", pa.int64()),
        ("window_s", pa.float64()),
        ("output_tokens", pa.int64()),
        ("n_requests", pa.int64()),
        ("energy_j", pa.float64()),
        ("energy_method", pa.string()),
        ("qa_flags", pa.string()),
        ("operational_g", pa.float64()),
        ("j_per_token", pa.float64()),
        ("g_per_token", pa.float64()),
        ("tokens_per_s", pa.float64()),
        ("s_per_token_user", pa.float64()),
        ("e2e_s_per_token", pa.float64()),
    ]
)

# Time-shift what-if (tokencarbon.timeshift): one row per candidate start of a job on a chosen day.
TIMESHIFT = pa.schema(
    [
        ("job", pa.string()),  # what was shifted: "study" (every cell back to back) or a cell
        ("zone_id", pa.string()),  # the trace's zone; location-based intensity only
        ("basis", pa.string()),  # "direct" or "lifecycle"
        ("day", pa.string()),  # the UTC day whose hours are the candidate starts, YYYY-MM-DD
        ("start_wall_ns", pa.int64()),
        ("start_utc", pa.string()),  # ISO 8601
        ("energy_j", pa.float64()),  # the job's measured energy (before PUE)
        ("duration_s", pa.float64()),
        ("pue", pa.float64()),
        ("carbon_g", pa.float64()),  # operational carbon had the job started here
        ("intensity_g_per_kwh", pa.float64()),  # energy-weighted over the job
        ("saving_vs_actual_g", pa.float64()),  # carbon at the actual start - carbon here
        ("is_actual", pa.bool_()),  # the job's actual start (placed on the day)
        ("is_oracle_best", pa.bool_()),  # lowest carbon on the day: perfect foresight
        ("is_policy", pa.bool_()),  # the forecast-free policy's start: best on the previous day
    ]
)

# A cell is (platform, model, mode, batch_size); batch_size is max_num_seqs for continuous cells
# (plan.CellKey: its name and folder).
CELL_KEYS = [
    ("platform", pa.string()),
    ("model", pa.string()),
    ("mode", pa.string()),
    ("batch_size", pa.int64()),
]
# Integer columns that may be null (read as pandas' nullable Int64).
NULLABLE_INT_COLUMNS = ("quant_group_size", "preemptions")
# Columns added to a schema after cells were written with it, and what a table without one means:
# BATCHES.repeat (run.repeats: older cells ran their batches once, repeat 0), REQUESTS.preemptions
# and STEPS.new_tokens (issue 22: null, unknown), CELLS and METRICS gpu_uuid (null: not in the
# table; a cell's meta.json has it under hardware.gpu.uuid), so older tables stay readable.
ADDED_COLUMNS = {"repeat": 0, "preemptions": None, "new_tokens": None, "gpu_uuid": None}


def with_cell_keys(schema: pa.Schema) -> pa.Schema:
    """The aggregated form of a per-cell table: cell keys first."""
    return pa.schema(CELL_KEYS + list(zip(schema.names, schema.types)))


def check(df: pd.DataFrame, schema: pa.Schema, where: str | Path) -> pd.DataFrame:
    """Return df with its columns in schema order; raise SchemaError naming `where` otherwise.
    A column of ADDED_COLUMNS that df lacks is added with its value there."""
    added = [n for n in ADDED_COLUMNS if n in schema.names and n not in df.columns]
    if added:
        df = df.assign(**{n: ADDED_COLUMNS[n] for n in added})
    missing = [n for n in schema.names if n not in df.columns]
    if missing:
        raise SchemaError(
            f"{where}: missing column(s) {missing}; expected columns {schema.names}"
        )
    out = df[schema.names]
    try:
        table = pa.Table.from_pandas(out, schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise SchemaError(f"{where}: columns do not match their schema ({exc})") from exc
    result = table.to_pandas()
    for name in NULLABLE_INT_COLUMNS:  # integers with nulls stay integers (pandas Int64), not floats
        if name in result.columns:
            result[name] = result[name].astype("Int64")
    return result


def read(path: str | Path, schema: pa.Schema) -> pd.DataFrame:
    """Read a Parquet table and check it against its schema."""
    path = Path(path)
    try:
        df = pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowInvalid) as exc:
        raise SchemaError(f"{path}: not a readable Parquet file ({exc})") from exc
    return check(df, schema, path)


def write(df: pd.DataFrame, path: str | Path, schema: pa.Schema) -> None:
    """Check df against schema, then write it atomically (a temp file renamed into place)."""
    path = Path(path)
    df = check(df, schema, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pandas(df, schema=schema, preserve_index=False), tmp)
    tmp.replace(path)
