"""Warm samples over interleaved rounds: how the e2e benchmarks measure a warm TTFT.

``e2e_vllm.py`` and ``e2e_mp.py`` start every set-up ``--rounds`` times,
interleaved (all set-ups, then all again), and each engine sends every prompt
cold once, then warm ``--warm-passes`` times. One set-up's results are a
:data:`RoundRuns`: per round, the cold results (one per prompt, in prompt
order) and the warm results (every pass, in the same order). Medians pool every
sample of every round; the per-round ratios show the spread.
"""

from __future__ import annotations

import argparse
import statistics

RoundRuns = list[tuple[list[dict], list[dict]]]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--warm-passes", type=int, default=3, help="warm repeats of every prompt per engine")
    p.add_argument("--rounds", type=int, default=2, help="start every set-up this many times, interleaved")


def check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """``--prompts``, ``--warm-passes`` and ``--rounds`` must be at least 1."""
    for arg in ("prompts", "warm_passes", "rounds"):
        if getattr(a, arg) < 1:
            p.error(f"--{arg.replace('_', '-')} must be >= 1")


def median_ttft_ms(results: list[dict]) -> float:
    return statistics.median(r["ttft_s"] for r in results) * 1000


def pooled(rounds: RoundRuns) -> tuple[list[dict], list[dict]]:
    """Every cold and every warm result of every round."""
    return [c for cold, _ in rounds for c in cold], [w for _, warm in rounds for w in warm]


def per_round_ratio(num: RoundRuns, den: RoundRuns) -> list[float]:
    """Median warm TTFT of ``num`` over ``den``, round by round."""
    return [median_ttft_ms(a[1]) / median_ttft_ms(b[1]) for a, b in zip(num, den)]


def warm_matches_cold(rounds: RoundRuns, num_prompts: int) -> bool:
    """Every warm sample's tokens equal its own prompt's cold tokens, in its own round."""
    return all(w["token_ids"] == cold[i % num_prompts]["token_ids"] for cold, warm in rounds for i, w in enumerate(warm))
