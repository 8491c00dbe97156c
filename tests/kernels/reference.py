"""Independent reference for the KV-transfer kernels, written with plain torch indexing.

Nothing here uses ``lmcache_ascend``: every paged cache is built with the natural
shape of its engine layout and indexed ``[block, offset]``, so the reference
shares no addressing code with the package under test.

Semantics (upstream LMCache ``cuda_ops``):

- token ``t`` of a memory object goes to slot ``slot_mapping[t]``; block
  ``slot // BS``, offset ``slot % BS``; ``slot < 0`` is skipped;
- the first ``skip`` tokens are untouched in both directions;
- store = D2H (1) = paged -> object, load = H2D (0) = object -> paged;
- memory object ``[kv, L, T, row]``: ``KV_2LTD`` (kv = 2, row = NH * HS),
  ``KV_MLA_FMT`` (kv = 1, row = HS), format 18's single-component object
  (kv = 1, row = NH * HS, "layer" ``l`` = the ``l``-th K or V tensor) and, for
  the packed formats 12/13, the upstream-CUDA "fused" object (kv = 1,
  row = NH * 2 * HS, each head's ``[K | V]`` slice copied as is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

import torch

H2D = 0  # object -> paged (load)
D2H = 1  # paged -> object (store)

FORMAT_NAMES: dict[int, str] = {
    0: "NB_NL_TWO_BS_NH_HS",
    1: "NL_X_TWO_NB_BS_NH_HS",
    2: "NL_X_NB_TWO_BS_NH_HS",
    3: "NL_X_NB_BS_HS",
    4: "TWO_X_NL_X_NBBS_NH_HS",
    5: "NL_X_NBBS_ONE_HS",
    6: "NL_X_TWO_NB_NH_BS_HS",
    7: "NL_X_NB_TWO_NH_BS_HS",
    8: "NB_NL_TWO_NH_BS_HS",
    9: "TWO_X_NL_X_NB_BS_NH_HS",
    12: "NL_X_NB_NH_BS_CS",
    13: "NL_X_NB_BS_NH_CS",
    16: "NL_X_TWO_X_NB_BS_NH_HS",
    18: "NL_X_NB_BS_NH_HS",
}
SLOT_FORMATS: tuple[int, ...] = tuple(FORMAT_NAMES)
MLA_FORMATS = frozenset({3, 5})
# One K or V component per tensor ("layers" = components), heads kept: SGLang unified.
SINGLE_KV_FORMATS = frozenset({18})
# Formats whose memory object has one plane (kv = 1) without being fused.
SINGLE_PLANE_FORMATS = MLA_FORMATS | SINGLE_KV_FORMATS
PACKED_FORMATS = frozenset({12, 13})
HND_FORMATS = frozenset({6, 7, 8, 12})
PBS_FORMATS = frozenset({4, 5})
SINGLE_BUFFER_FORMATS = frozenset({0, 8})
KV_LAYER_FORMATS = frozenset({4, 9})  # pointers K0..K_{L-1}, V0..V_{L-1}
LAYER_KV_FORMATS = frozenset({16})  # pointers K0, V0, K1, V1, ...
PER_LAYER_FORMATS = frozenset({1, 2, 3, 5, 6, 7, 12, 13, 16, 18})


@dataclass(frozen=True)
class Geom:
    num_layers: int
    num_blocks: int
    block_size: int
    num_heads: int
    head_size: int

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size


def heads(fmt: int, g: Geom) -> int:
    """KV heads as the paged layout sees them (MLA has one latent row)."""
    return 1 if fmt in MLA_FORMATS else g.num_heads


def buffer_shape(fmt: int, g: Geom) -> tuple[int, ...]:
    """Natural shape of one paged buffer of ``fmt``."""
    nl, nb, bs, nh, hs = g.num_layers, g.num_blocks, g.block_size, g.num_heads, g.head_size
    shapes: dict[int, tuple[int, ...]] = {
        0: (nb, nl, 2, bs, nh, hs),
        8: (nb, nl, 2, nh, bs, hs),
        1: (2, nb, bs, nh, hs),
        2: (nb, 2, bs, nh, hs),
        6: (2, nb, nh, bs, hs),
        7: (nb, 2, nh, bs, hs),
        3: (nb, bs, hs),
        5: (nb * bs, 1, hs),
        4: (nb * bs, nh, hs),
        9: (nb, bs, nh, hs),
        16: (nb, bs, nh, hs),
        18: (nb, bs, nh, hs),
        12: (nb, nh, bs, 2 * hs),
        13: (nb, bs, nh, 2 * hs),
    }
    return shapes[fmt]


def object_shape(fmt: int, g: Geom, num_tokens: int, fused: bool = False) -> tuple[int, int, int, int]:
    """``[kv, L, T, row]`` memory object for ``fmt``."""
    if fmt in MLA_FORMATS:
        return (1, g.num_layers, num_tokens, g.head_size)
    if fmt in SINGLE_KV_FORMATS:
        return (1, g.num_layers, num_tokens, g.num_heads * g.head_size)
    if fused:
        assert fmt in PACKED_FORMATS
        return (1, g.num_layers, num_tokens, g.num_heads * 2 * g.head_size)
    return (2, g.num_layers, num_tokens, g.num_heads * g.head_size)


def random_tensor(shape: Sequence[int], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(tuple(shape), generator=gen, dtype=torch.float32).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max + 1, tuple(shape), generator=gen, dtype=torch.int64).to(dtype)


def random_slots(num_tokens: int, num_slots: int, gen: torch.Generator, num_invalid: int = 0) -> torch.Tensor:
    """Unique slots for ``num_tokens`` tokens, ``num_invalid`` of them -1 at random positions."""
    assert num_tokens <= num_slots and num_invalid <= num_tokens
    slots = torch.randperm(num_slots, generator=gen)[:num_tokens].clone()
    if num_invalid:
        where = torch.randperm(num_tokens, generator=gen)[:num_invalid]
        slots[where] = -1
    return slots


@dataclass
class PagedCache:
    """A paged KV cache in its engine's natural structure.

    ``data`` is one tensor (formats 0, 8), a list with one tensor per layer, a
    list of per-layer ``(K, V)`` tuples (16) or ``[[K layers], [V layers]]``
    (4, 9). ``base`` is set when the per-layer tensors are views of one
    blocks-first allocation; ``rebuild`` then re-slices a clone of it.
    """

    fmt: int
    geom: Geom
    data: object
    base: torch.Tensor | None = None
    rebuild: Callable[[torch.Tensor], object] | None = field(default=None, repr=False)

    def buffers(self) -> list[torch.Tensor]:
        """Buffers in the format's pointer-table order."""
        d = self.data
        if self.fmt in SINGLE_BUFFER_FORMATS:
            assert isinstance(d, torch.Tensor)
            return [d]
        if self.fmt in KV_LAYER_FORMATS:
            assert isinstance(d, list)
            return list(d[0]) + list(d[1])
        if self.fmt in LAYER_KV_FORMATS:
            assert isinstance(d, list)
            return [t for pair in d for t in pair]
        assert isinstance(d, list)
        return list(d)

    def pointers(self) -> torch.Tensor:
        return torch.tensor([t.data_ptr() for t in self.buffers()], dtype=torch.int64)

    def clone(self) -> PagedCache:
        if self.base is not None:
            assert self.rebuild is not None
            base = self.base.clone()
            return PagedCache(self.fmt, self.geom, self.rebuild(base), base, self.rebuild)
        d = self.data
        if isinstance(d, torch.Tensor):
            return PagedCache(self.fmt, self.geom, d.clone())
        assert isinstance(d, list)
        if self.fmt in KV_LAYER_FORMATS:
            return PagedCache(self.fmt, self.geom, [[t.clone() for t in d[0]], [t.clone() for t in d[1]]])
        if self.fmt in LAYER_KV_FORMATS:
            return PagedCache(self.fmt, self.geom, [(k.clone(), v.clone()) for k, v in d])
        return PagedCache(self.fmt, self.geom, [t.clone() for t in d])

    def storage(self) -> list[torch.Tensor]:
        """Every byte the cache owns (the base allocation for views)."""
        return [self.base] if self.base is not None else self.buffers()


