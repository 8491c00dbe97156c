"""Hybrid models: ChunkLayout segment math (core/kv_groups.py) and transfer_chunk
(kernels/group_ops.py) against a plain-indexing reference written from the docstrings."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from lmcache_ascend.core.detection import KVCacheLayout, detect_kv_layout
from lmcache_ascend.core.kv_groups import (
    SEGMENT_ALIGN,
    ChunkLayout,
    KVGroupSpec,
    PositionRange,
)
from lmcache_ascend.kernels.group_ops import transfer_chunk
from tests.kernels.reference import (
    Geom,
    PagedCache,
    assert_tensor_equal,
    byte_equal,
    make_paged,
    random_tensor,
    ref_transfer,
)
from tests.kernels.reference_ascend import (
    BF16,
    FP16,
    INT8,
    PlaneCache,
    make_plane_cache,
    ref_plane_transfer,
    row_elems,
)

CHUNK = 256
TOKENS = 600  # chunks [0, 256), [256, 512) and a partial [512, 600)
STORE, LOAD = 1, 0
Cache = PagedCache | PlaneCache
C8_SMALL = ((32, BF16), (8, BF16), (16, INT8), (1, FP16))  # DSA-C8 shape, narrow: 98 bytes = 49 bf16
MLA_SMALL = ((16, BF16), (8, BF16))


@dataclass(frozen=True)
class GroupCase:
    name: str
    kind: str
    ratio: int
    window: int | None
    make: str  # "paged:<fmt>" or "planes:<c8|mla>"
    geom: Geom  # for planes: num_heads / head_size unused
    dtype: torch.dtype

    def build(self, gen: torch.Generator) -> Cache:
        if self.make.startswith("planes"):
            planes = C8_SMALL if self.make.endswith("c8") else MLA_SMALL
            return make_plane_cache(planes, self.geom.num_layers, self.geom.num_blocks, self.geom.block_size, gen)
        return make_paged(int(self.make.split(":")[1]), self.geom, self.dtype, gen)

    def positions(self) -> int:
        return math.ceil(TOKENS / self.ratio)


# Block sizes 16 / 8 / 16 / 32 / 128 / 8; ratios 1, 4, 128; two sliding windows; one state group.
GROUPS = (
    GroupCase("full-r1-kv-tuples", "full", 1, None, "paged:16", Geom(2, 40, 16, 2, 8), BF16),
    GroupCase("full-r4-dsa-c8", "full", 4, None, "planes:c8", Geom(2, 20, 8, 1, 1), BF16),
    GroupCase("state", "state", 1, None, "paged:3", Geom(1, 4, 16, 1, 8), torch.float32),
    GroupCase("full-r128-mla", "full", 128, None, "paged:3", Geom(1, 2, 32, 1, 24), FP16),
    GroupCase("window100-r1-flash", "sliding_window", 1, 100, "paged:1", Geom(1, 5, 128, 2, 8), torch.float32),
    GroupCase("window64-r4-mla-planes", "sliding_window", 4, 64, "planes:mla", Geom(2, 20, 8, 1, 1), BF16),
)
# Hand-computed: (group, offset, rows); kv * layers * rows * row bytes, offsets rounded up to 64.
# A ratio-1 window stores exactly its window; a ratio-r window one position more (its
# first token may sit mid-position).
EXPECTED_SEGMENTS = [(0, 0, 256), (1, 32768, 64), (3, 45312, 2), (4, 45440, 100), (5, 58240, 17)]
EXPECTED_NBYTES = 59904


def engine_arg(c: Cache) -> object:
    return c.arg() if isinstance(c, PlaneCache) else c.data


def layout_of(c: Cache) -> KVCacheLayout:
    return detect_kv_layout(engine_arg(c), "vllm", {"kv_layout": "NHD"})


def specs(caches: list[Cache]) -> list[KVGroupSpec]:
    return [KVGroupSpec(layout_of(c), g.kind, g.ratio, g.window) for g, c in zip(GROUPS, caches)]


def test_segments_offsets_and_rows(gen: torch.Generator) -> None:
    layout = ChunkLayout(specs([g.build(gen) for g in GROUPS]), CHUNK)
    assert [(s.group, s.offset, s.rows) for s in layout.segments] == EXPECTED_SEGMENTS
    assert layout.nbytes == EXPECTED_NBYTES
    assert all(s.offset % SEGMENT_ALIGN == 0 for s in layout.segments)
    ends = [s.offset + s.nbytes for s in layout.segments]
    assert all(end <= nxt.offset for end, nxt in zip(ends, layout.segments[1:])) and ends[-1] <= layout.nbytes


@pytest.mark.parametrize(
    "group,start,end,expected",
    [
        (0, 0, 256, (0, 256)), (0, 512, 600, (512, 600)),  # full, ratio 1
        (1, 256, 512, (64, 128)), (1, 512, 601, (128, 151)),  # ratio 4: partial chunk rounds up
        (3, 0, 256, (0, 2)), (3, 256, 300, (2, 3)),  # ratio 128
        (4, 256, 512, (412, 512)), (4, 512, 540, (512, 540)), (4, 512, 600, (512, 600)), (4, 512, 630, (530, 630)),
        (5, 256, 512, (112, 128)), (5, 512, 530, (128, 133)), (5, 512, 601, (134, 151)),  # window 64, ratio 4
    ],
)
def test_positions(group: int, start: int, end: int, expected: tuple[int, int], gen: torch.Generator) -> None:
    layout = ChunkLayout(specs([g.build(gen) for g in GROUPS]), CHUNK)
    pos = layout.positions(group, start, end)
    assert pos == PositionRange(*expected)
    seg = next(s for s in layout.segments if s.group == group)
    assert pos.end - pos.begin <= seg.rows


def test_window_aligned_to_whole_blocks(gen: torch.Generator) -> None:
    """KV that moves only in whole blocks: the window starts at its first block's start."""
    lay = layout_of(make_paged(1, Geom(1, 5, 128, 2, 8), torch.float32, gen))
    layout = ChunkLayout([KVGroupSpec(lay, "sliding_window", sliding_window=100, window_align=16)], CHUNK)
    assert layout.segments[0].rows == 112
    assert layout.positions(0, 256, 512) == PositionRange(400, 512)
    assert layout.positions(0, 512, 544) == PositionRange(512, 544)
    with pytest.raises(ValueError, match="chunk end 520 is not a multiple of group 0's window_align 16"):
        layout.positions(0, 512, 520)
    with pytest.raises(ValueError, match="window_align must be >= 1"):
        KVGroupSpec(lay, "sliding_window", sliding_window=100, window_align=0)


