"""``benchmarks/warm_rounds.py``: pooling, per-round ratios and the output check of the e2e benchmarks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import warm_rounds  # noqa: E402


def _r(ms: float, tokens: list[int]) -> dict:
    return {"ttft_s": ms / 1000, "token_ids": tokens}


# two prompts, two warm passes; round 2 is twice as slow for both set-ups
OURS = [
    ([_r(500, [1]), _r(510, [2])], [_r(60, [1]), _r(62, [2]), _r(58, [1]), _r(64, [2])]),
    ([_r(900, [1]), _r(910, [2])], [_r(120, [1]), _r(124, [2]), _r(116, [1]), _r(128, [2])]),
]
PEER = [([_r(400, [1])], [_r(50, [1]), _r(54, [1])]), ([_r(800, [1])], [_r(100, [1]), _r(108, [1])])]


def test_pooled_keeps_every_sample_in_order() -> None:
    cold, warm = warm_rounds.pooled(OURS)
    assert [r["ttft_s"] * 1000 for r in cold] == pytest.approx([500, 510, 900, 910])
    assert len(warm) == 8 and warm[4]["ttft_s"] == pytest.approx(0.120)
    assert warm_rounds.median_ttft_ms(warm) == pytest.approx((64 + 116) / 2)


def test_per_round_ratio() -> None:
    assert warm_rounds.per_round_ratio(OURS, PEER) == pytest.approx([61 / 52, 122 / 104])


def test_warm_matches_cold_per_prompt_and_round() -> None:
    assert warm_rounds.warm_matches_cold(OURS, 2)
    wrong = [OURS[0], (OURS[1][0], [*OURS[1][1][:3], _r(128, [1])])]  # last warm sample of prompt 2 got prompt 1's tokens
    assert not warm_rounds.warm_matches_cold(wrong, 2)


@pytest.mark.parametrize("arg", ["--prompts", "--warm-passes", "--rounds"])
def test_counts_below_one_are_refused(arg: str) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=3)
    warm_rounds.add_args(p)
    a = p.parse_args([arg, "0"])
    with pytest.raises(SystemExit):
        warm_rounds.check_args(p, a)
    warm_rounds.check_args(p, p.parse_args([]))