def make_paged(fmt: int, g: Geom, dtype: torch.dtype, gen: torch.Generator) -> PagedCache:
    shape = buffer_shape(fmt, g)

    def one() -> torch.Tensor:
        return random_tensor(shape, dtype, gen)

    layers = range(g.num_layers)
    if fmt in SINGLE_BUFFER_FORMATS:
        return PagedCache(fmt, g, one())
    if fmt in KV_LAYER_FORMATS:
        return PagedCache(fmt, g, [[one() for _ in layers], [one() for _ in layers]])
    if fmt in LAYER_KV_FORMATS:
        return PagedCache(fmt, g, [(one(), one()) for _ in layers])
    return PagedCache(fmt, g, [one() for _ in layers])


def make_blocks_first(fmt: int, g: Geom, dtype: torch.dtype, gen: torch.Generator) -> PagedCache:
    """Formats 12/13 (and MLA 3) as per-layer views ``buf[:, l]`` of one ``[NB, NL, ...]`` pool."""
    assert fmt in PACKED_FORMATS or fmt == 3
    inner = buffer_shape(fmt, g)[1:]
    base = random_tensor((g.num_blocks, g.num_layers, *inner), dtype, gen)

    def rebuild(b: torch.Tensor) -> object:
        return [b[:, layer] for layer in range(g.num_layers)]

    return PagedCache(fmt, g, rebuild(base), base, rebuild)