def _mla_layout(gen: torch.Generator) -> KVCacheLayout:
    return layout_of(make_paged(3, Geom(1, 4, 16, 1, 8), BF16, gen))


def test_bad_specs_and_chunks(gen: torch.Generator) -> None:
    lay = _mla_layout(gen)
    with pytest.raises(ValueError, match="kind"):
        KVGroupSpec(lay, "mamba")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compress_ratio"):
        KVGroupSpec(lay, compress_ratio=0)
    with pytest.raises(ValueError, match="sliding_window"):
        KVGroupSpec(lay, "sliding_window")
    with pytest.raises(ValueError, match="sliding_window 300 exceeds chunk_size 256"):
        ChunkLayout([KVGroupSpec(lay, "sliding_window", sliding_window=300)], CHUNK)
    with pytest.raises(ValueError, match="chunk_size"):
        ChunkLayout([KVGroupSpec(lay)], 0)
    layout = ChunkLayout([KVGroupSpec(lay), KVGroupSpec(lay, "state")], CHUNK)
    assert [s.group for s in layout.segments] == [0]
    for start, end in ((0, 257), (10, 10), (-1, 5)):
        with pytest.raises(ValueError, match="not within one chunk"):
            layout.positions(0, start, end)


@pytest.mark.parametrize("chunk,ratio", [(96, 128), (100, 64)], ids=["chunk96-r128", "chunk100-r64"])
def test_chunk_not_aligned_to_ratio_is_rejected_or_fits(chunk: int, ratio: int, gen: torch.Generator) -> None:
    """A chunk whose start is not a multiple of the ratio covers one more position than
    ceil(chunk / ratio); the layout must either refuse the combination or size the segment for it."""
    try:
        layout = ChunkLayout([KVGroupSpec(_mla_layout(gen), compress_ratio=ratio)], chunk)
    except ValueError:
        return
    pos = layout.positions(0, chunk, 2 * chunk)
    assert pos.end - pos.begin <= layout.segments[0].rows, (
        f"chunk [{chunk}, {2 * chunk}) needs positions {pos} but the segment holds {layout.segments[0].rows} rows"
    )


# ---------------------------------------------------------------- transfer_chunk vs reference


def ref_segment(g: GroupCase, c: Cache) -> tuple[int, int, int, torch.dtype]:
    """(kv, layers, row elements, dtype) of group ``g``'s segment, from the cache itself."""
    if isinstance(c, PlaneCache):
        return 1, len(c.layers), row_elems(c.planes), c.planes[0][1]
    kv = 1 if c.fmt == 3 else 2
    return kv, g.geom.num_layers, g.geom.head_size * (1 if c.fmt == 3 else g.geom.num_heads), g.dtype


