"""build_layer_groups on hybrid models with Ascend layouts: MHA next to MLA / DSA plane
tuples, sliding-window layers (same shapes, other engine group), 310P NZ layers."""

from __future__ import annotations

import pytest
import torch

from lmcache_ascend.core import KVFormat, LayerIdentity, build_layer_groups

NB, BS, NH, HS = 6, 16, 4, 8
NHD = {"kv_layout": "NHD"}
BF16 = torch.bfloat16


def mha(dtype: torch.dtype = BF16) -> torch.Tensor:
    return torch.zeros(2, NB, BS, NH, HS, dtype=dtype)


def kv_tuple() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(NB, BS, NH, HS, dtype=BF16), torch.zeros(NB, BS, NH, HS, dtype=BF16)


def planes(*spec: tuple[int, torch.dtype], bs: int = BS) -> tuple[torch.Tensor, ...]:
    return tuple(torch.zeros(NB, bs, 1, w, dtype=d) for w, d in spec)


def mla(dtype: torch.dtype = BF16, bs: int = BS) -> tuple[torch.Tensor, ...]:
    return planes((512, dtype), (64, dtype), bs=bs)


def dsa_c8() -> tuple[torch.Tensor, ...]:
    return planes((512, BF16), (64, BF16), (128, torch.int8), (1, torch.float16))


def ptrs(layers: list, indices: tuple[int, ...]) -> list[int]:
    out = []
    for i in indices:
        entry = layers[i]
        out += [t.data_ptr() for t in entry] if isinstance(entry, tuple) else [entry.data_ptr()]
    return out


def test_mha_mla_dsa_and_sliding_window_layers() -> None:
    kv = [mha(), mla(), mha(), dsa_c8(), mha(), mla(), mha()]
    window = [0, 0, 1, 0, 1, 0, 0]  # layers 2 and 4: sliding window, same shapes as full attention
    groups = build_layer_groups(kv, "vllm", NHD, engine_groups=window)
    assert [g.layer_indices for g in groups] == [(0, 6), (1, 5), (2, 4), (3,)]
    flash, F17 = KVFormat.NL_X_TWO_NB_BS_NH_HS, KVFormat.NL_X_NP_X_NB_BS_ONE_HS
    assert [g.identity for g in groups] == [
        LayerIdentity(2, NH, HS, BS, 0, "bfloat16", flash),
        LayerIdentity(1, 1, 576, BS, 0, "bfloat16", F17, ((512, 2), (64, 2))),
        LayerIdentity(2, NH, HS, BS, 1, "bfloat16", flash),
        LayerIdentity(1, 1, (1024 + 128 + 128 + 2) // 2, BS, 0, "bfloat16", F17, ((512, 2), (64, 2), (128, 1), (1, 2))),
    ]
    full, latent, sliding, c8 = groups
    assert latent.layout.geometry.planes == ((512, 2), (64, 2))
    assert c8.layout.geometry.planes == ((512, 2), (64, 2), (128, 1), (1, 2))
    for g in groups:
        assert g.layout.geometry.num_layers == g.num_layers
        assert g.layout.buffer_ptrs == ptrs(kv, g.layer_indices)  # L0P0, L0P1, ..., L1P0, ...
    assert sliding.layout.fmt == full.layout.fmt and sliding.layout.geometry == full.layout.geometry


def test_plane_tuples_split_by_dtype_and_block_size() -> None:
    kv = [mla(), mla(torch.float16), mla(bs=32), mla(), mla(torch.float16)]
    groups = build_layer_groups(kv, "vllm")
    assert [g.layer_indices for g in groups] == [(0, 3), (1, 4), (2,)]
    assert [(g.identity.dtype, g.identity.block_size) for g in groups] == [("bfloat16", BS), ("float16", BS), ("bfloat16", 32)]
    assert all(g.layout.fmt == KVFormat.NL_X_NP_X_NB_BS_ONE_HS for g in groups)


def test_kv_tuples_next_to_plane_tuples() -> None:
    kv = [kv_tuple(), mla(), kv_tuple(), mla()]
    groups = build_layer_groups(kv, "vllm", engine_groups=[0, 1, 0, 1])
    assert [(g.layer_indices, g.layout.fmt, g.identity.engine_group) for g in groups] == [
        ((0, 2), KVFormat.NL_X_TWO_X_NB_BS_NH_HS, 0),
        ((1, 3), KVFormat.NL_X_NP_X_NB_BS_ONE_HS, 1),
    ]
    assert groups[0].layout.buffer_ptrs == ptrs(kv, (0, 2))


def test_same_packed_width_but_different_planes_are_different_groups() -> None:
    """(512, 64) and (576,) both pack 576 bf16 per token: one identity, but not one layout,
    so they cannot share a kernel group."""
    kv = [mla(), planes((576, BF16)), mla()]
    groups = build_layer_groups(kv, "vllm")
    assert sorted(g.layer_indices for g in groups) == [(0, 2), (1,)]
    assert {g.layout.geometry.planes for g in groups} == {((512, 2), (64, 2)), ((576, 2),)}


NZ = {"kv_layout": "NZ", "num_kv_heads": 2}


def nz(pieces: int = 4, bs: int = BS, dtype: torch.dtype = BF16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(NB, pieces, bs, 16, dtype=dtype), torch.zeros(NB, pieces, bs, 16, dtype=dtype)


def nz_merged(pieces: int = 4) -> torch.Tensor:
    return torch.zeros(2, NB, pieces, BS, 16, dtype=BF16)


def test_nz_layers_with_hints() -> None:
    kv = [nz(), nz_merged(), nz(), nz(pieces=8), nz(), nz(), nz_merged(), nz(dtype=torch.float16), nz(bs=32)]
    engine_groups = [0, 0, 0, 0, 1, 0, 0, 0, 0]
    groups = build_layer_groups(kv, "vllm", NZ, engine_groups=engine_groups)
    sep, merged = KVFormat.NL_X_TWO_X_NB_NZC_BS_C16, KVFormat.NL_X_TWO_NB_NZC_BS_C16
    assert [(g.layer_indices, g.identity) for g in groups] == [
        ((0, 2, 5), LayerIdentity(2, 2, 32, BS, 0, "bfloat16", sep)),
        ((1, 6), LayerIdentity(2, 2, 32, BS, 0, "bfloat16", merged)),
        ((3,), LayerIdentity(2, 2, 64, BS, 0, "bfloat16", sep)),
        ((4,), LayerIdentity(2, 2, 32, BS, 1, "bfloat16", sep)),
        ((7,), LayerIdentity(2, 2, 32, BS, 0, "float16", sep)),
        ((8,), LayerIdentity(2, 2, 32, 32, 0, "bfloat16", sep)),
    ]
    for g in groups:
        assert g.layout.geometry.num_layers == g.num_layers
        assert g.layout.buffer_ptrs == ptrs(kv, g.layer_indices)


def test_nz_hint_does_not_fit_other_layers() -> None:
    with pytest.raises(ValueError, match="unrecognised vllm KV cache structure"):
        build_layer_groups([nz(), mha()], "vllm", NZ)
    with pytest.raises(ValueError, match="num_kv_heads"):
        build_layer_groups([nz()], "vllm", {"kv_layout": "NZ", "num_kv_heads": 5})  # 64 elements, 5 heads
