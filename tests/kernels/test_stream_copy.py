"""The core's streaming-store primitives, byte for byte, at both store widths.

``copy_streaming`` (whole runs), ``copy_pieces`` (fixed-size pieces, the
sizes real layouts use and others) and ``stream_gathered_lines`` (64-byte lines
gathered from 16- or 32-byte pieces: 310P NZ) choose 32-byte stores where the
CPU has AVX2 and 16-byte ones elsewhere. The kernels' own tests run whichever
width this machine picks; these call the primitives through the core's test
hooks with the width forced, against a numpy reference, at every destination
alignment that selects a different head / bulk / tail split, and check that no
byte outside the destination ranges is written.
"""

from __future__ import annotations

import numpy as np
import pytest

from lmcache_ascend import _kvcore

WIDTHS = [False, pytest.param(True, marks=pytest.mark.skipif(not _kvcore.wide_streaming(), reason="no AVX2 here"))]
# Sizes around each split: under 16 / 64 / 128 / 256 bytes, odd, and block runs.
SIZES = [0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 256, 257, 300, 383, 1000, 4103, 32768, 32801]
# Destination offsets from a 64-byte boundary: each head length the loops can see.
OFFSETS = [0, 1, 8, 15, 16, 17, 31, 32, 33, 48, 63]


def _aligned(nbytes: int, rng: np.random.Generator) -> np.ndarray:
    """Random bytes whose data starts on a 64-byte boundary (and 64 spare bytes)."""
    raw = rng.integers(0, 256, nbytes + 128, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64
    return raw[start : start + nbytes + 64]


def _addr(a: np.ndarray, offset: int = 0) -> int:
    return int(a.ctypes.data) + offset


@pytest.mark.parametrize("wide", WIDTHS, ids=["16B", "32B"])
@pytest.mark.parametrize("n", SIZES)
def test_copy_streaming(wide: bool, n: int) -> None:
    rng = np.random.default_rng(n)
    for dst_off in OFFSETS:
        for src_off in (0, 3, 32):
            src = _aligned(n + 64, rng)
            dst = _aligned(n + 128, rng)
            want = dst.copy()
            want[dst_off : dst_off + n] = src[src_off : src_off + n]
            _kvcore.streaming_copy(_addr(dst, dst_off), _addr(src, src_off), n, wide)
            np.testing.assert_array_equal(dst, want, err_msg=f"n={n} dst+{dst_off} src+{src_off}")


PIECES = [2, 4, 8, 16, 32, 48, 64, 100, 128, 256, 512]


@pytest.mark.parametrize("wide", WIDTHS, ids=["16B", "32B"])
@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "plain"])
@pytest.mark.parametrize("n", PIECES)
def test_copy_pieces(wide: bool, streaming: bool, n: int) -> None:
    rng = np.random.default_rng(n)
    count = 5
    # destination steps: packed, 16-byte aligned only, 32-byte aligned, wider
    for dst_step in sorted({n, n + 16, n + 32, 2 * n + 48}):
        for dst_off in (0, 16, 32, 3):
            for src_step in (n, n + 3):
                src = _aligned(count * src_step + 64, rng)
                dst = _aligned(count * dst_step + 64, rng)
                want = dst.copy()
                for i in range(count):
                    want[dst_off + i * dst_step : dst_off + i * dst_step + n] = src[5 + i * src_step : 5 + i * src_step + n]
                _kvcore.streaming_pieces(_addr(dst, dst_off), dst_step, _addr(src, 5), src_step, count, n, streaming, wide)
                np.testing.assert_array_equal(dst, want, err_msg=f"n={n} dst_step={dst_step} dst+{dst_off} src_step={src_step}")


@pytest.mark.parametrize("wide", WIDTHS, ids=["16B", "32B"])
@pytest.mark.parametrize("piece", [16, 32])
def test_gathered_lines(wide: bool, piece: int) -> None:
    rng = np.random.default_rng(piece)
    count, per_line = 6, 64 // piece
    for dst_step in (64, 192):
        for src_step, piece_step in ((piece * per_line, piece), (40, 512), (1024, 96)):
            src = _aligned(count * src_step + per_line * piece_step + 64, rng)
            dst = _aligned(count * dst_step, rng)
            want = dst.copy()
            for i in range(count):
                for j in range(per_line):
                    at = i * src_step + j * piece_step + 7
                    want[i * dst_step + j * piece : i * dst_step + (j + 1) * piece] = src[at : at + piece]
            _kvcore.streaming_lines(piece, _addr(dst), dst_step, _addr(src, 7), src_step, piece_step, count, wide)
            np.testing.assert_array_equal(dst, want, err_msg=f"dst_step={dst_step} src_step={src_step} piece_step={piece_step}")


def test_hooks_refuse_bad_arguments() -> None:
    buf = _aligned(256, np.random.default_rng(0))
    with pytest.raises(ValueError, match="n must be"):
        _kvcore.streaming_copy(_addr(buf), _addr(buf, 128), -1, False)
    with pytest.raises(ValueError, match="piece must be 16 or 32"):
        _kvcore.streaming_lines(24, _addr(buf), 64, _addr(buf, 128), 64, 24, 1, False)
    with pytest.raises(ValueError, match="64-byte aligned"):
        _kvcore.streaming_lines(16, _addr(buf, 16), 64, _addr(buf, 128), 64, 16, 1, False)
    if not _kvcore.wide_streaming():
        with pytest.raises(ValueError, match="32-byte"):
            _kvcore.streaming_copy(_addr(buf), _addr(buf, 128), 16, True)
