"""Streaming stores on the layouts whose pieces the host core copies in fixed-size
loops: heads of whole cache lines in an object off a line boundary (the aligned
case is in test_streaming.py), plane tuples (MLA / DSA rows, 64-byte aligned or
not) and 310P NZ (32-byte pieces), against the independent references, with -1 slots and a skipped prefix.

Transfers below 4 MiB use ordinary stores unless streaming is forced, so the
other kernel tests never reach these paths.
"""

from __future__ import annotations

import math

import pytest
import torch

from lmcache_ascend import ops
from tests.kernels.helpers import DIRECTIONS, call_multi_layer, check_against_reference
from tests.kernels.reference import (
    Geom,
    make_paged,
    object_shape,
    random_slots,
    random_tensor,
)
from tests.kernels.reference_ascend import (
    PLANE_LAYOUTS,
    block_slot_list,
    make_nz_cache,
    make_plane_cache,
    ref_nz_transfer,
    ref_plane_transfer,
    row_elems,
)
from tests.kernels.test_ascend_layouts import NZ_FORMATS, NZ_IDS, check, plane_desc

CPU = torch.device("cpu")
F17 = ops.EngineKVFormat(17)


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
@pytest.mark.parametrize("fmt", [6, 7, 8])
def test_whole_line_heads_unaligned_object(streaming, fmt: int, direction: int, gen: torch.Generator) -> None:
    """An object 16 bytes past a cache line: pieces of whole lines, yet not line-aligned."""
    g = Geom(num_layers=2, num_blocks=4, block_size=16, num_heads=2, head_size=128)
    cache = make_paged(fmt, g, torch.float16, gen)
    shape = object_shape(fmt, g, 37)
    obj = random_tensor((math.prod(shape) + 8,), torch.float16, gen)[8:].view(shape)
    slots = random_slots(37, g.num_slots, gen, 3)
    check_against_reference(cache, obj, slots, direction, lambda c, o: call_multi_layer(c, o, slots, direction))


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
@pytest.mark.parametrize("layout", list(PLANE_LAYOUTS))
def test_plane_tuples(streaming, layout: str, direction: int, gen: torch.Generator) -> None:
    planes = PLANE_LAYOUTS[layout]
    nl, nb, bs = 2, 8, 16
    cache = make_plane_cache(planes, nl, nb, bs, gen)
    h = row_elems(planes)
    obj = random_tensor((1, nl, 70, h), planes[0][1], gen)
    slots = random_slots(70, nb * bs, gen, 5)

    def run(c, o: torch.Tensor) -> None:
        ops.multi_layer_kv_transfer(o, c.arg(), slots, CPU, nb * bs, direction, F17, bs, h, 6)

    check(cache, obj, run, lambda c, o: ref_plane_transfer(c, o, slots, direction, 6), True)


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
@pytest.mark.parametrize("layout", ["MLA-bf16", "DSA-C8-bf16"])
def test_plane_tuple_blocks(streaming, layout: str, direction: int, gen: torch.Generator) -> None:
    """Block op, two objects of 16 tokens (4 blocks each), the first block skipped."""
    planes = PLANE_LAYOUTS[layout]
    nl, nb, bs, chunk = 2, 8, 4, 16
    cache = make_plane_cache(planes, nl, nb, bs, gen)
    h = row_elems(planes)
    objs = random_tensor((2, 1, nl, chunk, h), planes[0][1], gen)
    blocks = torch.randperm(nb, generator=gen).clone()
    desc = plane_desc(planes, h)
    desc.nl, desc.nb, desc.bs, desc.block_stride_elems = nl, nb, bs, bs * planes[0][0]

    def run(c, o: torch.Tensor) -> None:
        ops.multi_layer_block_kv_transfer(c.arg(), [o[0], o[1]], blocks, CPU, direction, desc, chunk, F17, 1)

    def ref(c, o: torch.Tensor) -> None:
        for i in range(2):
            ref_plane_transfer(c, o[i], block_slot_list(blocks.tolist(), i, chunk // bs, bs, 1), direction)

    check(cache, objs, run, ref, True)


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
@pytest.mark.parametrize("merged", [False, True], ids=NZ_IDS.get)
def test_nz(streaming, merged: bool, direction: int, gen: torch.Generator) -> None:
    nb, bs, pieces = 6, 16, 8
    cache = make_nz_cache(merged, 2, nb, pieces, bs, torch.bfloat16, gen)
    obj = random_tensor((2, 2, 53, 16 * pieces), torch.bfloat16, gen)
    slots = random_slots(53, nb * bs, gen, 6)

    def run(c, o: torch.Tensor) -> None:
        ops.multi_layer_kv_transfer(o, c.arg("list"), slots, CPU, nb * bs, direction, NZ_FORMATS[merged], bs, 64, 2)

    check(cache, obj, run, lambda c, o: ref_nz_transfer(c, o, slots, direction, 2), True)


def _block_run_slots(block_size: int) -> torch.Tensor:
    """Whole blocks 3, 0, 5, 2 in that order, then tokens 5..11 of block 1, with holes that
    leave runs of odd length from a line's start (block 5: 7 tokens) and runs starting mid-line."""
    whole = [torch.arange(b * block_size, (b + 1) * block_size) for b in (3, 0, 5, 2)]
    slots = torch.cat([*whole, torch.arange(block_size + 5, block_size + 12)])
    slots[[17, 39, 40, 66]] = -1
    return slots


# Rows of 2 KiB (a block run of 32 KiB does not fit the store's L1 stage, as in serving).
NZ_ROWS = {
    "bf16-pieces64": (torch.bfloat16, 64, 0),
    "bf16-pieces63": (torch.bfloat16, 63, 0),  # a line's second column missing at the row's end
    "bf16-object-off-line": (torch.bfloat16, 64, 16),
    "fp32-pieces32": (torch.float32, 32, 0),  # 64-byte pieces: whole lines already
    "int8-pieces128": (torch.int8, 128, 0),  # 16-byte pieces: four columns per line
    "int8-pieces126": (torch.int8, 126, 0),
}


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
@pytest.mark.parametrize("row", NZ_ROWS.values(), ids=NZ_ROWS.keys())
def test_nz_block_runs(streaming, row: tuple[torch.dtype, int, int], direction: int, gen: torch.Generator) -> None:
    """Runs of whole blocks, where the store gathers each object line from its 16- or
    32-byte piece columns and the load each paged line from the object rows of its tokens,
    both streamed whole; rows whose pieces do not fill their last line, an object off a
    line boundary (stores) and runs off a paged line or under one (loads) go column by
    column. Holes and a skipped prefix included."""
    dtype, pieces, offset = row
    nb, bs = 6, 16
    cache = make_nz_cache(False, 2, nb, pieces, bs, dtype, gen)
    slots = _block_run_slots(bs)
    shape = (2, 2, slots.numel(), 16 * pieces)
    pad = offset // dtype.itemsize
    obj = random_tensor((math.prod(shape) + pad,), dtype, gen)[pad:].view(shape)
    assert obj.data_ptr() % 64 == offset

    def run(c, o: torch.Tensor) -> None:
        ops.multi_layer_kv_transfer(o, c.arg("list"), slots, CPU, nb * bs, direction, NZ_FORMATS[False], bs, 16 * pieces, 3)

    check(cache, obj, run, lambda c, o: ref_nz_transfer(c, o, slots, direction, 3), True)
