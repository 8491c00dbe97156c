"""The core's LineWriter (csrc/line_writer.h), byte for byte, at both store widths.

A LineWriter writes one contiguous destination range from pieces given in
address order: whole lines straight from a piece, lines where pieces meet
through a 64-byte buffer, and the range's first and last lines (shared with
other rows, other threads' runs) with ordinary stores over the range's own
bytes only. The kernels use it for stores of packed rows that are no whole
number of lines (DSA-C8's 1282 bytes); these tests call it through the core's
test hook against numpy, at every destination offset in a line, with pieces
that start, end and meet anywhere, and check that no byte outside the range
is written (guard bytes on both sides).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_ascend import _kvcore
from tests.kernels.test_stream_copy import OFFSETS, WIDTHS, _addr, _aligned

GUARD = 64


def _write(dst_off: int, lengths: list[int], wide: bool, seed: int) -> None:
    """Writes pieces of `lengths` (each at its own odd source offset) from dst + GUARD + dst_off."""
    rng = np.random.default_rng(seed)
    total = sum(lengths)
    src = _aligned(total + 8 * len(lengths) + 64, rng)
    dst = _aligned(GUARD + dst_off + total + GUARD, rng)
    want = dst.copy()
    pieces, at, out = [], 1, GUARD + dst_off
    for n in lengths:
        pieces.append((_addr(src, at), n))
        want[out : out + n] = src[at : at + n]
        at += n + 7
        out += n
    _kvcore.line_writer(_addr(dst, GUARD + dst_off), pieces, wide)
    np.testing.assert_array_equal(dst, want, err_msg=f"dst+{dst_off} pieces={lengths}")


# Rows real layouts pack: DSA-C8 (latent 1024, rope 128, int8 indexer 128, fp16
# scale 2), an MLA row off the line grid, bf16 heads of 48 elements, lone bytes.
ROWS = {
    "dsa-c8": [1024, 128, 128, 2],
    "mla-odd": [1024, 130],
    "heads-96": [96] * 4,
    "bytes": [1, 2, 3, 63, 65],
    "empty-pieces": [0, 70, 0, 0, 5, 0],
}


@pytest.mark.parametrize("wide", WIDTHS, ids=["16B", "32B"])
@pytest.mark.parametrize("row", list(ROWS), ids=list(ROWS))
@pytest.mark.parametrize("tokens", [1, 3, 16])
def test_packed_rows(wide: bool, row: str, tokens: int) -> None:
    for dst_off in OFFSETS:
        _write(dst_off, ROWS[row] * tokens, wide, seed=dst_off)


@pytest.mark.parametrize("wide", WIDTHS, ids=["16B", "32B"])
@pytest.mark.parametrize("n", [0, 1, 2, 15, 16, 31, 32, 33, 63, 64, 65, 127, 128, 129, 640])
def test_one_piece(wide: bool, n: int) -> None:
    """A single piece: a range inside one line, across one boundary, or many lines."""
    for dst_off in OFFSETS:
        _write(dst_off, [n], wide, seed=n)


def test_no_pieces() -> None:
    _write(5, [], False, seed=0)


@settings(max_examples=150, deadline=None)
@given(
    dst_off=st.integers(0, 63),
    lengths=st.lists(st.integers(0, 300), max_size=12),
    wide=st.booleans() if _kvcore.wide_streaming() else st.just(False),
)
def test_any_pieces(dst_off: int, lengths: list[int], wide: bool) -> None:
    _write(dst_off, lengths, wide, seed=len(lengths))


def test_refuses_bad_arguments() -> None:
    buf = _aligned(256, np.random.default_rng(0))
    with pytest.raises(ValueError, match="piece lengths"):
        _kvcore.line_writer(_addr(buf), [(_addr(buf, 128), -1)], False)
    if not _kvcore.wide_streaming():
        with pytest.raises(ValueError, match="32-byte"):
            _kvcore.line_writer(_addr(buf), [(_addr(buf, 128), 16)], True)
