"""KVFormat mirrors upstream EngineKVFormat; the format table agrees with upstream specs."""

from __future__ import annotations

import pytest
from lmcache.lmcache_native import EngineKVFormat
from lmcache.v1.gpu_connector.kv_format import get_spec_class

from lmcache_ascend.core.kv_format import ASCEND_ONLY, FORMATS, KVFormat, format_spec, to_upstream
from lmcache_ascend.core.planes import KVGeometry, buffer_count, buffer_shape, paged_planes


UPSTREAM_KNOWN = [f for f in KVFormat if f not in ASCEND_ONLY]


def test_every_upstream_format_has_our_value_and_name() -> None:
    upstream = {m.name: int(m) for m in EngineKVFormat.__members__.values()}
    ours = {m.name: int(m) for m in UPSTREAM_KNOWN}
    assert ours == upstream
    assert all(int(f) >= 100 for f in ASCEND_ONLY)  # never collides with an upstream value


@pytest.mark.parametrize("fmt", sorted(ASCEND_ONLY), ids=lambda f: f.name)
def test_ascend_only_formats_have_no_upstream_value(fmt: KVFormat) -> None:
    with pytest.raises(ValueError, match="Ascend-only"):
        to_upstream(fmt)


@pytest.mark.parametrize("fmt", UPSTREAM_KNOWN, ids=lambda f: f.name)
def test_to_upstream_round_trip(fmt: KVFormat) -> None:
    up = to_upstream(fmt)
    assert isinstance(up, EngineKVFormat)
    assert int(up) == int(fmt) and up.name == fmt.name


def test_unknown_format_error_lists_supported() -> None:
    with pytest.raises(ValueError, match="supported: 0 NB_NL_TWO_BS_NH_HS"):
        format_spec(99)
    with pytest.raises(ValueError, match="not supported"):
        format_spec(KVFormat.NL_X_NB_BSV_BSS)  # DSA indexer: not in this release


@pytest.mark.parametrize("fmt", sorted(set(FORMATS) - ASCEND_ONLY), ids=lambda f: f.name)
def test_layout_facts_match_upstream_spec(fmt: KVFormat) -> None:
    ours = format_spec(fmt)
    theirs = get_spec_class(to_upstream(fmt))
    assert ours.is_hnd == theirs.is_hnd
    assert ours.mla == theirs.is_mla
    assert ours.single_kv == theirs.is_single_kv
    assert ours.pbs_fused == theirs.is_pbs_fused
    assert (ours.buffers == "single") == theirs.is_cross_layer
    assert (ours.buffers == "kv_layer") == theirs.is_kv_list
    assert (ours.buffers in ("layer_kv", "layer_planes")) == theirs.is_kv_second_tuple


PER_LAYER = [f for f, s in FORMATS.items() if s.buffers in ("layer", "layer_kv") and f not in ASCEND_ONLY]


@pytest.mark.parametrize("fmt", PER_LAYER, ids=lambda f: f.name)
def test_buffer_shape_matches_upstream_paged_layer_shape(fmt: KVFormat) -> None:
    spec = format_spec(fmt)
    nb, bs, nh, hs = 5, 16, 4, 8
    g = KVGeometry(num_layers=3, num_blocks=nb, block_size=bs, num_heads=nh, head_size=hs, itemsize=2)
    theirs = get_spec_class(to_upstream(fmt))
    if spec.buffers == "layer_kv":
        # Upstream reconstructs tuple formats itself; each tensor is [NB, BS, NH, HS].
        assert buffer_shape(spec, g) == (nb, bs, nh, hs)
        return
    content = 2 * hs if spec.packed else hs  # upstream passes the packed width for CS formats
    expected = theirs.paged_layer_shape(nb, bs, 1 if spec.mla else nh, content)
    if spec.pbs_fused:
        expected = (nb * bs, 1, hs)
    if fmt == KVFormat.NL_X_TWO_NB_NH_ONE_BS_HS:
        pytest.skip("upstream paged_layer_shape has no view for the RBLN singleton axis")
    assert buffer_shape(spec, g) == tuple(expected)


def test_single_kv_is_one_plane_with_real_heads() -> None:
    """Format 18: one plane per buffer like MLA, but NH heads of HS, not one latent row."""
    spec = format_spec(KVFormat.NL_X_NB_BS_NH_HS)
    assert (spec.kv_size, spec.mla, spec.single_kv, spec.buffers) == (1, False, True, "layer")
    g = KVGeometry(num_layers=6, num_blocks=5, block_size=16, num_heads=4, head_size=8, itemsize=2)
    assert buffer_shape(spec, g) == (5, 16, 4, 8)
    assert buffer_count(spec, g) == 6  # one buffer per K or V component
    assert [p.num_heads for layer in paged_planes(spec, g) for p in layer] == [4] * 6
    # every other upstream format keeps its own plane count
    for fmt, other in FORMATS.items():
        if fmt != KVFormat.NL_X_NB_BS_NH_HS:
            assert not other.single_kv and other.kv_size == (1 if other.mla else 2), fmt.name
