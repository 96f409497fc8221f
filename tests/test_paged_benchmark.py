"""benchmarks/serving.py and plot_serving.py (issue 22's comparison with ML.ENERGY): the steady
window on a hand-built record, output lengths drawn from a histogram, prompts carrying history, and
the comparison table; values worked out by hand beside each assertion."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tokencarbon.backends import RequestRecord, ServingResult, StepRecord
from tokencarbon.errors import InputError
from tokencarbon.synthetic import synthetic_conversations

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import plot_serving  # noqa: E402
import serving  # noqa: E402

MS = 1_000_000  # ns


def hand_built() -> ServingResult:
    """5 requests, max_num_seqs 2, one step every 10 ms (steps 0..9, step k from 10k to 10k + 10
    ms; wall = monotonic + 1e9). a and b start at step 0 (their prompts), c joins at step 3 when a
    finishes, d at step 5 when b finishes, e at step 7 when c finishes."""
    plan = [  # (ids, tokens processed, new tokens)
        (("a", "b"), (4, 6), (1, 1)),
        (("a", "b"), (1, 1), (1, 1)),
        (("a", "b"), (1, 1), (1, 1)),  # a's 3rd and last token
        (("b", "c"), (1, 5), (1, 1)),
        (("b", "c"), (1, 1), (1, 1)),  # b's 5th and last
        (("c", "d"), (1, 3), (1, 1)),
        (("c", "d"), (1, 1), (1, 1)),  # c's 4th and last
        (("d", "e"), (1, 2), (1, 1)),
        (("d", "e"), (1, 1), (1, 1)),  # d's 4th and last
        (("e",), (1,), (1,)),  # e's 3rd and last
    ]
    steps = tuple(
        StepRecord(k, "mixed", 10 * k * MS, (10 * k + 10) * MS, 10 * k * MS + 10**9,
                   (10 * k + 10) * MS + 10**9, ids, tok, new)
        for k, (ids, tok, new) in enumerate(plan)
    )  # fmt: skip
    end = {"a": 2, "b": 4, "c": 6, "d": 8, "e": 9}
    first = {"a": 0, "b": 0, "c": 3, "d": 5, "e": 7}
    made = {"a": 3, "b": 5, "c": 4, "d": 4, "e": 3}
    t_first = {rid: (10 * k + 10) * MS for rid, k in first.items()}
    t_end = {rid: (10 * k + 10) * MS for rid, k in end.items()}
    reqs = tuple(
        RequestRecord(rid, 1, made[rid], 0, t_first[rid], t_end[rid],
                      10**9, t_first[rid] + 10**9, t_end[rid] + 10**9, 0)
        for rid in "abcde"
    )  # fmt: skip
    return ServingResult(reqs, steps, 0, 100 * MS, 10**9, 10**9 + 100 * MS)


def test_ml_energy_steady_window_by_hand():
    w = serving.steady_window(hand_built(), max_num_seqs=2)
    # from the 2nd first token (a and b, end of step 0: 10 ms) until 5 - 2 - 1 = 2 requests have
    # finished (b, end of step 4: 50 ms): steps 1..4 lie inside, 2 new tokens each = 8 tokens
    assert (w["start_ns"], w["end_ns"]) == (10 * MS, 50 * MS)
    assert (w["start_wall_ns"], w["end_wall_ns"]) == (10 * MS + 10**9, 50 * MS + 10**9)
    assert w["seconds"] == pytest.approx(0.04) and w["output_tokens"] == 8
    assert w["output_tok_per_s"] == pytest.approx(200.0)
    assert w["mean_batch"] == 2.0 and w["mean_batch_share"] == 1.0
    # ITL inside: a 10->20->30, b 10->..->50, c 40->50: 2 + 4 + 1 = 7 gaps, all 10 ms
    assert w["itl_ms"]["p50"] == pytest.approx(10.0) and w["itl_ms"]["mean"] == pytest.approx(10.0)
    assert w["flags"] == ["steady state 0.0 s < 20 s"]
    # max_num_seqs 3: from the 3rd first token (c, 40 ms) until 5 - 3 - 1 = 1 finished (a, 30
    # ms): empty; max_num_seqs 4 leaves 0 to finish: none
    assert serving.steady_window(hand_built(), 3) is None
    assert serving.steady_window(hand_built(), 4) is None


def test_serving_stats_count_tokens_itl_and_steps_by_kind():
    stats = serving.serving_stats(hand_built(), 2)
    # 3 + 5 + 4 + 4 + 3 = 19 output tokens; 10 steps of 10 ms, all "mixed"
    assert stats["output_tokens"] == 19 and stats["mixed_steps"] == 10
    assert stats["mixed_step_ms"]["p50"] == pytest.approx(10.0)
    assert stats["gap_share"] == pytest.approx(0.0)
    # 19 tokens made: gaps a 2, b 4, c 3, d 3, e 2 = 14 ITLs, each 10 ms
    assert stats["itl_ms"]["mean"] == pytest.approx(10.0)
    # mean batch: 9 steps of 2 and 1 of 1, each 10 ms: 19 / 10
    assert stats["mean_batch"] == pytest.approx(1.9)


def write_histogram(path: Path, rows: list[str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{serving.MLENERGY_TASK}_output_lengths.csv").write_text(
        "bin_low_tokens,bin_high_tokens,count\n" + "\n".join(rows) + "\n"
    )
    return path


def test_output_lengths_follow_the_histogram(tmp_path):
    # bins [2, 4.5): integers 2..4, count 3; [4.5, 7): 5..6, count 0; [7, 9.5): the last bin, its
    # top rounded (the capped responses): 10, count 1. So 3/4 of draws in 2..4, 1/4 exactly 10.
    d = write_histogram(tmp_path, ["2.0,4.5,3", "4.5,7.0,0", "7.0,9.5,1"])
    bins = serving.read_output_histogram(d)
    assert bins == [(2.0, 4.5, 3), (4.5, 7.0, 0), (7.0, 9.5, 1)]
    out = serving.sample_output_lengths(bins, 4000, np.random.default_rng(0))
    assert set(out.tolist()) == {2, 3, 4, 10}
    assert abs((out == 10).mean() - 0.25) < 0.03  # 4,000 draws: sd of the share 0.007
    low = out[out < 10]
    for v in (2, 3, 4):  # uniform within the bin
        assert abs((low == v).mean() - 1 / 3) < 0.04
    with pytest.raises(InputError, match="expected columns"):
        serving.read_output_histogram(_bad_columns(tmp_path / "c"))
    with pytest.raises(InputError, match="row 3: bin \\[4.0, 7.0\\)"):
        serving.read_output_histogram(write_histogram(tmp_path / "d", ["2.0,4.5,3", "4.0,7.0,1"]))


def _bad_columns(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{serving.MLENERGY_TASK}_output_lengths.csv").write_text("low,high,n\n1,2,3\n")
    return path


def test_history_prompts_are_a_conversation_up_to_one_of_its_human_turns():
    lengths = serving.history_prompt_lengths(200, seed=5, max_prompt=10**6)
    convs = synthetic_conversations(200, 5)
    deeper = 0
    for length, conv in zip(lengths, convs):
        turns = [len(t["value"].split()) for t in conv["conversations"]]
        humans = [i for i, t in enumerate(conv["conversations"]) if t["from"] == "human"]
        # the prompt is the words of turns 0..h for one human turn h (at least 1 token)
        ends = [max(1, sum(turns[: h + 1])) for h in humans]
        assert length in ends
        deeper += length != ends[0]
    assert deeper > 50  # history carried in many: with 2, 4 or 6 turns, 1 - (1 + 1/2 + 1/3)/3
    capped = serving.history_prompt_lengths(200, seed=5, max_prompt=100)
    assert capped.max() == 100 and (capped == np.minimum(lengths, 100)).all()


def test_comparison_table_puts_our_windows_beside_ml_energys_rows():
    configs = [{"gpu_model": "H100", "max_num_seqs": 64, "avg_batch_size": 63.9,
                "avg_output_len": 395.5, "output_throughput_tokens_per_sec": 5147.2,
                "energy_per_token_joules": 0.1186, "avg_power_watts": 610.3,
                "median_itl_ms": 11.5, "p90_itl_ms": 13.2, "p99_itl_ms": 25.7}]  # fmt: skip
    record = {"benchmark": "serving", "machine": {"device_name": "NVIDIA H100 80GB HBM3"},
              "cases": [
                  {"name": "mle-cb64", "engine": "continuous", "kv_layout": "paged",
                   "request_set": "mlenergy", "concurrency": 64, "output_tok_per_s": 6000.0,
                   "j_per_output_token": 0.09,
                   "stats": {"itl_ms": {"p50": 9.0},
                             "steady": {"output_tok_per_s": 6500.0, "j_per_output_token": 0.085,
                                        "itl_ms": {"p50": 9.5}, "flags": []}}},
                  {"name": "static64", "engine": "static", "concurrency": 64},
              ]}  # fmt: skip
    table = plot_serving.comparison_table([(Path("r.json"), record)], configs)
    assert len(table) == 3  # ML.ENERGY's row; our whole run and steady window; static left out
    ours = table[table["source"] == "tokencarbon"].set_index("window")
    assert (
        ours.loc["steady", "tok_per_s"] == 6500.0 and ours.loc["whole run", "j_per_token"] == 0.09
    )
    assert set(ours["gpu"]) == {"H100"} and not ours["dropped"].any()
    fig = plot_serving.plot_comparison(table)
    assert len(fig.axes) == 2
    with pytest.raises(InputError, match="r.json: field 'benchmark' is 'decode'"):
        plot_serving.comparison_table([(Path("r.json"), {"benchmark": "decode"})], configs)
