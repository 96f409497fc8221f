"""ShareGPT loading, first-exchange pairing, token-bound filtering and seeded sampling, on the real
ShareGPT-format files in ../shared/data/sharegpt and on bad files written here."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tokencarbon import tables
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.synthetic import synthetic_conversations, synthetic_vocabulary
from tokencarbon.tokenizer import load_tokenizer, max_token_bytes, train_builtin_tokenizer
from tokencarbon.workload import (
    build_pool,
    build_pool_report,
    count_tokens,
    extract_pairs,
    filter_pool,
    load_sharegpt,
    sample_workload,
)


def word_ids(texts) -> list[list[int]]:
    """A tokenizer a reader can run in their head: one token per whitespace-separated word, its id
    the word's position."""
    return [list(range(len(t.split()))) for t in texts]


def pool_of(source: str, min_tokens: int, max_tokens: int):
    pairs = extract_pairs(load_sharegpt(source))
    return filter_pool(
        pairs,
        word_ids(pairs["prompt"]),
        [len(ids) for ids in word_ids(pairs["answer"])],
        min_tokens=min_tokens,
        max_tokens=max_tokens,
        source=source,
    )


@pytest.fixture(scope="module")
def fastchat(shared_data) -> str:
    return str(shared_data / "sharegpt" / "fastchat_dummy_conversation.json")


@pytest.fixture(scope="module")
def first5(shared_data) -> str:
    return str(shared_data / "sharegpt" / "sharegpt_v3_first5.json")


# --- the real files ----------------------------------------------------------------------------


def test_fastchat_every_conversation_gives_its_first_exchange(fastchat):
    records = load_sharegpt(fastchat)
    assert len(records) == 500
    pairs = extract_pairs(records)
    # 500 conversations of 2, 4 or 6 turns, all "human" then "gpt" (SOURCES.md): 500 pairs.
    assert len(pairs) == 500
    first = pairs.iloc[0]
    # The file's first record, read off the file.
    assert (first.request_id, first.prompt) == ("identity_0", "Who are you?")
    assert first.answer.startswith("I am Vicuna, a language model trained by researchers")


def test_fastchat_token_bounds(fastchat):
    # All 167 six-turn conversations open with "What is up?" (3 words) answered by "Hello! How can
    # I help you today?" (7 words); every other first answer has 8 words or more (jq over the file:
    # 167 first answers have <= 7 words, and they are these). Bounds [3, 7] keep exactly those.
    pool = pool_of(fastchat, 3, 7)
    assert len(pool) == 167
    assert set(pool["prompt"]) == {"What is up?"}
    assert set(pool["prompt_tokens"]) == {3} and set(pool["output_tokens"]) == {7}
    assert all(list(ids) == [0, 1, 2] for ids in pool["prompt_token_ids"])
    assert list(pool.columns) == tables.WORKLOAD.names
    # Only 4 first prompts reach 8 words: "Can you tell me a little bit about yourself?" (9 words)
    # in identity_18, 19, 21, 22, answered in 15, 16, 21 and 17 words (counted by hand):
    # [8, 21] keeps all four, [8, 20] drops identity_21's 21-word answer.
    assert list(pool_of(fastchat, 8, 21)["request_id"]) == [
        "identity_18",
        "identity_19",
        "identity_21",
        "identity_22",
    ]
    narrow = pool_of(fastchat, 8, 20)
    assert list(narrow["request_id"]) == ["identity_18", "identity_19", "identity_22"]
    assert list(narrow["output_tokens"]) == [15, 16, 17]


# sharegpt_v3_first5.json's ids in file order (SOURCES.md lists them), and its second first prompt.
FIRST5_IDS = ["QWJhYvA_0", "i6IyJda_0", "A5AbcES_0", "hRPPgZT_0", "hRPPgZT_8"]
FIRST5_SECOND_PROMPT = "How to tell if a customer segment is well segmented? In 3 bullet points."


