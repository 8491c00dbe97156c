"""BlendPlan: token classes (fixed / cached / must), the recompute budget and the
top-deviation selection, from a SegmentLookup in both modes."""

from __future__ import annotations

import pytest
import torch

from lmcache_ascend.blend.plan import BlendPlan, make_plan
from lmcache_ascend.blend.segments import Segment, SegmentLookup
from lmcache_ascend.blend.settings import BlendSettings


def seg(start: int, end: int, cached: bool) -> Segment:
    return Segment(start, end, key=None, location="LocalCPUBackend" if cached else None)


# 3 documents of 4 tokens, separators at 4 and 9, the middle one a hole, then a question.
SEGMENTS = (seg(0, 4, True), seg(5, 9, False), seg(10, 14, True), seg(15, 18, False))
NUM_TOKENS = 18


def plan(hole_mode: bool, ratio: float = 0.5, fixed: int = 0) -> BlendPlan:
    lookup = SegmentLookup(SEGMENTS, hole_mode)
    return make_plan(lookup, NUM_TOKENS, BlendSettings(recompute_ratio=ratio, hole_mode=hole_mode), fixed)


def positions(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().squeeze(1).tolist()


def test_hole_mode_marks_the_hole_and_keeps_later_segments_cached() -> None:
    p = plan(hole_mode=True)
    assert positions(p.cached) == [0, 1, 2, 3, 10, 11, 12, 13]
    assert positions(p.must) == [4, 5, 6, 7, 8, 9, 14, 15, 16, 17]  # separators, hole, question
    assert positions(p.candidates) == positions(p.cached)


def test_standard_mode_recomputes_everything_after_the_first_miss() -> None:
    p = plan(hole_mode=False)
    assert positions(p.cached) == [0, 1, 2, 3]
    assert positions(p.must) == list(range(4, NUM_TOKENS))


def test_budget_is_the_ratio_of_candidates_rounded_down() -> None:
    assert plan(True, ratio=0.5).budget == 4
    assert plan(True, ratio=0.3).budget == 2
    assert plan(True, ratio=0.0).budget == 0
    assert plan(True, ratio=1.0).budget == 8


def test_select_takes_must_tokens_and_the_top_deviations_sorted() -> None:
    p = plan(hole_mode=True, ratio=0.25)  # budget 2 of the 8 cached tokens
    deviation = torch.zeros(NUM_TOKENS)
    deviation[12] = 5.0
    deviation[1] = 3.0
    deviation[7] = 100.0  # a must token: its deviation does not take a budget slot
    got = p.select(deviation).tolist()
    assert got == sorted(positions(p.must) + [1, 12])
    assert p.reused(torch.tensor(got)) == 6


def test_ties_go_to_the_lower_position() -> None:
    p = plan(hole_mode=True, ratio=0.25)
    got = p.select(torch.ones(NUM_TOKENS)).tolist()
    assert set(got) - set(positions(p.must)) == {0, 1}


def test_ratio_one_selects_every_token() -> None:
    p = plan(hole_mode=True, ratio=1.0)
    assert p.select(torch.rand(NUM_TOKENS)).tolist() == list(range(NUM_TOKENS))


def test_fixed_tokens_are_never_selected_and_the_last_token_always_is() -> None:
    p = plan(hole_mode=True, ratio=1.0, fixed=6)
    got = p.select(torch.rand(NUM_TOKENS)).tolist()
    assert got == list(range(6, NUM_TOKENS))
    full = make_plan(SegmentLookup((seg(0, 18, True),), True), NUM_TOKENS, BlendSettings(recompute_ratio=0.0))
    assert full.select(torch.zeros(NUM_TOKENS)).tolist() == [NUM_TOKENS - 1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_tokens=0), "num_tokens"),
        (dict(cached=torch.zeros(5, dtype=torch.bool)), "cached"),
        (dict(cached=torch.zeros(NUM_TOKENS)), "cached"),
        (dict(fixed=NUM_TOKENS + 1), "fixed"),
    ],
)
def test_bad_plan_names_the_field(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = dict(
        num_tokens=NUM_TOKENS, cached=torch.zeros(NUM_TOKENS, dtype=torch.bool), fixed=0, recompute_ratio=0.1, check_layer=1
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"^{match}"):
        BlendPlan(**args)  # type: ignore[arg-type]


def test_select_checks_the_deviation_shape() -> None:
    with pytest.raises(ValueError, match="^deviation"):
        plan(True).select(torch.zeros(NUM_TOKENS - 1))


def test_segment_past_the_prompt_is_refused() -> None:
    lookup = SegmentLookup((seg(0, 30, True),), True)
    with pytest.raises(ValueError, match="beyond"):
        make_plan(lookup, NUM_TOKENS, BlendSettings())
