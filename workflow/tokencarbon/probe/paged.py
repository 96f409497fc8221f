"""The continuous probe's paged fit: how many of a workload's requests a paged KV pool of a given
number of blocks holds at once, each to its last token (pool arithmetic, no device)."""

from __future__ import annotations

from typing import Any

from tokencarbon.errors import ConfigError


def request_blocks_at(request_tokens: list[int], block_size: int) -> list[int]:
    """KV blocks each request holds at its end: blocks_for(kv positions) of its prompt + output
    tokens (paged.kv_positions: every token but the last is written), largest first."""
    from tokencarbon.backends.paged import blocks_for

    return sorted((blocks_for(max(1, t - 1), block_size) for t in request_tokens), reverse=True)


def paged_fit(
    num_blocks: int,
    block_size: int,
    prompt_len: int,
    output_len: int,
    request_blocks: list[int],
    limit: int,
) -> dict[str, Any]:
    """How many requests a paged pool of num_blocks blocks holds at once, each to its last token.

    longest: requests of the longest prompt + the longest output (paged.max_num_seqs_fitting's
    worst case); workload: the largest n such that the n largest requests of the workload
    (request_blocks: KV blocks of each at its end, largest first) fit together, so that no
    request of the cell can be preempted whatever the order of their steps; typical: requests of
    the workload's mean blocks (how many of its typical request the pool holds, which may exceed
    the workload's count). max_num_seqs: min(limit, workload) (a cell's max_num_seqs never
    exceeds its requests). Tokens in flight are blocks x block_size at each count. Raises
    ConfigError for an empty request list or lengths < 1.

    By hand: 100 blocks of 16, requests of 40, 30, 30, 20 blocks: the 3 largest take 100 blocks,
    the 4 take 120: workload 3; the mean is 30 blocks: typical 3; longest (prompt 8 + output
    640 = 647 positions, 41 blocks): 2."""
    from tokencarbon.backends.paged import blocks_for, kv_positions

    if not request_blocks or min(prompt_len, output_len) < 1:
        raise ConfigError(
            f"paged fit: {len(request_blocks)} requests, prompt_len {prompt_len}, output_len "
            f"{output_len}; needs requests and lengths >= 1"
        )
    longest_blocks = blocks_for(kv_positions(prompt_len, output_len), block_size)
    used, workload = 0, 0
    for blocks in sorted(request_blocks, reverse=True):
        if used + blocks > num_blocks:
            break
        used, workload = used + blocks, workload + 1
    mean_blocks = sum(request_blocks) / len(request_blocks)
    typical = int(num_blocks // mean_blocks)
    n = min(limit, workload)
    return {
        "pool_blocks": num_blocks,
        "block_size": block_size,
        "pool_tokens": num_blocks * block_size,
        "longest": {"max_num_seqs": num_blocks // longest_blocks,
                    "tokens_in_flight": (num_blocks // longest_blocks) * longest_blocks * block_size},
        "workload": {"max_num_seqs": workload, "tokens_in_flight": used * block_size,
                     "requests": len(request_blocks)},
        "typical": {"max_num_seqs": typical, "mean_blocks": mean_blocks},
        "limit": limit,
        "max_num_seqs": n,
        "tokens_in_flight": sum(sorted(request_blocks, reverse=True)[:n]) * block_size,
    }  # fmt: skip
