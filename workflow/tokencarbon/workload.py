"""The workload stage: load ShareGPT conversations, pair each first prompt with its answer, keep
pairs within token bounds, draw a seeded sample; and a synthetic ShareGPT-like generator."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from tokencarbon import tables
from tokencarbon.errors import ConfigError, InputError

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


def _validate(records: list, where: str) -> None:
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(
                f"{where}: record {i} is a {type(record).__name__}, expected an object with a "
                f"'conversations' list ({SHAREGPT_SHAPE})"
            )
        rid = record.get("id")
        label = f"record {i}" if rid is None else f"record {i} (id {rid!r})"
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
    rows = []
    used: set[str] = set()
    for i, record in enumerate(conversations):
        turns = record["conversations"]
        if len(turns) < 2:
            continue
        first = next((j for j, t in enumerate(turns) if t["from"].lower() in HUMAN_ROLES), None)
        if first is None or first + 1 >= len(turns):
            continue
        if turns[first + 1]["from"].lower() not in ASSISTANT_ROLES:
            continue
        rid = str(i) if record.get("id") is None else str(record["id"])
        rid = f"{rid}#{i}" if rid in used else rid
        used.add(rid)
        rows.append((rid, turns[first]["value"], turns[first + 1]["value"]))
    return pd.DataFrame(rows, columns=["request_id", "prompt", "answer"], dtype=str)


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


def build_pool(
    source: str, tokenizer, *, min_tokens: int, max_tokens: int, split: str = "train"
) -> pd.DataFrame:
    """The filtered pool of one tokenizer family: load `source`, pair first prompts with their
    answers, encode both, keep those within the token bounds (see the functions above)."""
    pairs = extract_pairs(load_sharegpt(source, split=split))
    return filter_pool(
        pairs,
        token_ids(list(pairs["prompt"]), tokenizer),
        count_tokens(list(pairs["answer"]), tokenizer),
        min_tokens=min_tokens,
        max_tokens=max_tokens,
        source=source,
    )


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


# --- Synthetic ShareGPT-like conversations -----------------------------------------------------
#
# Lengths of a prompt and of an answer, in words (one word is one token of a BPE tokenizer trained
# on this text), are lognormal. Means: Kwon et al., "Efficient Memory Management for Large Language
# Model Serving with PagedAttention" (vLLM), SOSP 2023, Fig. 11a legend: ShareGPT input mean
# 161.31 tokens, output mean 337.99 tokens; §6.1 agrees ("8.4x longer input prompts and 5.8x longer
# outputs" than Alpaca's 19.31 and 58.45: 161.31/19.31 = 8.35, 337.99/58.45 = 5.78).
# The paper prints no spread, so sigma (the standard deviation of ln length) comes from real ShareGPT
# V3 records in ../shared/data/sharegpt: 1.20 for prompts, over the 500 first prompts of
# ShareGPT_V3_filtered_500.json (ln word count: 1.204; a low estimate, as that sample dropped
# over-long prompts), and 0.50 for answers, over the 14 ChatGPT answers of sharegpt_v3_first5.json
# (0.506; few answers, from 5 conversations).
# A lognormal of mean m has mu = ln(m) - sigma^2/2.
PROMPT_MEAN_TOKENS = 161.31
ANSWER_MEAN_TOKENS = 337.99
PROMPT_SIGMA = 1.2
ANSWER_SIGMA = 0.5
# Variety the 2-turn rule and the token bounds must cope with, as in real ShareGPT dumps.
ONE_TURN_FRACTION = 0.02  # a question never answered: the 2-turn rule drops it
EMPTY_ANSWER_FRACTION = 0.01  # an answer of 0 words
SHORT_ANSWER_FRACTION = 0.01  # an answer of 1, 2 or 3 words (mean 2)
# The lognormal answers are made longer so that all answers together keep the cited mean:
# (1 - 0.01 - 0.01) * m + 0.01 * 2 = 337.99  ->  m = 344.87.
_ANSWER_LN_MEAN = (ANSWER_MEAN_TOKENS - 2 * SHORT_ANSWER_FRACTION) / (
    1 - EMPTY_ANSWER_FRACTION - SHORT_ANSWER_FRACTION
)
_PROMPT_MU = math.log(PROMPT_MEAN_TOKENS) - PROMPT_SIGMA**2 / 2
_ANSWER_MU = math.log(_ANSWER_LN_MEAN) - ANSWER_SIGMA**2 / 2

VOCAB_WORDS = 2000
VOCAB_SEED = 20240101  # fixed: every run and every seed share one vocabulary


def synthetic_vocabulary() -> tuple[list[str], np.ndarray]:
    """The fixed synthetic vocabulary: VOCAB_WORDS pseudo-words of 1-4 consonant-vowel syllables
    (letters b d f g k l m n p r s t v and a e i o u only), and Zipf word frequencies (1/rank)."""
    rng = np.random.default_rng(VOCAB_SEED)
    syllables = [c + v for c in "bdfgklmnprstv" for v in "aeiou"]
    words: dict[str, None] = {}  # insertion-ordered set
    while len(words) < VOCAB_WORDS:
        words["".join(rng.choice(syllables, size=int(rng.integers(1, 5))))] = None
    weights = 1.0 / np.arange(1, VOCAB_WORDS + 1)
    return list(words), weights / weights.sum()


def synthetic_conversations(n: int, seed: int) -> list[dict]:
    """n seeded ShareGPT-format conversations, "human" first and alternating with "gpt": 2, 4 or 6
    turns (equally likely), except ONE_TURN_FRACTION of one human turn. Each human turn has
    round(lognormal) words (at least 1) of the prompt distribution above, each answer the answer
    distribution, save EMPTY_ANSWER_FRACTION empty and SHORT_ANSWER_FRACTION 1-3-word answers."""
    words, p = synthetic_vocabulary()
    vocab = np.array(words)
    cdf = np.cumsum(p)
    rng = np.random.default_rng(seed)

    def text(n_words: int) -> str:
        idx = np.minimum(np.searchsorted(cdf, rng.random(n_words)), len(vocab) - 1)
        return " ".join(vocab[idx])

    def answer_words() -> int:
        u = rng.random()
        if u < EMPTY_ANSWER_FRACTION:
            return 0
        if u < EMPTY_ANSWER_FRACTION + SHORT_ANSWER_FRACTION:
            return int(rng.integers(1, 4))
        return max(1, round(rng.lognormal(_ANSWER_MU, ANSWER_SIGMA)))

    conversations = []
    for i in range(n):
        n_turns = 1 if rng.random() < ONE_TURN_FRACTION else int(rng.choice([2, 4, 6]))
        turns = []
        for t in range(n_turns):
            if t % 2 == 0:
                turns.append(
                    {
                        "from": "human",
                        "value": text(max(1, round(rng.lognormal(_PROMPT_MU, PROMPT_SIGMA)))),
                    }
                )
            else:
                turns.append({"from": "gpt", "value": text(answer_words())})
        conversations.append({"id": f"synthetic_{i}", "conversations": turns})
    return conversations
