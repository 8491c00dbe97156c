"""Non-temporal ("streaming") stores give the same bytes as ordinary copies.

Heads of 260 and 301 bytes put most destinations off 16-byte boundaries, so the
aligned middle, the unaligned head and the tail of ``copy_streaming`` all run.
"""

from __future__ import annotations

import pytest
import torch

from lmcache_ascend.kernels import host
from tests.kernels.helpers import DIRECTIONS, call_multi_layer, check_against_reference
from tests.kernels.reference import (
    FORMAT_NAMES,
    SLOT_FORMATS,
    Geom,
    make_paged,
    object_shape,
    random_slots,
    random_tensor,
)

# fp16 heads: 130 elements (260 bytes, mostly unaligned destinations), and
# 32 / 128 elements (64 / 256 bytes: whole cache lines, streamed piece by piece).
GEOMS = {
    "260B": Geom(num_layers=2, num_blocks=6, block_size=16, num_heads=2, head_size=130),
    "64B": Geom(num_layers=2, num_blocks=6, block_size=16, num_heads=3, head_size=32),
    "256B": Geom(num_layers=2, num_blocks=6, block_size=16, num_heads=3, head_size=128),
}


@pytest.mark.parametrize("head", list(GEOMS))
@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
@pytest.mark.parametrize("fmt", SLOT_FORMATS, ids=[f"{f}-{FORMAT_NAMES[f]}" for f in SLOT_FORMATS])
def test_streaming_matches_reference(streaming, fmt: int, direction: int, head: str, gen: torch.Generator) -> None:
    g = GEOMS[head]
    cache = make_paged(fmt, g, torch.float16, gen)
    obj = random_tensor(object_shape(fmt, g, 45), torch.float16, gen)
    slots = random_slots(45, g.num_slots, gen, 4)
    check_against_reference(cache, obj, slots, direction, lambda c, o: call_multi_layer(c, o, slots, direction, skip=3), skip=3)


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_streaming_odd_byte_rows(streaming, direction: int, gen: torch.Generator) -> None:
    g = Geom(num_layers=3, num_blocks=5, block_size=7, num_heads=1, head_size=301)
    cache = make_paged(3, g, torch.int8, gen)
    obj = random_tensor(object_shape(3, g, 29), torch.int8, gen)
    slots = random_slots(29, g.num_slots, gen, 2)
    check_against_reference(cache, obj, slots, direction, lambda c, o: call_multi_layer(c, o, slots, direction))


@pytest.mark.parametrize("value,expected", [("on", True), ("off", False), ("auto", False), ("", False)])
def test_streaming_setting(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv(host.STREAMING_ENV, value)
    assert host.use_streaming(1 << 10) is expected
    monkeypatch.setenv(host.STREAMING_ENV, "auto")
    assert host.use_streaming(host.STREAMING_MIN_BYTES) is True


def test_streaming_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(host.STREAMING_ENV, "sometimes")
    with pytest.raises(ValueError, match="LMCACHE_ASCEND_STREAMING_STORES"):
        host.use_streaming(0)
