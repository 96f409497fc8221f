"""A synthetic ShareGPT-like corpus: seeded conversations whose prompt and answer lengths follow
the published ShareGPT statistics, in a fixed vocabulary of pseudo-words (the embedded default's
workload, so the workflow runs offline)."""

from __future__ import annotations

import math

import numpy as np

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
