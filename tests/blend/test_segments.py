"""Segment-aware lookup against a real LMCache engine (SegmentTokenDatabase, CPU tier):
every segment with its position and location; standard mode keeps LMCache's
contiguous rule (cross-checked with ``LMCacheEngine.lookup``), hole mode keeps
every cached segment."""

from __future__ import annotations

import pytest

from testkit.blend_stack import LocalBlendStack
from lmcache_ascend.blend.segments import Segment, SegmentLookup, lookup_segments
from testkit.blend_workload import MultiDocWorkload
from tests.blend.conftest import DOC_LEN, NUM_DOCS, QUESTION_LEN


def doc_bounds(workload: MultiDocWorkload) -> list[tuple[int, int]]:
    """Token ranges of the documents and the question in a workload prompt."""
    step = DOC_LEN + len(workload.separator)
    bounds = [(i * step, i * step + DOC_LEN) for i in range(NUM_DOCS)]
    start = NUM_DOCS * step
    return [*bounds, (start, start + QUESTION_LEN)]


@pytest.mark.parametrize("hole", [None, 0, 1, 2, 3])
def test_every_segment_is_found_with_its_position(flash_stack: LocalBlendStack, workload: MultiDocWorkload, hole: int | None) -> None:
    tokens = workload.prompt(() if hole is None else (hole,))
    found = lookup_segments(flash_stack.engine, tokens, hole_mode=True)
    assert [(s.start, s.end) for s in found.segments] == doc_bounds(workload)
    cached = [s.cached for s in found.segments]
    assert cached == [i != hole for i in range(NUM_DOCS)] + [False]  # the question is new
    assert {s.location for s in found.segments if s.cached} == {"LocalCPUBackend"}


@pytest.mark.parametrize("hole", [None, 0, 1, 2, 3])
def test_standard_prefix_matches_lmcache_lookup(flash_stack: LocalBlendStack, workload: MultiDocWorkload, hole: int | None) -> None:
    tokens = workload.prompt(() if hole is None else (hole,))
    found = lookup_segments(flash_stack.engine, tokens, hole_mode=False)
    assert found.prefix_end == flash_stack.engine.lookup(tokens)
    assert found.hit_end == found.prefix_end
    assert found.used_after_first_miss == 0


@pytest.mark.parametrize("hole", [0, 1, 2, 3])
def test_hole_mode_uses_every_cached_segment(flash_stack: LocalBlendStack, workload: MultiDocWorkload, hole: int) -> None:
    tokens = workload.prompt((hole,))
    hole_mode = lookup_segments(flash_stack.engine, tokens, hole_mode=True)
    standard = lookup_segments(flash_stack.engine, tokens, hole_mode=False)
    assert len(hole_mode.usable) == NUM_DOCS - 1
    assert len(standard.usable) == hole
    assert hole_mode.used_after_first_miss == hole_mode.cached_after_first_miss == NUM_DOCS - 1 - hole


def test_two_holes(flash_stack: LocalBlendStack, workload: MultiDocWorkload) -> None:
    found = lookup_segments(flash_stack.engine, workload.prompt((0, 2)), hole_mode=True)
    assert [s.start for s in found.usable] == [doc_bounds(workload)[i][0] for i in (1, 3)]
    assert found.first_miss == 0 and found.used_after_first_miss == 2


def test_lookup_properties_without_a_miss() -> None:
    segs = (Segment(0, 3, None, "x"), Segment(4, 6, None, "x"))
    found = SegmentLookup(segs, hole_mode=True)
    assert found.first_miss == 2 and found.prefix_end == 6 and found.used_after_first_miss == 0


def test_bad_arguments(flash_stack: LocalBlendStack, workload: MultiDocWorkload) -> None:
    with pytest.raises(TypeError, match="^hole_mode"):
        lookup_segments(flash_stack.engine, workload.prompt(), hole_mode=1)  # type: ignore[arg-type]


def test_workload_prompt_layout(workload: MultiDocWorkload) -> None:
    tokens = workload.prompt((1,))
    bounds = doc_bounds(workload)
    assert len(tokens) == bounds[-1][1]
    assert tokens[bounds[0][0] : bounds[0][1]] == workload.document(0)
    assert tokens[bounds[1][0] : bounds[1][1]] not in workload.documents()
    for _, end in bounds[:-1]:
        assert tuple(tokens[end : end + len(workload.separator)]) == workload.separator
    with pytest.raises(ValueError, match="^holes"):
        workload.prompt((NUM_DOCS,))
    assert [workload.document_span(i) for i in range(NUM_DOCS)] == bounds[:-1]
    with pytest.raises(ValueError, match="^index"):
        workload.document_span(NUM_DOCS)