def token_view(cache: PagedCache, layer: int, kv: int, fused: bool = False) -> torch.Tensor:
    """View ``[NB, BS, heads, width]`` of plane ``kv`` of ``layer`` (writes go through)."""
    fmt, g, d = cache.fmt, cache.geom, cache.data
    nb, bs = g.num_blocks, g.block_size
    if fmt == 0:
        return d[:, layer, kv]  # type: ignore[index]
    if fmt == 8:
        return d[:, layer, kv].permute(0, 2, 1, 3)  # type: ignore[index]
    if fmt in (1, 6):
        t = d[layer][kv]  # type: ignore[index]
        return t if fmt == 1 else t.permute(0, 2, 1, 3)
    if fmt in (2, 7):
        t = d[layer][:, kv]  # type: ignore[index]
        return t if fmt == 2 else t.permute(0, 2, 1, 3)
    if fmt == 3:
        return d[layer].unsqueeze(2)  # type: ignore[index]
    if fmt == 5:
        return d[layer].unflatten(0, (nb, bs))  # type: ignore[index]
    if fmt == 4:
        return d[kv][layer].unflatten(0, (nb, bs))  # type: ignore[index]
    if fmt in (9, 16):
        return d[kv][layer] if fmt == 9 else d[layer][kv]  # type: ignore[index]
    if fmt == 18:
        assert kv == 0, "format 18 has one plane per tensor"
        return d[layer]  # type: ignore[index]
    if fmt in PACKED_FORMATS:
        t = d[layer]  # type: ignore[index]
        if fmt == 12:
            t = t.permute(0, 2, 1, 3)
        if fused:
            return t
        hs = g.head_size
        return t[..., kv * hs : (kv + 1) * hs]
    raise KeyError(fmt)