def test_sharegpt_v3_first5(first5):
    records = load_sharegpt(first5)
    pairs = extract_pairs(records)
    # 5 records of 10, 2, 2, 8 and 6 turns, each opening human -> gpt: 5 pairs, in file order.
    assert list(pairs["request_id"]) == FIRST5_IDS
    assert pairs.iloc[1].prompt == FIRST5_SECOND_PROMPT
    # First prompt / first answer in words (`jq -r ... | wc -w`): QWJhYvA_0 29/202, i6IyJda_0 14/58,
    # A5AbcES_0 40/245, hRPPgZT_0 56/80, hRPPgZT_8 5/286.
    # [10, 250]: hRPPgZT_8's 5-word prompt and 286-word answer are out -> 4 left.
    pool = pool_of(first5, 10, 250)
    assert list(pool["request_id"]) == ["QWJhYvA_0", "i6IyJda_0", "A5AbcES_0", "hRPPgZT_0"]
    assert list(pool["prompt_tokens"]) == [29, 14, 40, 56]
    assert list(pool["output_tokens"]) == [202, 58, 245, 80]
    # [10, 240]: A5AbcES_0's 245-word answer goes too -> 3 left.
    assert list(pool_of(first5, 10, 240)["request_id"]) == ["QWJhYvA_0", "i6IyJda_0", "hRPPgZT_0"]


def test_single_turn_file_leaves_nothing(shared_data):
    source = str(shared_data / "sharegpt" / "ShareGPT_V3_filtered_500.json")
    records = load_sharegpt(source)
    assert len(records) == 500
    # Every record is one "human" turn (answers stripped): the 2-turn rule keeps none.
    pairs = extract_pairs(records)
    assert len(pairs) == 0
    with pytest.raises(InputError) as err:
        filter_pool(pairs, [], [], min_tokens=4, max_tokens=1024, source=source)
    msg = str(err.value)
    assert source in msg and "[4, 1024]" in msg and "none of 0 prompt/answer pairs" in msg
    assert "2 turns" in msg


def test_bounds_that_keep_nothing_name_source_bounds_and_pair_count(first5):
    with pytest.raises(InputError) as err:
        pool_of(first5, 60, 300)
    msg = str(err.value)
    # Word counts as in test_sharegpt_v3_first5: the longest prompt has 56 words, so no prompt is in
    # [60, 300]; the answers 202, 245, 80 and 286 are (58 is not): 0 prompts, 4 answers.
    assert first5 in msg and "[60, 300] tokens" in msg and "none of 5 prompt/answer pairs" in msg
    assert "(0 prompts and 4 answers are)" in msg and "widen the token bounds" in msg


@pytest.mark.parametrize("low, high", [(0, 10), (10, 9)])
def test_bad_bounds(first5, low, high):
    with pytest.raises(
        ConfigError, match=rf"min_tokens={low}, max_tokens={high}.*1 <= min_tokens <= max_tokens"
    ):
        pool_of(first5, low, high)


# --- pairing rules -----------------------------------------------------------------------------


def turn(role: str, value: str) -> dict:
    return {"from": role, "value": value}


def test_pairing_follows_roles_not_positions():
    convs = [
        {
            "id": "sys",
            "conversations": [turn("system", "be brief"), turn("human", "q1"), turn("gpt", "a1")],
        },
        {
            "id": "two_humans",
            "conversations": [turn("human", "q2"), turn("human", "q2b"), turn("gpt", "a2")],
        },
        {
            "id": "gpt_first",
            "conversations": [turn("gpt", "hello"), turn("user", "q3"), turn("assistant", "a3")],
        },
        {"id": "one_turn", "conversations": [turn("human", "q4")]},
        {"id": "no_answer", "conversations": [turn("gpt", "hi"), turn("human", "q5")]},
        {"conversations": [turn("Human", "q6"), turn("ChatGPT", "a6")]},  # no id: its index, 5
        {"id": 7, "conversations": [turn("human", "q7"), turn("bard", "a7")]},
        {
            "id": "sys",
            "conversations": [turn("human", "q8"), turn("gpt", "a8")],
        },  # repeats record 0's id
    ]
    pairs = extract_pairs(convs)
    # sys: first human turn is 1, answered by 2. two_humans: human followed by human, dropped.
    # gpt_first: user turn 1, assistant turn 2. one_turn: < 2 turns. no_answer: the human turn is
    # last. Record 5 has no id: "5". Record 7 reuses "sys": "sys#7".
    assert pairs.values.tolist() == [
        ["sys", "q1", "a1"],
        ["gpt_first", "q3", "a3"],
        ["5", "q6", "a6"],
        ["7", "q7", "a7"],
        ["sys#7", "q8", "a8"],
    ]


