"""Plane lowering details that the kernel parity tests do not pin down on their own."""

from __future__ import annotations

import numpy as np
import pytest

from lmcache_ascend.core import KVFormat, format_spec
from lmcache_ascend.core.planes import KVGeometry, PlaneSet, buffer_bytes, multi_layer_plane_set, paged_planes

G = KVGeometry(num_layers=2, num_blocks=4, block_size=16, num_heads=2, head_size=8, itemsize=2)


def test_bind_adds_buffer_and_object_addresses() -> None:
    ps = multi_layer_plane_set(format_spec(KVFormat.NL_X_TWO_NB_BS_NH_HS), G, 5)
    table = ps.bind(np.array([1000, 50000], dtype=np.int64), 7)
    row = 2 * 8 * 2
    # layer 1, V plane: buffer 1 + one K plane further; object plane (kv=1, layer=1)
    assert table[3, 0] == 50000 + 4 * 16 * row
    assert table[3, 8] == 7 + (1 * 2 + 1) * 5 * row
    assert ps.table[3, 0] == 4 * 16 * row  # the cached template stays relative
    assert not ps.table.flags.writeable


@pytest.mark.parametrize(
    "fmt,fused",
    [(KVFormat.NL_X_TWO_NB_BS_NH_HS, False), (KVFormat.NL_X_NB_NH_BS_CS, False), (KVFormat.NL_X_NB_NH_BS_CS, True)],
)
def test_token_bytes_is_one_token_over_every_plane(fmt: KVFormat, fused: bool) -> None:
    """What ``kernels.host.run_planes`` sizes a transfer by (streaming stores from 4 MiB)."""
    ps = multi_layer_plane_set(format_spec(fmt), G, 5, fused)
    assert ps.token_bytes == G.num_layers * 2 * G.num_heads * G.head_size * G.itemsize
    assert ps.token_bytes == int((ps.table[:, 4] * ps.table[:, 5]).sum())


def test_plane_sets_are_cached() -> None:
    spec = format_spec(KVFormat.NL_X_NB_TWO_BS_NH_HS)
    assert multi_layer_plane_set(spec, G, 33) is multi_layer_plane_set(spec, G, 33)


def test_packed_format_walks_one_plane_per_layer_split_in_two() -> None:
    spec = format_spec(KVFormat.NL_X_NB_NH_BS_CS)
    ps = multi_layer_plane_set(spec, G, 5)
    assert len(ps.paged) == G.num_layers
    assert all(p.parts == 2 and p.head_bytes == 2 * 8 * 2 for p in ps.paged)
    row = 2 * 8 * 2
    assert ps.objects[0].part_stride == G.num_layers * 5 * row  # V plane of [2, L, T, H]
    fused = multi_layer_plane_set(spec, G, 5, fused=True)
    assert all(p.parts == 1 for p in fused.paged)


def test_fused_needs_a_packed_format() -> None:
    with pytest.raises(ValueError, match="no packed K/V axis"):
        paged_planes(format_spec(KVFormat.NL_X_TWO_NB_BS_NH_HS), G, fused=True)


def test_block_stride_override_rules() -> None:
    spec = format_spec(KVFormat.NL_X_NB_NH_BS_CS)
    tight = 2 * 16 * 16  # NH * BS * CS elements
    wide = KVGeometry(**{**G.__dict__, "block_stride_elems": 3 * tight})
    assert buffer_bytes(spec, wide) == (4 - 1) * 3 * tight * 2 + tight * 2
    with pytest.raises(ValueError, match="smaller than one block"):
        paged_planes(spec, KVGeometry(**{**G.__dict__, "block_stride_elems": tight - 1}))
    with pytest.raises(ValueError, match="block axis is outermost"):
        paged_planes(format_spec(KVFormat.NL_X_TWO_NB_BS_NH_HS), wide)


def test_plane_set_checks_pairing() -> None:
    ps = multi_layer_plane_set(format_spec(KVFormat.NL_X_NB_BS_HS), G, 3)
    with pytest.raises(ValueError, match="paged planes but"):
        PlaneSet.build(ps.paged, ps.objects[:1])