def ref_rows(g: GroupCase, tokens: int) -> int:
    rows = math.ceil(tokens / g.ratio) + (1 if CHUNK % g.ratio else 0)
    return rows if g.kind == "full" else min(rows, math.ceil(g.window / g.ratio) + (1 if g.ratio > 1 else 0))


def ref_chunk(
    caches: list[Cache],
    obj: torch.Tensor,
    mappings: list[torch.Tensor],
    start: int,
    end: int,
    direction: int,
    tokens: int = CHUNK,
    skip: int = 0,
) -> None:
    """The docstring's contract, written out: segments in group order, 64-byte aligned,
    positions floor(first / r) .. ceil(end / r), unfilled rows untouched, state groups
    skipped, positions whose tokens are all below ``skip`` untouched."""
    offset = 0
    for g, c, mapping in zip(GROUPS, caches, mappings):
        if g.kind == "state":
            continue
        rows = ref_rows(g, tokens)
        kv, layers, h, dtype = ref_segment(g, c)
        nbytes = kv * layers * rows * h * dtype.itemsize
        view = obj[offset : offset + nbytes].view(dtype).view(kv, layers, rows, h)
        first = start if g.kind == "full" else max(start, end - g.window)
        begin, stop = first // g.ratio, -(-end // g.ratio)
        slots = torch.full((rows,), -1, dtype=torch.int64)
        slots[: stop - begin] = mapping[begin:stop]
        for p in range(begin, stop):
            if (p + 1) * g.ratio <= skip:
                slots[p - begin] = -1
        if isinstance(c, PlaneCache):
            ref_plane_transfer(c, view, slots, direction)
        else:
            ref_transfer(c, view, slots, direction)
        offset = -(-(offset + nbytes) // 64) * 64


def _mappings(caches: list[Cache], gen: torch.Generator) -> list[torch.Tensor]:
    out = []
    for g, c in zip(GROUPS, caches):
        slots = torch.randperm(g.geom.num_slots, generator=gen)[: g.positions()].clone()
        slots[torch.randperm(slots.numel(), generator=gen)[: slots.numel() // 9]] = -1
        out.append(slots)
    return out


CHUNKS = [(0, 256), (256, 512), (512, TOKENS)]


def _storage(caches: list[Cache]) -> list[torch.Tensor]:
    return [t for c in caches for t in c.storage()]


def _assert_same(got: list[Cache], want: list[Cache]) -> None:
    for i, (a, b) in enumerate(zip(_storage(got), _storage(want))):
        assert_tensor_equal(a, b, f"paged buffer {i}")


@pytest.mark.parametrize("direction", [STORE, LOAD], ids=["store", "load"])
def test_transfer_chunk_matches_reference(backend: str, direction: int, gen: torch.Generator) -> None:
    caches = [g.build(gen) for g in GROUPS]
    layout = ChunkLayout(specs(caches), CHUNK)
    mappings = _mappings(caches, gen)
    want, before = [c.clone() for c in caches], [c.clone() for c in caches]
    for start, end in CHUNKS:
        obj = random_tensor((layout.nbytes + 40,), torch.uint8, gen)  # 40 bytes past the layout: untouched
        want_obj, pristine = obj.clone(), obj.clone()
        ref_chunk(want, want_obj, mappings, start, end, direction)
        transfer_chunk(layout, [engine_arg(c) for c in caches], obj, mappings, start, end, direction)
        assert_tensor_equal(obj, want_obj, f"chunk [{start}, {end}) object")
        assert direction == LOAD or not byte_equal(obj, pristine), "the store moved nothing"
    _assert_same(caches, want)
    assert direction == STORE or not all(byte_equal(a, b) for a, b in zip(_storage(caches), _storage(before)))
    state = GROUPS.index(next(g for g in GROUPS if g.kind == "state"))
    assert all(byte_equal(a, b) for a, b in zip(caches[state].storage(), want[state].storage()))


@pytest.mark.parametrize("direction", [STORE, LOAD], ids=["store", "load"])
@pytest.mark.parametrize("skip", [0, 530, 600], ids=["no-skip", "skip-mid-chunk", "skip-all"])
def test_partial_chunk_layout_and_skipped_tokens(backend: str, direction: int, skip: int, gen: torch.Generator) -> None:
    """A prompt's last chunk of 88 tokens gets a layout sized for 88 tokens (smaller than a
    full chunk's) and moves exactly what the reference moves; skipped tokens stay untouched."""
    caches = [g.build(gen) for g in GROUPS]
    full = ChunkLayout(specs(caches), CHUNK)
    layout = ChunkLayout(specs(caches), CHUNK, tokens=TOKENS - 512)
    assert [s.rows for s in layout.segments] == [ref_rows(g, TOKENS - 512) for g in GROUPS if g.kind != "state"]
    assert layout.nbytes < full.nbytes
    mappings = _mappings(caches, gen)
    want = [c.clone() for c in caches]
    obj = random_tensor((layout.nbytes,), torch.uint8, gen)
    want_obj = obj.clone()
    ref_chunk(want, want_obj, mappings, 512, TOKENS, direction, tokens=TOKENS - 512, skip=skip)
    transfer_chunk(layout, [engine_arg(c) for c in caches], obj, mappings, 512, TOKENS, direction, skip_tokens=skip)
    assert_tensor_equal(obj, want_obj, "partial chunk object")
    _assert_same(caches, want)
    with pytest.raises(ValueError, match="not within one chunk of 88 tokens"):
        transfer_chunk(layout, [engine_arg(c) for c in caches], obj, mappings, 256, 512, direction)


def test_transfer_chunk_round_trip_full_group(backend: str, gen: torch.Generator) -> None:
    """Store every chunk from one set of caches, load into another: every live position of the
    full ratio-1 group arrives, the state group of the destination is untouched."""
    src = [g.build(gen) for g in GROUPS]
    dst = [g.build(gen) for g in GROUPS]
    before = [c.clone() for c in dst]
    layout = ChunkLayout(specs(src), CHUNK)
    mappings = _mappings(src, gen)
    for start, end in CHUNKS:
        obj = torch.zeros(layout.nbytes, dtype=torch.uint8)
        transfer_chunk(layout, [engine_arg(c) for c in src], obj, mappings, start, end, STORE)
        transfer_chunk(layout, [engine_arg(c) for c in dst], obj, mappings, start, end, LOAD)
    live = mappings[0][mappings[0] >= 0]
    bs = GROUPS[0].geom.block_size
    for (sk, sv), (dk, dv) in zip(src[0].data, dst[0].data):  # type: ignore[union-attr]
        assert byte_equal(dk[live // bs, live % bs], sk[live // bs, live % bs])
        assert byte_equal(dv[live // bs, live % bs], sv[live // bs, live % bs])
    for a, b in zip(dst[2].storage(), before[2].storage()):
        assert byte_equal(a, b)


def test_transfer_chunk_bad_input_names_the_argument(gen: torch.Generator) -> None:
    caches = [g.build(gen) for g in GROUPS]
    layout = ChunkLayout(specs(caches), CHUNK)
    mappings = _mappings(caches, gen)
    args = [engine_arg(c) for c in caches]
    obj = torch.zeros(layout.nbytes, dtype=torch.uint8)
    with pytest.raises(ValueError, match="chunk_object"):
        transfer_chunk(layout, args, obj[:-1].clone(), mappings, 0, 256, STORE)
    with pytest.raises(TypeError, match="chunk_object"):
        transfer_chunk(layout, args, obj.numpy(), mappings, 0, 256, STORE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="caches has 5 entries for 6 groups"):
        transfer_chunk(layout, args[:5], obj, mappings, 0, 256, STORE)
    with pytest.raises(ValueError, match="slot_mappings has 7 entries for 6 groups"):
        transfer_chunk(layout, args, obj, [*mappings, mappings[0]], 0, 256, STORE)
    short = list(mappings)
    short[1] = mappings[1][:100]  # the chunk [256, 512) needs positions up to 128
    with pytest.raises(ValueError, match=r"slot_mappings\[1\]"):
        transfer_chunk(layout, args, obj, short, 256, 512, STORE)
    with pytest.raises(ValueError, match="direction"):
        transfer_chunk(layout, args, obj, mappings, 0, 256, 2)
    with pytest.raises(ValueError, match="not within one chunk"):
        transfer_chunk(layout, args, obj, mappings, 0, 300, STORE)
    with pytest.raises(ValueError, match="skip_tokens must be >= 0"):
        transfer_chunk(layout, args, obj, mappings, 0, 256, LOAD, skip_tokens=-1)
    with pytest.raises(TypeError, match="skip_tokens must be an int"):
        transfer_chunk(layout, args, obj, mappings, 0, 256, LOAD, skip_tokens=1.5)  # type: ignore[arg-type]
    for tokens in (0, CHUNK + 1):
        with pytest.raises(ValueError, match="tokens must be within"):
            ChunkLayout(specs(caches), CHUNK, tokens=tokens)