# --- through the real built-in tokenizer -------------------------------------------------------


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "builtin"
    texts = [t["value"] for c in synthetic_conversations(200, seed=1) for t in c["conversations"]]
    train_builtin_tokenizer(texts, 8000, out)
    return load_tokenizer(str(out))


def test_count_tokens_without_special_tokens(builtin):
    w, _ = synthetic_vocabulary()
    # The most frequent pseudo-words are one token each; BOS is left out: "", 1 word, 3 words.
    assert count_tokens(["", w[0], f"{w[0]} {w[1]} {w[2]}"], builtin) == [0, 1, 3]
    assert count_tokens([], builtin) == []


def test_build_pool_through_the_builtin_tokenizer(builtin, tmp_path):
    w, _ = synthetic_vocabulary()

    def text(n: int) -> str:
        return " ".join(w[i % 10] for i in range(n))

    convs = [
        {"id": "a", "conversations": [turn("human", text(5)), turn("gpt", text(12))]},
        {"id": "b", "conversations": [turn("human", text(3)), turn("gpt", text(8))]},
        {"id": "c", "conversations": [turn("human", text(6)), turn("gpt", text(13))]},
        {"id": "d", "conversations": [turn("human", text(9))]},
    ]
    source = tmp_path / "hand.json"
    source.write_text(json.dumps(convs), encoding="utf-8")
    pool = build_pool(str(source), builtin, min_tokens=4, max_tokens=12)
    # One token per word. a: 5 and 12, inside [4, 12]. b: prompt 3 < 4. c: answer 13 > 12.
    # d: one turn, never a pair.
    assert pool[["request_id", "prompt", "prompt_tokens", "output_tokens"]].values.tolist() == [
        ["a", text(5), 5, 12]
    ]
    # Each word is its "Ġ"-prefixed BPE token, no BOS in front.
    expected_ids = [builtin.convert_tokens_to_ids("Ġ" + w[i]) for i in range(5)]
    assert list(pool["prompt_token_ids"][0]) == expected_ids


def test_build_pool_single_turn_file(builtin, shared_data):
    source = str(shared_data / "sharegpt" / "ShareGPT_V3_filtered_500.json")
    # 500 one-turn records (SOURCES.md): all dropped by the 2-turn rule, and the error says so.
    with pytest.raises(InputError) as err:
        build_pool(source, builtin, min_tokens=4, max_tokens=1024)
    msg = str(err.value)
    assert f"{source}: read 500 conversations, dropped 500 (500 fewer than 2 turns), kept 0" in msg
    assert "multi-turn" in msg


def test_report_counts_read_dropped_by_reason_and_kept(builtin, tmp_path):
    w, _ = synthetic_vocabulary()

    def text(n: int) -> str:
        return " ".join(w[i % 10] for i in range(n))

    convs = [
        {"id": "ok", "conversations": [turn("human", text(5)), turn("gpt", text(12))]},
        {"id": "short", "conversations": [turn("human", text(3)), turn("gpt", text(8))]},
        {"id": "long_answer", "conversations": [turn("human", text(6)), turn("gpt", text(13))]},
        {"id": "one_turn", "conversations": [turn("human", text(9))]},
        {"id": "unanswered", "conversations": [turn("gpt", "hi"), turn("human", text(5))]},
        {"id": "empty", "conversations": [turn("human", text(5)), turn("gpt", "  ")]},
        {"id": "long_prompt", "conversations": [turn("human", text(20)), turn("gpt", text(5))]},
    ]
    source = tmp_path / "hand.json"
    source.write_text(json.dumps(convs), encoding="utf-8")
    pool, report = build_pool_report(str(source), builtin, min_tokens=4, max_tokens=12)
    # One token per word (as in test_build_pool_through_the_builtin_tokenizer): ok is kept; short
    # has a 3-token prompt, long_answer a 13-token answer, long_prompt a 20-token prompt.
    assert list(pool["request_id"]) == ["ok"]
    assert (report.read, report.kept) == (7, 1)
    assert report.dropped == {
        "fewer than 2 turns": 1,
        "no first user turn answered by the assistant": 1,
        "empty prompt or answer": 1,
        "prompt below min_tokens": 1,
        "prompt above max_tokens": 1,
        "answer above max_tokens": 1,
    }
    assert report.text().startswith(f"{source}: read 7 conversations, dropped 6 (1 fewer than 2")
    assert report.text().endswith("kept 1")


