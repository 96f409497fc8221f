"""The synthetic ShareGPT generator: its length statistics against the cited figures, its shape,
its vocabulary, and its seeding."""

import re
from collections import Counter

import numpy as np
import pytest

from tokencarbon.synthetic import synthetic_conversations, synthetic_vocabulary
from tokencarbon.workload import extract_pairs

N = 4000


@pytest.fixture(scope="module")
def conversations() -> list[dict]:
    return synthetic_conversations(N, seed=0)


def first_lengths(conversations) -> tuple[np.ndarray, np.ndarray]:
    """Words of the first prompt of every conversation, and of the first answer where there is one."""
    prompts = np.array([len(c["conversations"][0]["value"].split()) for c in conversations])
    answers = np.array(
        [
            len(c["conversations"][1]["value"].split())
            for c in conversations
            if len(c["conversations"]) > 1
        ]
    )
    return prompts, answers


def test_prompt_lengths_follow_sharegpt(conversations):
    prompts, _ = first_lengths(conversations)
    # vLLM paper (Kwon et al., SOSP 2023), Fig. 11a: ShareGPT mean input 161.31 tokens.
    # The lognormal's sigma is 1.2, so the sample mean's standard error over 4000 prompts is
    # 161.31 * sqrt(exp(1.2^2) - 1) / sqrt(4000) = 161.31 * 1.79 / 63.2 = 4.6 tokens (2.8 %):
    # 10 % is 3.5 standard errors.
    assert prompts.mean() == pytest.approx(161.31, rel=0.10)
    # Median exp(mu), mu = ln(161.31) - 1.2^2 / 2 = 5.0833 - 0.72 = 4.3633: 78.5 tokens. Its
    # standard error is about 1.25 * 1.2 / sqrt(4000) = 2.4 %; 10 % is 4 of them.
    assert np.median(prompts) == pytest.approx(78.5, rel=0.10)


def test_answer_lengths_follow_sharegpt(conversations):
    _, answers = first_lengths(conversations)
    # Fig. 11a: mean output 337.99 tokens. 1 % empty and 1 % 1-3-word answers (mean 2) are in the
    # mix, the lognormal part's mean raised to (337.99 - 0.02) / 0.98 = 344.87 to keep 337.99.
    # Standard error with sigma 0.5: 344.87 * sqrt(exp(0.25) - 1) / sqrt(3920) = 2.9 tokens (0.9 %).
    assert answers.mean() == pytest.approx(337.99, rel=0.05)
    # Median: the lognormal's exp(ln(344.87) - 0.5^2 / 2) = exp(5.8432 - 0.125) = 304.3, moved down
    # by the 2 % of tiny answers below it: its quantile (0.5 - 0.02) / 0.98 = 0.4898, z = -0.0256,
    # 304.3 * exp(0.5 * -0.0256) = 300.5.
    assert np.median(answers) == pytest.approx(300.5, rel=0.05)
    # 1 % empty answers: 39 of ~3920 expected, standard error sqrt(0.01 * 0.99 / 3920) = 0.16 %.
    assert np.mean(answers == 0) == pytest.approx(0.01, abs=0.005)
    assert np.mean((answers >= 1) & (answers <= 3)) == pytest.approx(0.01, abs=0.005)


def test_turn_counts_and_the_two_turn_rule(conversations):
    turns = Counter(len(c["conversations"]) for c in conversations)
    assert set(turns) == {1, 2, 4, 6}
    # 2 % one-turn conversations; standard error sqrt(0.02 * 0.98 / 4000) = 0.22 %.
    assert turns[1] / N == pytest.approx(0.02, abs=0.01)
    # The rest split evenly over 2, 4 and 6 turns: 0.98 / 3 = 0.327 each (standard error 0.74 %).
    for k in (2, 4, 6):
        assert turns[k] / N == pytest.approx(0.98 / 3, abs=0.025)
    # Every conversation of 2 turns or more is a human -> gpt pair; one-turn ones are dropped.
    assert len(extract_pairs(conversations)) == N - turns[1]


def test_shape_human_first_alternating(conversations):
    assert [c["id"] for c in conversations[:3]] == ["synthetic_0", "synthetic_1", "synthetic_2"]
    assert len({c["id"] for c in conversations}) == N
    for c in conversations:
        roles = [t["from"] for t in c["conversations"]]
        assert roles == ["human", "gpt", "human", "gpt", "human", "gpt"][: len(roles)]
        assert all(isinstance(t["value"], str) for t in c["conversations"])
        assert all(t["value"] for t in c["conversations"] if t["from"] == "human")


def test_text_is_vocabulary_words_with_zipf_frequencies(conversations):
    words, p = synthetic_vocabulary()
    counts = Counter(
        w for c in conversations[:500] for t in c["conversations"] for w in t["value"].split()
    )
    assert set(counts) <= set(words)
    total = sum(counts.values())
    # p_k = (1/k) / H_2000, H_2000 = ln 2000 + 0.5772 + 1/4000 = 8.178: the top word makes
    # 1/8.178 = 12.2 % of the text and the second half as much, 6.1 %.
    assert counts[words[0]] / total == pytest.approx(0.1223, abs=0.005)
    assert counts[words[1]] / total == pytest.approx(0.0611, abs=0.004)
    assert p[0] == pytest.approx(0.1223, abs=1e-4) and p[0] / p[1] == pytest.approx(2.0)


def test_vocabulary_is_fixed():
    words, p = synthetic_vocabulary()
    again, p_again = synthetic_vocabulary()
    assert words == again and np.array_equal(p, p_again)
    assert len(set(words)) == 2000
    # 1-4 consonant-vowel syllables from b d f g k l m n p r s t v and a e i o u.
    assert all(re.fullmatch(r"(?:[bdfgklmnprstv][aeiou]){1,4}", w) for w in words)


def test_seeding():
    a = synthetic_conversations(50, seed=7)
    assert a == synthetic_conversations(50, seed=7)
    b = synthetic_conversations(50, seed=8)
    assert a != b
    assert [c["conversations"][0]["value"] for c in a] != [
        c["conversations"][0]["value"] for c in b
    ]
