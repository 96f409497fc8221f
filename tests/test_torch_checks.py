"""backends/checks.py: the one set of request checks both torch engines run; each bad input is
refused naming the request and what would be valid."""

from __future__ import annotations

import dataclasses

import pytest

from tokencarbon.backends import Request
from tokencarbon.backends.checks import check_batch, check_requests, token_limit
from tokencarbon.errors import InputError
from tokencarbon.models import load_architecture

ARCH = load_architecture("tiny-llama")  # max_positions 512, vocab 4096


@pytest.mark.parametrize(
    "prompts, outputs, message",
    [
        ([], [], "batch of 0 prompts and 0 output lengths"),
        ([[1]], [1, 2], "batch of 1 prompts and 2 output lengths"),
        ([[1], []], [1, 1], "request 1: 0 prompt tokens, 1 output tokens; both must be >= 1"),
        ([[1]], [0], "request 0: 1 prompt tokens, 0 output tokens"),
        ([[1] * 500], [13], "request 0: 500 prompt \\+ 13 output tokens exceed tiny-llama's "
                            "max_positions 512"),  # fmt: skip
        ([[4096]], [1], "request 0: token ids must lie in \\[0, 4096\\)"),
        ([[-1]], [1], "request 0: token ids must lie in"),
    ],
)
def test_bad_batches(prompts, outputs, message):
    with pytest.raises(InputError, match=message):
        check_batch(ARCH, prompts, outputs)


def test_limits_at_the_edge_pass():
    check_batch(ARCH, [[0] * 500, [4095]], [12, 511])  # 500 + 12 = 512 and 1 + 511 = 512


def test_sliding_window_caps_the_length():
    # Mistral-style window of 100 tokens: full attention is only exact up to 100 tokens.
    windowed = dataclasses.replace(ARCH, model_type="mistral", sliding_window=100)
    assert token_limit(windowed) == (100, "tiny-llama's sliding_window 100")
    check_batch(windowed, [[1] * 60], [40])
    with pytest.raises(InputError, match="60 prompt \\+ 41 output tokens exceed tiny-llama's "
                                         "sliding_window 100"):  # fmt: skip
        check_batch(windowed, [[1] * 60], [41])


def test_bad_request_sets():
    ok = Request("a", (1, 2), 3)
    with pytest.raises(InputError, match="no requests to serve"):
        check_requests(ARCH, [])
    with pytest.raises(InputError, match="request id 'a' appears twice"):
        check_requests(ARCH, [ok, Request("a", (3,), 1)])
    for arrival in (-0.5, float("nan"), float("inf")):
        with pytest.raises(InputError, match="request 'b': arrival_s=.*finite number of seconds"):
            check_requests(ARCH, [ok, Request("b", (3,), 1, arrival_s=arrival)])
    with pytest.raises(InputError, match="request 'b': 1 prompt tokens, 0 output tokens"):
        check_requests(ARCH, [ok, Request("b", (3,), 0)])