def _live_tokens(slots: torch.Tensor, skip: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s = slots.to(torch.int64)
    tokens = torch.arange(s.numel())
    keep = (tokens >= skip) & (s >= 0)
    return tokens[keep], s[keep], keep


def ref_transfer(
    cache: PagedCache,
    obj: torch.Tensor,
    slots: torch.Tensor,
    direction: int,
    skip: int = 0,
    fused: bool = False,
) -> None:
    """Reference ``multi_layer_kv_transfer`` on ``obj`` ``[kv, L, T, row]``, in place."""
    tokens, live, _ = _live_tokens(slots, skip)
    if tokens.numel() == 0:
        return
    bs = cache.geom.block_size
    blocks, offsets = live // bs, live % bs
    kv_planes, num_layers = obj.shape[0], obj.shape[1]
    for layer in range(num_layers):
        for kv in range(kv_planes):
            view = token_view(cache, layer, kv, fused)
            if direction == D2H:
                obj[kv, layer, tokens] = view[blocks, offsets].reshape(tokens.numel(), -1)
            else:
                rows = obj[kv, layer, tokens]
                view[blocks, offsets] = rows.reshape(tokens.numel(), view.shape[2], view.shape[3])


def layer_cache(fmt: int, g: Geom, layer_tensor: object) -> PagedCache:
    """A one-layer cache around an engine's single-layer tensor (or (K, V) pair)."""
    one = Geom(1, g.num_blocks, g.block_size, g.num_heads, g.head_size)
    if fmt in KV_LAYER_FORMATS:
        k, v = layer_tensor  # type: ignore[misc]
        return PagedCache(fmt, one, [[k], [v]])
    return PagedCache(fmt, one, [layer_tensor])


def single_layer_object_view(lmc: torch.Tensor, single_plane: bool, token_major: bool) -> torch.Tensor:
    """``[kv, 1, T, row]`` view of a single-layer LMCache tensor (``[T, row]`` if ``single_plane``)."""
    if single_plane:
        return lmc.unsqueeze(0).unsqueeze(0)
    if token_major:
        return lmc.permute(1, 0, 2).unsqueeze(1)
    return lmc.unsqueeze(1)


def block_slots(
    block_ids: Sequence[int], obj_index: int, blocks_per_object: int, block_size: int, skip_blocks: int
) -> torch.Tensor:
    """Slot mapping of object ``obj_index`` in a block transfer (-1 = untouched token)."""
    chunk = blocks_per_object * block_size
    slots = torch.full((chunk,), -1, dtype=torch.int64)
    for j in range(blocks_per_object):
        flat = obj_index * blocks_per_object + j
        if flat >= len(block_ids) or flat < skip_blocks:
            continue
        b = int(block_ids[flat])
        slots[j * block_size : (j + 1) * block_size] = torch.arange(b * block_size, (b + 1) * block_size)
    return slots


def ref_block_transfer(
    cache: PagedCache,
    objects: Sequence[torch.Tensor],
    block_ids: Sequence[int],
    direction: int,
    chunk: int,
    skip_blocks: int = 0,
    fused: bool = False,
) -> None:
    """Reference ``multi_layer_block_kv_transfer``; ``objects`` are ``[kv, L, chunk, row]``."""
    bs = cache.geom.block_size
    per_object = chunk // bs
    for i, obj in enumerate(objects):
        ref_transfer(cache, obj, block_slots(block_ids, i, per_object, bs, skip_blocks), direction, 0, fused)


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """The bytes of ``t`` in logical element order, as a flat uint8 tensor."""
    if t.numel() == 0:
        return torch.empty(0, dtype=torch.uint8)
    # A copy with default strides: a dense tensor whose size-1 axes have
    # unusual strides counts as contiguous, yet cannot be viewed as bytes.
    flat = torch.empty(t.numel(), dtype=t.dtype)
    flat.copy_(t.detach().reshape(-1))
    return flat.view(torch.uint8)


def byte_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exact equality, bit for bit, of two tensors of one dtype and shape."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(as_bytes(a), as_bytes(b))


def assert_cache_equal(got: PagedCache, want: PagedCache) -> None:
    g, w = got.storage(), want.storage()
    assert len(g) == len(w)
    for i, (x, y) in enumerate(zip(g, w)):
        if not byte_equal(x, y):
            diff = (as_bytes(x) != as_bytes(y)).nonzero()
            raise AssertionError(f"paged buffer {i} differs at {diff.shape[0]} bytes, first {diff[:3].tolist()}")


def assert_tensor_equal(got: torch.Tensor, want: torch.Tensor, what: str = "tensor") -> None:
    if not byte_equal(got, want):
        if got.shape != want.shape or got.dtype != want.dtype:
            raise AssertionError(f"{what}: {got.dtype}{list(got.shape)} vs {want.dtype}{list(want.shape)}")
        bad = (as_bytes(got) != as_bytes(want)).nonzero()
        raise AssertionError(f"{what} differs at {bad.shape[0]} byte positions, first {bad[:3].tolist()}")