def test_a_synthetic_pool_grows_along_its_seeded_stream_until_it_holds_num_prompts(builtin, tmp_path):
    # Issue 24 item 4: a tokenizer with more tokens per synthetic word than the builtin one (a real
    # one), or tight bounds, kept fewer pairs than num_prompts, and sample_workload failed after
    # the filter. Here the bounds [4, 200] keep 5 of a 40-conversation corpus (seed 3).
    from tokencarbon.workload import synthetic_pool_report

    corpus = tmp_path / "synthetic_sharegpt.json"
    corpus.write_text(json.dumps(synthetic_conversations(40, seed=3)), encoding="utf-8")
    small = build_pool(str(corpus), builtin, min_tokens=4, max_tokens=200)
    kept = len(small)
    assert kept == 5  # answers (lognormal, median ~ShareGPT's) mostly run past 200 tokens
    needed = kept + 3
    pool, report = synthetic_pool_report(corpus, builtin, min_tokens=4, max_tokens=200,
                                         needed=needed, seed=3)  # fmt: skip
    # one growth step: ceil(1.25 x needed / (kept / 40)) conversations, at least 2 x 40
    total = max(80, math.ceil(1.25 * needed * 40 / kept))
    assert (report.extended_from, report.read) == (40, total)
    assert f"the file's 40 and the next {total - 40} of its seeded synthetic stream" in report.text()
    assert len(pool) >= needed
    # the same pool as a corpus of `total` conversations written at once (the stream only appends),
    # the file's own pairs first
    whole = tmp_path / "whole.json"
    whole.write_text(json.dumps(synthetic_conversations(total, seed=3)), encoding="utf-8")
    pd.testing.assert_frame_equal(pool, build_pool(str(whole), builtin, min_tokens=4, max_tokens=200))
    assert list(pool["request_id"][:kept]) == list(small["request_id"])
    # a pool that already holds num_prompts is the file's alone
    _, plain = synthetic_pool_report(corpus, builtin, min_tokens=4, max_tokens=200, needed=kept, seed=3)
    assert (plain.extended_from, plain.read) == (None, 40)
    # bounds no growth can meet: refused naming the keys to change
    with pytest.raises(InputError, match=r"fewer than the 1000 of workload.num_prompts: raise the "
                                         r"family's max_tokens"):  # fmt: skip
        synthetic_pool_report(corpus, builtin, min_tokens=4, max_tokens=200, needed=1000, seed=3,
                              limit=200)  # fmt: skip


@pytest.fixture(scope="module")
def alphabet_tokenizer(tmp_path_factory):
    # Trained on one 16-letter word: BPE merges it into the single entry "Ġabcdefghijklmnop"
    # ("Ġ", U+0120, is 2 UTF-8 bytes; 16 letters 1 each: 18 bytes), the longest in the vocabulary
    # (the special tokens, e.g. "<|bos|>", have 7).
    out = tmp_path_factory.mktemp("alpha") / "tok"
    train_builtin_tokenizer(["abcdefghijklmnop"] * 50, 300, out)
    return load_tokenizer(str(out))


def test_max_token_bytes_is_the_longest_entry(alphabet_tokenizer):
    assert max_token_bytes(alphabet_tokenizer) == 18
    assert count_tokens(["abcdefghijklmnop"], alphabet_tokenizer) == [1]


def test_max_token_bytes_none_where_an_unknown_token_could_swallow_text():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # WordPiece turns any unknown word, however long, into one [UNK]: no byte bound holds.
    wp = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]")
    assert max_token_bytes(tok) is None
    assert count_tokens(["x" * 90], tok) == [1]  # 90 characters, one token


