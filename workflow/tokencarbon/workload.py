"""The workload stage: load ShareGPT conversations, pair each first prompt with its answer, keep
pairs within token bounds (counting what was read, dropped and why), draw a seeded sample.

The synthetic ShareGPT-like generator lives in tokencarbon.synthetic (re-exported here).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from tokencarbon import tables
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.synthetic import synthetic_conversations, synthetic_vocabulary  # noqa: F401

HUMAN_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "chatgpt", "bard"}
SHAREGPT_SHAPE = 'a list of {"id": ..., "conversations": [{"from": str, "value": str}, ...]}'


def load_sharegpt(source: str, *, split: str = "train") -> list[dict]:
    """Read and validate ShareGPT-format conversations.

    `source` is a path to a ShareGPT JSON file, or "hf:<dataset>" for `datasets.load_dataset(
    <dataset>, split=split)`: a Hugging Face id already in the local cache (set HF_DATASETS_OFFLINE=1
    to never touch the network) or a local folder of ShareGPT JSON files.
    """
    if source.startswith("hf:"):
        dataset_id = source.removeprefix("hf:")
        where = f"dataset {dataset_id!r} (split {split!r})"
        records = _load_hf(dataset_id, split, where)
    else:
        where = source
        records = _load_json(Path(source))
    _validate(records, where)
    return records


def _load_json(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path}: cannot be read as UTF-8 text ({exc}); expected a ShareGPT JSON file"
        ) from exc
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            f"expected {SHAREGPT_SHAPE}"
        ) from exc
    if not isinstance(records, list):
        raise InputError(
            f"{path}: the top level is a JSON {type(records).__name__}, expected {SHAREGPT_SHAPE}"
        )
    return records


def _load_hf(dataset_id: str, split: str, where: str) -> list:
    import datasets  # slow to import; only the hf: path needs it

    try:
        return datasets.load_dataset(dataset_id, split=split).to_list()
    except (OSError, ValueError) as exc:  # not found / offline (OSError subclasses), unknown split
        raise InputError(
            f"{where} cannot be loaded ({exc}); expected a Hugging Face dataset id in the local cache "
            f"or a local folder of ShareGPT JSON files, with a split named {split!r}"
        ) from exc
    except datasets.exceptions.DatasetGenerationError as exc:
        # The library says only "An error occurred while generating the dataset"; its cause (an
        # Arrow schema mismatch) names neither file nor column. Find them where we can.
        folder = Path(dataset_id)
        conflict = _json_type_conflict(folder) if folder.is_dir() else None
        if conflict:
            raise InputError(f"{where}: {conflict}") from exc
        cause = exc.__cause__ or exc.__context__
        raise InputError(
            f"{where}: the datasets library could not build it ({exc}: "
            f"{str(cause).splitlines()[0] if cause else 'no cause given'}); every file of a "
            f"dataset must hold records of one shape ({SHAREGPT_SHAPE})"
        ) from exc


_JSON_TYPE = {str: "string", bool: "boolean", int: "integer", float: "number", list: "list",
              dict: "object"}  # fmt: skip


def _json_types(value, path: str, out: dict[str, set[str]]) -> None:
    """Collect the JSON type of `value` at `path`, and of what it holds (lists as path[])."""
    if value is None:
        return
    out.setdefault(path, set()).add(_JSON_TYPE.get(type(value), type(value).__name__))
    if isinstance(value, dict):
        for key, item in value.items():
            _json_types(item, f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, list):
        for item in value:
            _json_types(item, f"{path}[]", out)


def _json_type_conflict(folder: Path) -> str | None:
    """Which files of a folder of JSON / JSON Lines files disagree on a column's type, in words;
    None when they agree (or none can be read: then the library's own error stands)."""
    per_file: dict[str, dict[str, set[str]]] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix not in (".json", ".jsonl") or any(p.startswith(".") for p in path.parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        types: dict[str, set[str]] = {}
        for record in data if isinstance(data, list) else [data]:
            if isinstance(record, dict):
                for key, value in record.items():
                    _json_types(value, str(key), types)
        per_file[str(path.relative_to(folder))] = types
    columns = sorted({c for types in per_file.values() for c in types})
    for column in columns:
        seen = {f: t[column] for f, t in per_file.items() if column in t}
        mixed_in_one = {f: t for f, t in seen.items() if len(t) > 1}
        if mixed_in_one:
            f, t = next(iter(mixed_in_one.items()))
            return (
                f"column {column!r} holds {' and '.join(sorted(t))} values within {folder / f}; "
                f"write it as one type in every record"
            )
        if len({next(iter(t)) for t in seen.values()}) > 1:
            listing = ", ".join(f"{next(iter(t))} in {f}" for f, t in seen.items())
            return (
                f"the JSON files of {folder} disagree on the type of column {column!r}: "
                f"{listing}; write it as one type in every file (e.g. every 'id' as a string)"
            )
    return None


def _validate(records: list, where: str) -> None:
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(
                f"{where}: record {i} is a {type(record).__name__}, expected an object with a "
                f"'conversations' list ({SHAREGPT_SHAPE})"
            )
        rid = record.get("id")
        label = f"record {i}" if rid is None else f"record {i} (id {rid!r})"
        if isinstance(rid, str):
            _check_utf8(rid, f"{where}: {label}: its 'id'")
        turns = record.get("conversations")
        if not isinstance(turns, list):
            got = (
                "has no 'conversations'"
                if turns is None
                else f"has 'conversations' of type {type(turns).__name__}"
            )
            raise InputError(
                f"{where}: {label} {got}; expected a list of turns {{'from': str, 'value': str}}"
            )
        for j, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise InputError(
                    f"{where}: {label}, turn {j} is a {type(turn).__name__}; expected an object "
                    "{'from': str, 'value': str}"
                )
            for key in ("from", "value"):
                if not isinstance(turn.get(key), str):
                    got = (
                        "is missing"
                        if turn.get(key) is None
                        else f"is a {type(turn[key]).__name__}"
                    )
                    raise InputError(
                        f"{where}: {label}, turn {j}: {key!r} {got}; expected a string"
                    )
                _check_utf8(turn[key], f"{where}: {label}, turn {j}: {key!r}")


def _check_utf8(text: str, where: str) -> None:
    """Refuse text no UTF-8 file can hold: a lone UTF-16 surrogate, which JSON's "\\ud800" escape
    without its pair gives (json.loads accepts it; the tokenizer and Parquet do not)."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        around = text[max(exc.start - 20, 0) : exc.start + 20]
        raise InputError(
            f"{where} holds {text[exc.start]!r} at character {exc.start} (in {around!r}), a "
            "lone UTF-16 surrogate (a JSON \\ud800-\\udfff escape without its pair): no UTF-8 "
            "text holds it; remove or repair that escape (a pair such as \\ud83d\\ude00 is one "
            "character)"
        ) from None


# Why extract_pairs drops a conversation (PoolReport counts them under these names).
DROP_FEWER_THAN_2_TURNS = "fewer than 2 turns"
DROP_NO_ANSWERED_USER_TURN = "no first user turn answered by the assistant"


def _first_exchange(turns: list[dict]) -> tuple[str, str] | str:
    """(prompt, answer) of a conversation's first exchange, or why it has none."""
    if len(turns) < 2:
        return DROP_FEWER_THAN_2_TURNS
    first = next((j for j, t in enumerate(turns) if t["from"].lower() in HUMAN_ROLES), None)
    if first is None or first + 1 >= len(turns):
        return DROP_NO_ANSWERED_USER_TURN
    if turns[first + 1]["from"].lower() not in ASSISTANT_ROLES:
        return DROP_NO_ANSWERED_USER_TURN
    return turns[first]["value"], turns[first + 1]["value"]


def extract_pairs_counted(conversations: list[dict]) -> tuple[pd.DataFrame, Counter]:
    """extract_pairs, and how many conversations were dropped for each reason (DROP_*)."""
    rows = []
    dropped: Counter = Counter()
    used: set[str] = set()
    for i, record in enumerate(conversations):
        exchange = _first_exchange(record["conversations"])
        if isinstance(exchange, str):
            dropped[exchange] += 1
            continue
        rid = str(i) if record.get("id") is None else str(record["id"])
        rid = f"{rid}#{i}" if rid in used else rid
        used.add(rid)
        rows.append((rid, *exchange))
    return pd.DataFrame(rows, columns=["request_id", "prompt", "answer"], dtype=str), dropped


def extract_pairs(conversations: list[dict]) -> pd.DataFrame:
    """One (request_id, prompt, answer) row per conversation that opens with a user turn answered
    by the assistant.

    Follows vLLM's ShareGPT sampling (benchmarks/benchmark_serving.py `sample_sharegpt_requests`,
    later benchmarks/benchmark_dataset.py `ShareGPTDataset`), which Lim et al. (2024) used: drop
    conversations of fewer than 2 turns and keep only the first exchange, the prompt and the reply
    the model is asked to reproduce. Where ours differs:
    - vLLM takes turns 0 and 1 whatever their roles; we take the first "human"/"user" turn and only
      if the turn right after it is "gpt"/"assistant"/"chatgpt"/"bard", so a conversation opening
      with a system or assistant turn still yields its first real exchange, and a human turn
      followed by another human turn is not mistaken for an answer. On ShareGPT, where turns
      alternate from "human", the two rules pick the same pairs.
    - Token bounds and sampling are separate steps here (`filter_pool`, `sample_workload`); see
      there for how they differ from vLLM's.
    request_id is the record's "id", or its index in the file where it has none, made unique by
    appending "#<index>" to an id an earlier record already holds.
    """
    return extract_pairs_counted(conversations)[0]


def token_ids(texts: list[str], tokenizer) -> list[list[int]]:
    """Each text encoded by a Hugging Face tokenizer, without special tokens (no BOS): the text's
    own tokens, which is what prompt_tokens and output_tokens count."""
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]


def count_tokens(texts: list[str], tokenizer) -> list[int]:
    """Number of tokens of each text, as `token_ids` encodes it."""
    return [len(ids) for ids in token_ids(texts, tokenizer)]


def filter_pool(
    pairs: pd.DataFrame,
    prompt_token_ids: list[list[int]],
    output_tokens: list[int],
    *,
    min_tokens: int,
    max_tokens: int,
    source: str,
) -> pd.DataFrame:
    """Keep the pairs whose prompt and answer both have min_tokens..max_tokens tokens (inclusive);
    return them as a WORKLOAD table: prompt_token_ids the encoded prompt, prompt_tokens its length,
    output_tokens the answer's length (the number of tokens the request will generate).

    vLLM instead prunes prompt < 4 or answer < 4 tokens, prompt > 1024 and prompt + answer > 2048,
    counting with special tokens; one pair of bounds on each side is what the study's filter
    states, and counts without special tokens are what the text itself holds.
    """
    if not 1 <= min_tokens <= max_tokens:
        raise ConfigError(
            f"token bounds min_tokens={min_tokens}, max_tokens={max_tokens}: expected "
            "1 <= min_tokens <= max_tokens (a request generates at least one token)"
        )
    if not len(pairs) == len(prompt_token_ids) == len(output_tokens):
        raise ValueError(
            f"{len(pairs)} pairs but {len(prompt_token_ids)} encoded prompts and "
            f"{len(output_tokens)} output token counts"
        )
    prompt_n = np.array([len(ids) for ids in prompt_token_ids], dtype=np.int64)
    output_n = np.asarray(output_tokens, dtype=np.int64)
    prompt_ok = (prompt_n >= min_tokens) & (prompt_n <= max_tokens)
    output_ok = (output_n >= min_tokens) & (output_n <= max_tokens)
    keep = prompt_ok & output_ok
    if not keep.any():
        bounds = f"[{min_tokens}, {max_tokens}] tokens"
        if len(pairs) == 0:
            raise InputError(
                f"{source}: no request left: no conversation has a first user turn answered by the "
                f"assistant (2 turns at least), so none of 0 prompt/answer pairs is within {bounds}; "
                "use a dataset of multi-turn conversations"
            )
        raise InputError(
            f"{source}: no request left: none of {len(pairs)} prompt/answer pairs has both prompt "
            f"and answer within {bounds} ({prompt_ok.sum()} prompts and {output_ok.sum()} answers "
            "are); widen the token bounds"
        )
    kept = np.flatnonzero(keep)
    pool = pd.DataFrame(
        {
            "request_id": pairs["request_id"].to_numpy()[kept],
            "prompt": pairs["prompt"].to_numpy()[kept],
            "prompt_tokens": prompt_n[kept],
            "output_tokens": output_n[kept],
            "prompt_token_ids": [list(prompt_token_ids[i]) for i in kept],
        }
    )
    return tables.check(pool, tables.WORKLOAD, source)


@dataclass(frozen=True)
class PoolReport:
    """What the workload filter read, dropped (by reason) and kept, for the stage's log.

    dropped maps a reason to a count of conversations; reasons are DROP_FEWER_THAN_2_TURNS,
    DROP_NO_ANSWERED_USER_TURN, "empty prompt or answer", and the token bounds ("prompt below
    min_tokens", "prompt above max_tokens", "answer below min_tokens", "answer above max_tokens";
    a pair is counted under the first that applies). by_characters: of the "above max_tokens"
    drops, those made from the text's length alone, without tokenizing it (see build_pool).
    """

    source: str
    read: int
    kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    by_characters: int = 0
    max_token_bytes: int | None = None
    extended_from: int | None = None  # synthetic: the file's conversations, before the extension

    def text(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in self.dropped.items() if n) or "none"
        note = (
            f" ({self.by_characters} of them from their length in bytes, over "
            f"{self.max_token_bytes} bytes per token x max_tokens, without tokenizing)"
            if self.by_characters
            else ""
        )
        grown = (
            f" (the file's {self.extended_from} and the next {self.read - self.extended_from} of "
            "its seeded synthetic stream, so that the pool holds workload.num_prompts)"
            if self.extended_from is not None
            else ""
        )
        return (
            f"{self.source}: read {self.read} conversations{grown}, dropped "
            f"{sum(self.dropped.values())} ({reasons}){note}, kept {self.kept}"
        )


DROP_EMPTY = "empty prompt or answer"


def _bound_reasons(prompt_n: np.ndarray, output_n: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Per pair, the first token bound it breaks ("" where within bounds)."""
    reasons = np.full(len(prompt_n), "", dtype=object)
    for mask, why in reversed(
        [
            (prompt_n < lo, "prompt below min_tokens"),
            (prompt_n > hi, "prompt above max_tokens"),
            (output_n < lo, "answer below min_tokens"),
            (output_n > hi, "answer above max_tokens"),
        ]
    ):
        reasons[mask] = why
    return reasons


def build_pool_report(
    source: str, tokenizer, *, min_tokens: int, max_tokens: int, split: str = "train",
    conversations: list[dict] | None = None,
) -> tuple[pd.DataFrame, PoolReport]:
    """The filtered pool of one tokenizer family, and what was read, dropped and kept.

    Load `source`, pair first prompts with their answers, drop empty ones, then keep the pairs whose
    prompt and answer both have min_tokens..max_tokens tokens (filter_pool). A text longer than
    tokenizer.max_token_bytes(tokenizer) x max_tokens UTF-8 bytes (after the tokenizer's
    normalizer) has more than max_tokens tokens, since no token stands for more text than that; such
    a pair is dropped without tokenizing it (one 10 MB prompt would otherwise take minutes and GBs
    to tokenize only to be dropped). Tokenizers for which that bound does not hold (WordPiece,
    Unigram, slow ones) tokenize everything. Raises InputError when nothing is kept, with the
    report. conversations: already loaded and validated (`source` then only names them).
    """
    from tokencarbon.tokenizer import max_token_bytes, normalized_bytes

    if not 1 <= min_tokens <= max_tokens:
        raise ConfigError(
            f"token bounds min_tokens={min_tokens}, max_tokens={max_tokens}: expected "
            "1 <= min_tokens <= max_tokens (a request generates at least one token)"
        )
    if conversations is None:
        conversations = load_sharegpt(source, split=split)
    pairs, dropped = extract_pairs_counted(conversations)
    order = (DROP_FEWER_THAN_2_TURNS, DROP_NO_ANSWERED_USER_TURN)
    dropped = Counter({k: dropped[k] for k in order})
    empty = ((pairs["prompt"].str.strip() == "") | (pairs["answer"].str.strip() == "")).to_numpy()
    dropped[DROP_EMPTY] = int(empty.sum())
    per_token = max_token_bytes(tokenizer)
    too_long = np.zeros(len(pairs), dtype=bool)
    too_long_reason = np.full(len(pairs), "", dtype=object)
    if per_token is not None:
        limit = per_token * max_tokens

        def over(text: str) -> bool:
            # len(text) <= its UTF-8 bytes <= 4 len(text): only texts near the limit are normalized.
            return len(text) > limit or (
                4 * len(text) > limit and normalized_bytes(tokenizer, text) > limit
            )

        for i, (prompt, answer) in enumerate(zip(pairs["prompt"], pairs["answer"])):
            if empty[i]:
                continue
            if over(prompt):
                too_long[i], too_long_reason[i] = True, "prompt above max_tokens"
            elif over(answer):
                too_long[i], too_long_reason[i] = True, "answer above max_tokens"
    rest = pairs[~empty & ~too_long].reset_index(drop=True)
    prompt_ids = token_ids(list(rest["prompt"]), tokenizer)
    output_n = np.asarray(count_tokens(list(rest["answer"]), tokenizer), dtype=np.int64)
    prompt_n = np.array([len(ids) for ids in prompt_ids], dtype=np.int64)
    reasons = np.concatenate(
        [_bound_reasons(prompt_n, output_n, min_tokens, max_tokens), too_long_reason[too_long]]
    )
    for why in (
        "prompt below min_tokens", "prompt above max_tokens",
        "answer below min_tokens", "answer above max_tokens",
    ):  # fmt: skip
        dropped[why] = int((reasons == why).sum())
    kept = int((reasons == "").sum())
    report = PoolReport(
        source=source,
        read=len(conversations),
        kept=kept,
        dropped={k: v for k, v in dropped.items() if v},
        by_characters=int(too_long.sum()),
        max_token_bytes=per_token,
    )
    if kept == 0:
        raise InputError(
            f"no request left within [{min_tokens}, {max_tokens}] tokens: {report.text()}; "
            + (
                "use a dataset of multi-turn conversations (a user turn answered by the assistant)"
                if len(pairs) == 0
                else "widen the token bounds or use another dataset"
            )
        )
    pool = filter_pool(
        rest, prompt_ids, list(output_n), min_tokens=min_tokens, max_tokens=max_tokens,
        source=source,
    )  # fmt: skip
    return pool, report


def build_pool(
    source: str, tokenizer, *, min_tokens: int, max_tokens: int, split: str = "train"
) -> pd.DataFrame:
    """The filtered pool of build_pool_report, without the report."""
    return build_pool_report(
        source, tokenizer, min_tokens=min_tokens, max_tokens=max_tokens, split=split
    )[0]


# The most conversations the synthetic stream is extended to (synthetic_pool_report): 50 x the
# default 2,000; generating and filtering them takes seconds, and a bound that keeps fewer than
# 1 in 50,000 pairs is a config to change, not a workload to grow.
SYNTHETIC_STREAM_LIMIT = 100_000


def synthetic_pool_report(
    path: str | Path, tokenizer, *, min_tokens: int, max_tokens: int, needed: int, seed: int,
    limit: int = SYNTHETIC_STREAM_LIMIT,
) -> tuple[pd.DataFrame, PoolReport]:
    """The filtered pool of the synthetic corpus at `path`, grown until it holds `needed` requests.

    The corpus is the first N conversations of one seeded stream (synthetic.synthetic_conversations
    (N, seed): a larger N only appends). Its lengths are ShareGPT's in words; a family's bounds are
    in its tokenizer's tokens, so a real tokenizer (more tokens per synthetic word than the builtin
    one trained on the corpus) with tight bounds can keep fewer pairs than workload.num_prompts.
    Then the pool is rebuilt over the file's conversations and the stream's next ones, to
    ceil(1.25 x needed / kept share) conversations (at least 2 N), repeated while short, at most
    `limit`; the report's extended_from says so. Raises InputError naming the bounds, the keep
    rate and the keys to change when `limit` conversations still hold fewer than `needed`.
    """
    conversations = load_sharegpt(str(path))
    first = len(conversations)

    def build(convs: list[dict]) -> tuple[pd.DataFrame, PoolReport]:
        return build_pool_report(str(path), tokenizer, min_tokens=min_tokens,
                                 max_tokens=max_tokens, conversations=convs)  # fmt: skip

    pool, report = build(conversations)
    while len(pool) < needed:
        if len(conversations) >= limit:
            raise InputError(
                f"{path}: {len(pool)} of {len(conversations)} synthetic conversations (the file's "
                f"{first} and its seeded stream's next) fit [{min_tokens}, {max_tokens}] tokens, "
                f"fewer than the {needed} of workload.num_prompts: raise the family's max_tokens "
                "(or lower min_tokens), or lower workload.num_prompts"
            )
        share = len(pool) / len(conversations)
        total = min(limit, max(2 * len(conversations), math.ceil(1.25 * needed / share)))
        conversations = conversations + synthetic_conversations(total, seed)[len(conversations) :]
        pool, report = build(conversations)
        report = replace(report, extended_from=first)
    return pool, report


def sample_workload(pool: pd.DataFrame, n: int, seed: int, source: str) -> pd.DataFrame:
    """n requests drawn without replacement: the first n of one seeded permutation of the pool, so a
    larger n only appends requests to a smaller one's sample, in the same order.

    vLLM shuffles with Python's `random` and, when too few pairs pass, oversamples with replacement;
    we use a numpy Generator and refuse to repeat requests.
    """
    if n < 1:
        raise ConfigError(f"workload.num_prompts={n}: expected a positive number of requests")
    if n > len(pool):
        raise InputError(
            f"{source}: {n} requests asked for but the filtered pool holds only {len(pool)}; "
            "lower workload.num_prompts or widen the token bounds"
        )
    order = np.random.default_rng(seed).permutation(len(pool))[:n]
    return tables.check(pool.iloc[order].reset_index(drop=True), tables.WORKLOAD, source)
