"""Detection of the Ascend layouts: plane tuples (cross-checked with upstream's detector)
and 310P NZ (Ascend-only, needs the ``kv_layout: NZ`` hint)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from lmcache.utils import EngineType
from lmcache.v1.gpu_connector.kv_format import detect_format

from lmcache_ascend.core import KVFormat, describe, detect_kv_layout
from lmcache_ascend.core.plane_tuples import plane_tuple_geometry

NL, NB, BS = 3, 6, 16
BF16, FP16, INT8 = torch.bfloat16, torch.float16, torch.int8
F17 = KVFormat.NL_X_NP_X_NB_BS_ONE_HS


def plane_layers(*spec: tuple[int, torch.dtype], as_tuple: bool = False) -> list:
    layers = [[torch.zeros(NB, BS, 1, w, dtype=d) for w, d in spec] for _ in range(NL)]
    return [tuple(layer) for layer in layers] if as_tuple else layers


# (name, kv_caches, expected format, expected planes as (width, itemsize), expected H)
PLANE_CASES: list[tuple[str, Callable[[], list], KVFormat, tuple, int]] = [
    ("MLA", lambda: plane_layers((512, BF16), (64, BF16)), F17, ((512, 2), (64, 2)), 576),
    ("MLA-fp16-tuples", lambda: plane_layers((512, FP16), (64, FP16), as_tuple=True), F17, ((512, 2), (64, 2)), 576),
    ("DSA", lambda: plane_layers((512, BF16), (64, BF16), (128, BF16)), F17, ((512, 2), (64, 2), (128, 2)), 704),
    ("DSA-C8", lambda: plane_layers((512, BF16), (64, BF16), (128, INT8), (1, FP16)), F17,
     ((512, 2), (64, 2), (128, 1), (1, 2)), 641),
    ("latent-only", lambda: plane_layers((576, BF16)), F17, ((576, 2),), 576),
    ("same-width-pair-is-KV", lambda: plane_layers((64, BF16), (64, BF16)), KVFormat.NL_X_TWO_X_NB_BS_NH_HS, (), 64),
]


@pytest.mark.parametrize("hints", [None, {"kv_layout": "NHD"}], ids=["no-hint", "NHD"])
@pytest.mark.parametrize("name,make,fmt,planes,hidden", PLANE_CASES, ids=[c[0] for c in PLANE_CASES])
def test_plane_tuples_match_upstream_detector(name, make, fmt, planes, hidden, hints) -> None:
    kv = make()
    theirs, _ = detect_format(kv, EngineType.VLLM, hints)
    ours = detect_kv_layout(kv, "vllm", hints)
    assert int(theirs) == int(fmt) == int(ours.fmt)
    g = ours.geometry
    assert (g.num_layers, g.num_blocks, g.block_size) == (NL, NB, BS)
    assert g.planes == planes
    assert ours.hidden_dim == hidden
    assert ours.dtype == str(kv[0][0].dtype).removeprefix("torch.")
    assert ours.buffer_ptrs == [t.data_ptr() for layer in kv for t in layer]  # L0P0, L0P1, ..., L1P0, ...


def test_plane_tuple_geometry_errors() -> None:
    def descs(*shapes_dtypes: tuple[tuple[int, ...], torch.dtype]) -> list:
        return [describe(torch.zeros(s, dtype=d)) for s, d in shapes_dtypes]

    with pytest.raises(ValueError, match="at least one plane"):
        plane_tuple_geometry([], 1)
    with pytest.raises(ValueError, match=r"plane 1 has shape \[6, 16, 2, 64\]"):
        plane_tuple_geometry(descs(((NB, BS, 1, 512), BF16), ((NB, BS, 2, 64), BF16)), 1)
    with pytest.raises(ValueError, match=r"plane 1 has blocks \[7, 16\]"):
        plane_tuple_geometry(descs(((NB, BS, 1, 512), BF16), ((7, BS, 1, 64), BF16)), 1)
    with pytest.raises(ValueError, match="not a whole number of bfloat16 elements"):
        plane_tuple_geometry(descs(((NB, BS, 1, 512), BF16), ((NB, BS, 1, 3), INT8)), 1)


def test_inconsistent_plane_tuple_layers_raise() -> None:
    kv = plane_layers((512, BF16), (64, BF16), (128, INT8), (1, FP16))
    kv[1][2] = torch.zeros(NB, BS, 1, 128, dtype=torch.uint8)
    with pytest.raises(ValueError, match="buffer 6 is uint8"):
        detect_kv_layout(kv, "vllm")
    kv = plane_layers((512, BF16), (64, BF16))
    kv[2][1] = torch.zeros(NB, BS, 1, 32, dtype=BF16)
    with pytest.raises(ValueError, match=r"buffer 5 has shape \[6, 16, 1, 32\]"):
        detect_kv_layout(kv, "vllm")


NZ_SEP, NZ_MERGED = KVFormat.NL_X_TWO_X_NB_NZC_BS_C16, KVFormat.NL_X_TWO_NB_NZC_BS_C16


def nz_layers(pieces: int = 4, merged: bool = False, dtype: torch.dtype = FP16) -> list:
    if merged:
        return [torch.zeros(2, NB, pieces, BS, 16, dtype=dtype) for _ in range(NL)]
    return [(torch.zeros(NB, pieces, BS, 16, dtype=dtype), torch.zeros(NB, pieces, BS, 16, dtype=dtype)) for _ in range(NL)]


@pytest.mark.parametrize("merged", [False, True], ids=["separate", "merged"])
@pytest.mark.parametrize("heads", [None, 1, 2, 4])
def test_nz_with_hint(merged: bool, heads: int | None) -> None:
    kv = nz_layers(merged=merged)
    hints: dict[str, object] = {"kv_layout": "NZ"}
    if heads is not None:
        hints["num_kv_heads"] = heads
    layout = detect_kv_layout(kv, "vllm", hints)
    assert layout.fmt == (NZ_MERGED if merged else NZ_SEP)
    g = layout.geometry
    nh = heads or 1
    assert (g.num_layers, g.num_blocks, g.block_size, g.num_heads, g.head_size) == (NL, NB, BS, nh, 64 // nh)
    assert layout.hidden_dim == 64 and layout.kv_size == 2 and layout.dtype == "float16"
    flat = kv if merged else [t for pair in kv for t in pair]
    assert layout.buffer_ptrs == [t.data_ptr() for t in flat]


def test_nz_without_hint_reads_as_kv_tuples_like_upstream() -> None:
    """Shapes alone cannot tell NZ (K, V) from [NB, BS, NH, 16] tuples: the hint is required."""
    kv = nz_layers()
    theirs, _ = detect_format(kv, EngineType.VLLM, None)
    ours = detect_kv_layout(kv, "vllm")
    assert int(theirs) == int(ours.fmt) == KVFormat.NL_X_TWO_X_NB_BS_NH_HS
    assert ours.geometry.block_size == 4  # the NZ piece axis taken for the block axis


@pytest.mark.parametrize(
    "kv,hints,match",
    [
        (lambda: nz_layers(), {"kv_layout": "NZ", "num_kv_heads": 3}, "num_kv_heads"),
        (lambda: nz_layers(), {"kv_layout": "NZ", "num_kv_heads": 0}, "num_kv_heads"),
        (lambda: [torch.zeros(2, NB, BS, 4, 8) for _ in range(NL)], {"kv_layout": "NZ"}, "unrecognised"),
        (lambda: [(torch.zeros(NB, 4, BS, 8), torch.zeros(NB, 4, BS, 8))], {"kv_layout": "NZ"}, "unrecognised"),
        (lambda: nz_layers()[:1] + nz_layers(pieces=2)[:1], {"kv_layout": "NZ"}, r"buffer 2 has shape"),
        (lambda: nz_layers(), {"kv_layout": "nz"}, "kv_layout"),
    ],
    ids=["heads-3", "heads-0", "flash-tensors", "pieces-of-8", "mixed-pieces", "lowercase-hint"],
)
def test_nz_bad_structures(kv, hints, match) -> None:
    with pytest.raises(ValueError, match=match):
        detect_kv_layout(kv(), "vllm", hints)