def test_over_long_text_dropped_by_length_without_tokenizing(alphabet_tokenizer, tmp_path):
    word = "abcdefghijklmnop"
    # max_tokens 2: limit 18 x 2 = 36 bytes. Three words (3 x 16 + 2 spaces = 50 bytes) cannot be
    # 2 tokens: dropped by length. Two words (33 bytes) are tokenized: 2 tokens, kept. A 10 MB
    # prompt (625,000 words with spaces: 10,625,000 bytes) is dropped by length at once.
    huge = " ".join([word] * 625_000)
    assert len(huge.encode()) == 10_624_999  # 625,000 x 17 - 1
    convs = [
        {"id": "two", "conversations": [turn("human", f"{word} {word}"), turn("gpt", word)]},
        {"id": "three", "conversations": [turn("human", " ".join([word] * 3)), turn("gpt", word)]},
        {"id": "huge", "conversations": [turn("human", huge), turn("gpt", word)]},
        {"id": "long_answer", "conversations": [turn("human", word), turn("gpt", huge)]},
    ]
    source = tmp_path / "huge.json"
    source.write_text(json.dumps(convs), encoding="utf-8")
    import time

    t0 = time.monotonic()
    pool, report = build_pool_report(str(source), alphabet_tokenizer, min_tokens=1, max_tokens=2)
    elapsed_s = time.monotonic() - t0
    assert list(pool["request_id"]) == ["two"] and list(pool["prompt_tokens"]) == [2]
    assert report.dropped == {"prompt above max_tokens": 2, "answer above max_tokens": 1}
    assert report.by_characters == 3 and report.max_token_bytes == 18
    assert "3 of them from their length in bytes" in report.text()
    # The issue measured 83 s and 2.9 GB for one such prompt through the tokenizer; the length
    # check takes milliseconds. 20 s leaves room for reading the 21 MB file on a loaded runner.
    assert elapsed_s < 20
    # The bound is safe: the 3-word text really has 3 > 2 tokens.
    assert count_tokens([" ".join([word] * 3)], alphabet_tokenizer) == [3]


# --- sampling ----------------------------------------------------------------------------------


def test_sample_is_seeded_without_replacement_and_grows_by_appending(fastchat):
    pool = pool_of(fastchat, 3, 21)  # every prompt has 3-9 words, every answer 7-21: all 500
    assert len(pool) == 500
    s10 = sample_workload(pool, 10, seed=0, source=fastchat)
    assert len(s10) == 10 and s10["request_id"].is_unique
    assert set(s10["request_id"]) <= set(pool["request_id"])
    assert s10.equals(sample_workload(pool, 10, seed=0, source=fastchat))
    assert not s10.equals(sample_workload(pool, 10, seed=1, source=fastchat))
    s20 = sample_workload(pool, 20, seed=0, source=fastchat)
    assert s20.iloc[:10].equals(s10)
    everything = sample_workload(pool, 500, seed=0, source=fastchat)
    assert sorted(everything["request_id"]) == sorted(pool["request_id"])
    assert list(s10.columns) == tables.WORKLOAD.names
    # Rows travel whole: each sampled id keeps its own prompt and counts.
    merged = s10.merge(pool, on="request_id", suffixes=("", "_pool"))
    assert (merged["prompt"] == merged["prompt_pool"]).all()
    assert (merged["output_tokens"] == merged["output_tokens_pool"]).all()


def test_sample_larger_than_pool(first5):
    pool = pool_of(first5, 10, 250)  # 4 requests, see test_sharegpt_v3_first5
    with pytest.raises(InputError) as err:
        sample_workload(pool, 5, seed=0, source=first5)
    msg = str(err.value)
    assert first5 in msg and "5 requests" in msg and "only 4" in msg
    assert "lower workload.num_prompts or widen the token bounds" in msg
    with pytest.raises(ConfigError, match="num_prompts=0"):
        sample_workload(pool, 0, seed=0, source=first5)


# --- bad files ---------------------------------------------------------------------------------


def write(tmp_path: Path, content) -> str:
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return str(path)


GOOD = {
    "id": "ok",
    "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
}


@pytest.mark.parametrize(
    "content, expected",
    [
        # The "}" is the 32nd character, where a value should start.
        (
            '[{"id": "x", "conversations": [}',
            ["not valid JSON", "line 1 column 32", '"conversations"'],
        ),
        ({"conversations": []}, ["top level is a JSON dict", "expected a list of"]),
        ([GOOD, "hello"], ["record 1 is a str", "'conversations' list"]),
        (
            [GOOD, {"id": "r1"}],
            ["record 1 (id 'r1') has no 'conversations'", "expected a list of turns"],
        ),
        (
            [{"conversations": "hi"}],
            ["record 0 has 'conversations' of type str", "expected a list of turns"],
        ),
        (
            [{"id": "r0", "conversations": ["hi"]}],
            ["record 0 (id 'r0'), turn 0 is a str", "{'from': str, 'value': str}"],
        ),
        (
            [{"id": "r0", "conversations": [{"value": "q"}]}],
            ["record 0 (id 'r0'), turn 0: 'from' is missing", "expected a string"],
        ),
        (
            [
                GOOD,
                {"id": "r1", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]},
            ],
            ["record 1 (id 'r1'), turn 1: 'value' is missing", "expected a string"],
        ),
        (
            [{"id": "r0", "conversations": [{"from": "human", "value": 42}]}],
            ["record 0 (id 'r0'), turn 0: 'value' is a int", "expected a string"],
        ),
        # issue 21: a lone UTF-16 surrogate (JSON "\ud800" without its pair) crashed Parquet
        # with a UnicodeEncodeError naming no record
        (
            '[{"id": "r0", "conversations": [{"from": "human", "value": "hello \\ud800 there"},'
            ' {"from": "gpt", "value": "a"}]}]',
            ["record 0 (id 'r0'), turn 0: 'value' holds '\\ud800' at character 6", "lone UTF-16 surrogate"],
        ),
        (
            '[{"id": "r\\udc00", "conversations": [{"from": "human", "value": "q"}]}]',
            ["'id' holds '\\udc00' at character 1"],
        ),
    ],
)
def test_bad_file_names_file_record_turn_and_what_is_expected(tmp_path, content, expected):
    path = write(tmp_path, content)
    with pytest.raises(InputError) as err:
        load_sharegpt(path)
    msg = str(err.value)
    assert msg.startswith(path)
    for part in expected:
        assert part in msg


def test_missing_file(tmp_path):
    path = str(tmp_path / "absent.json")
    with pytest.raises(InputError, match="cannot be read") as err:
        load_sharegpt(path)
    assert path in str(err.value)


# --- hf: through datasets.load_dataset ---------------------------------------------------------
# A hub id can only come from the HF cache offline, which a test cannot fill without the network.
# What runs here is the same `datasets.load_dataset(<id>, split=...)` call on a local folder of
# ShareGPT JSON files, which `datasets` resolves to its "json" builder and caches as Arrow, as it
# does for a cached hub dataset of JSON files.


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def test_hf_local_folder(tmp_path, hf_cache, first5):
    folder = tmp_path / "myset"
    folder.mkdir()
    (folder / "part.json").write_text(Path(first5).read_text(encoding="utf-8"), encoding="utf-8")
    records = load_sharegpt(f"hf:{folder}")
    # Same 5 records as the file itself, via Arrow: same first exchanges.
    assert len(records) == 5
    pairs = extract_pairs(records)
    assert list(pairs["request_id"]) == FIRST5_IDS
    assert pairs.iloc[1].prompt == FIRST5_SECOND_PROMPT


def test_hf_bad_record_names_the_dataset(tmp_path, hf_cache):
    folder = tmp_path / "badset"
    folder.mkdir()
    bad = [GOOD, {"id": "r1", "conversations": [{"from": "human"}]}]
    (folder / "part.json").write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(InputError) as err:
        load_sharegpt(f"hf:{folder}")
    msg = str(err.value)
    assert f"dataset '{folder}' (split 'train')" in msg
    assert "record 1 (id 'r1'), turn 0: 'value' is missing" in msg


def test_hf_files_disagreeing_on_a_column_type_are_named(tmp_path, hf_cache):
    # datasets itself says only "An error occurred while generating the dataset".
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps([GOOD]), encoding="utf-8")
    (folder / "b.json").write_text(json.dumps([GOOD | {"id": 5}]), encoding="utf-8")
    with pytest.raises(InputError) as err:
        load_sharegpt(f"hf:{folder}")
    msg = str(err.value)
    assert f"dataset '{folder}' (split 'train')" in msg
    assert "disagree on the type of column 'id': string in a.json, integer in b.json" in msg
    assert "An error occurred" not in msg


def test_hf_missing_dataset_and_split(tmp_path, hf_cache, first5):
    with pytest.raises(InputError) as err:
        load_sharegpt(f"hf:{tmp_path / 'nothing'}")
    assert str(tmp_path / "nothing") in str(err.value) and "local cache" in str(err.value)
    folder = tmp_path / "myset"
    folder.mkdir()
    (folder / "part.json").write_text(Path(first5).read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(InputError, match="split named 'test'"):
        load_sharegpt(f"hf:{folder}", split="test")
