"""KV-cache format detection from tensor descriptions.

:func:`detect_kv_layout` takes what an engine registers (a tensor, a list per
layer, a list of per-layer ``(K, V)`` tuples, SGLang's ``[K layers, V layers]``,
SGLang NPU's ``[K_all, V_all]`` or SGLang's flat "unified" component list), as
torch / numpy / MindSpore tensors or :class:`TensorDesc`, and returns a
:class:`KVCacheLayout`: the :class:`KVFormat` (upstream ``EngineKVFormat``
value), the geometry, and the buffers in the pointer-table order the kernels
expect.

Layout hints (same keys as upstream ``LayoutHints``):

- ``kv_layout``: ``"NHD"`` or ``"HND"``. Shapes alone cannot tell them apart.
  Without the hint, host-resident caches are taken as HND and device caches as
  NHD, which is upstream LMCache's rule (vLLM CPU allocates HND). ``"NZ"``
  names the 310P fractal layout (``[NB, NH*HS/16, BS, 16]`` per K or V), which
  shapes alone cannot tell from ``(K, V)`` tuples with a head size of 16.
- ``num_kv_heads``: for NZ caches, how the 16-element pieces group into heads
  (informational: the addressing does not depend on it).
- ``tokens_per_block``: block size for SGLang pools registered as flat slots.
- ``kv_list_layout``: ``"unified"`` marks SGLang's multi-process registration,
  a flat list with one tensor per K or V component: ``[NB, BS, NH, HS]`` is
  format 18 (``NL_X_NB_BS_NH_HS``), ``[NB, BS, HS]`` (MLA) format 3, as
  LMCache's SGLang detector decides. ``NL`` is then the number of tensors.

A tensor that is a permuted view of a dense allocation (vLLM exposes HND
caches as NHD views) is first described in its physical axis order.

Raises ``ValueError`` naming the structure for anything it does not recognise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lmcache_ascend.core.kv_format import KVFormat, format_spec
from lmcache_ascend.core.plane_tuples import plane_tuple_geometry
from lmcache_ascend.core.planes import NZ_PIECE, KVGeometry, buffer_shape
from lmcache_ascend.core.tensor_desc import TensorDesc, contiguous_strides, describe

# What a layout detector found: the format, the buffers in pointer-table order, the geometry.
Detected = tuple[KVFormat, list[TensorDesc], KVGeometry]

ENGINES = ("vllm", "sglang")


@dataclass(frozen=True)
class KVCacheLayout:
    fmt: KVFormat
    geometry: KVGeometry
    dtype: str
    device: str
    buffers: tuple[TensorDesc, ...]

    @property
    def kv_size(self) -> int:
        return format_spec(self.fmt).kv_size

    @property
    def hidden_dim(self) -> int:
        g = self.geometry
        return (1 if format_spec(self.fmt).mla else g.num_heads) * g.head_size

    @property
    def buffer_ptrs(self) -> list[int]:
        return [b.ptr for b in self.buffers]


class LayoutFacts:
    """Shortcuts to the detected layout of a class holding ``layout`` (the
    engine-KV descriptions of the torch and MindSpore connectors)."""

    layout: KVCacheLayout

    @property
    def fmt(self) -> KVFormat:
        return self.layout.fmt

    @property
    def use_mla(self) -> bool:
        return format_spec(self.layout.fmt).mla

    @property
    def num_layers(self) -> int:
        return self.layout.geometry.num_layers

    @property
    def num_slots(self) -> int:
        return self.layout.geometry.num_slots

    @property
    def block_size(self) -> int:
        return self.layout.geometry.block_size

    @property
    def head_size(self) -> int:
        return self.layout.geometry.head_size

    @property
    def hidden_dim(self) -> int:
        return self.layout.hidden_dim

    @property
    def dtype(self) -> str:
        """Canonical dtype name of the first buffer (torch's spelling, whatever the framework)."""
        return self.layout.dtype


def physical_view(d: TensorDesc) -> TensorDesc:
    """Reorder axes so strides decrease, when that makes ``d`` dense."""
    if d.is_contiguous or d.ndim < 2:
        return d
    order = sorted(range(d.ndim), key=lambda i: (-d.strides[i], -d.shape[i]))
    shape = tuple(d.shape[i] for i in order)
    strides = tuple(d.strides[i] for i in order)
    if strides != contiguous_strides(shape):
        return d  # not a permutation of a dense tensor; validated later
    return replace(d, shape=shape, strides=strides)


def _describe_tree(node: Any) -> Any:
    if isinstance(node, (list, tuple)):
        return [_describe_tree(x) for x in node]
    return physical_view(describe(node))


def _shape_str(node: Any) -> str:
    if isinstance(node, list):
        inner = ", ".join(_shape_str(x) for x in node[:3])
        return f"[{inner}{', ...' if len(node) > 3 else ''}] x{len(node)}"
    return f"{node.dtype}{list(node.shape)}"


def detect_kv_layout(
    kv_caches: Any,
    engine: str = "vllm",
    layout_hints: Mapping[str, Any] | None = None,
) -> KVCacheLayout:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    hints = dict(layout_hints or {})
    tree = _describe_tree(kv_caches)
    if isinstance(tree, list) and not tree:
        raise ValueError("kv_caches is empty")
    detect = _detect_vllm if engine == "vllm" else _detect_sglang
    found = detect(tree, hints)
    if found is None:
        raise ValueError(
            f"unrecognised {engine} KV cache structure {_shape_str(tree)} "
            f"(layout_hints={hints}); see lmcache_ascend.core.kv_format.FORMATS"
        )
    fmt, buffers, geometry = found
    return _checked(fmt, buffers, geometry)


def _resolve_layout(hints: dict[str, Any], first: TensorDesc) -> str:
    layout = hints.get("kv_layout")
    if layout is None:
        return "HND" if first.is_host else "NHD"
    if layout not in ("NHD", "HND", "NZ"):
        raise ValueError(f"layout_hints['kv_layout'] must be 'NHD', 'HND' or 'NZ', got {layout!r}")
    return str(layout)


def _first(tree: Any) -> TensorDesc:
    while isinstance(tree, list):
        tree = tree[0]
    if not isinstance(tree, TensorDesc):
        raise TypeError(f"kv_caches must be nested lists of tensor descriptions, got {type(tree).__name__}")
    return tree


def _depth(tree: Any) -> int:
    depth = 0
    while isinstance(tree, list):
        depth += 1
        tree = tree[0]
    return depth


def _geom(nl: int, nb: int, bs: int, nh: int, hs: int, d: TensorDesc) -> KVGeometry:
    return KVGeometry(num_layers=nl, num_blocks=nb, block_size=bs, num_heads=nh, head_size=hs, itemsize=d.itemsize)


def _detect_vllm(tree: Any, hints: dict[str, Any]) -> Detected | None:
    first = _first(tree)
    layout = _resolve_layout(hints, first)
    if layout == "NZ":
        return _detect_nz(tree, hints)
    hnd = layout == "HND"
    depth, s = _depth(tree), first.shape
    if depth == 0 and first.ndim == 6 and s[2] == 2:
        nb, nl, _, a, b, hs = s
        fmt = KVFormat.NB_NL_TWO_NH_BS_HS if hnd else KVFormat.NB_NL_TWO_BS_NH_HS
        bs, nh = (b, a) if hnd else (a, b)
        return fmt, [first], _geom(nl, nb, bs, nh, hs, first)
    if depth == 1:
        nl = len(tree)
        if first.ndim == 3:
            nb, bs, hs = s
            return KVFormat.NL_X_NB_BS_HS, tree, _geom(nl, nb, bs, 1, hs, first)
        if first.ndim == 4 and s[3] % 2 == 0:
            if hnd:
                nb, nh, bs, cs = s
                return KVFormat.NL_X_NB_NH_BS_CS, tree, _geom(nl, nb, bs, nh, cs // 2, first)
            nb, bs, nh, cs = s
            return KVFormat.NL_X_NB_BS_NH_CS, tree, _geom(nl, nb, bs, nh, cs // 2, first)
        if first.ndim == 5 and s[0] == 2:
            _, nb, a, b, hs = s
            fmt = KVFormat.NL_X_TWO_NB_NH_BS_HS if hnd else KVFormat.NL_X_TWO_NB_BS_NH_HS
            bs, nh = (b, a) if hnd else (a, b)
            return fmt, tree, _geom(nl, nb, bs, nh, hs, first)
        if first.ndim == 5 and s[1] == 2:
            nb, _, a, b, hs = s
            fmt = KVFormat.NL_X_NB_TWO_NH_BS_HS if hnd else KVFormat.NL_X_NB_TWO_BS_NH_HS
            bs, nh = (b, a) if hnd else (a, b)
            return fmt, tree, _geom(nl, nb, bs, nh, hs, first)
    if depth == 2 and first.ndim == 4:
        planes = tree[0]
        single_head = all(p.ndim == 4 and p.shape[2] == 1 for p in planes)
        widths = {p.shape[-1] for p in planes}
        if single_head and (len(planes) in (1, 3) or len(widths) > 1):
            # Upstream's rule: one latent head, and not a same-width (K, V) pair.
            buffers = [t for layer in tree for t in layer]
            return KVFormat.NL_X_NP_X_NB_BS_ONE_HS, buffers, plane_tuple_geometry(planes, len(tree))
        if all(len(layer) == 2 for layer in tree) and planes[0].shape == planes[1].shape:
            nb, bs, nh, hs = planes[0].shape
            buffers = [t for layer in tree for t in layer]
            return KVFormat.NL_X_TWO_X_NB_BS_NH_HS, buffers, _geom(len(tree), nb, bs, nh, hs, planes[0])
    return None


def _detect_nz(tree: Any, hints: dict[str, Any]) -> Detected | None:
    """310P NZ: per layer ``(K, V)`` of ``[NB, C, BS, 16]``, or ``[2, NB, C, BS, 16]``."""
    first = _first(tree)
    depth, s = _depth(tree), first.shape
    if depth == 2 and first.ndim == 4 and s[3] == NZ_PIECE and all(len(layer) == 2 for layer in tree):
        nb, pieces, bs, _ = s
        fmt, buffers = KVFormat.NL_X_TWO_X_NB_NZC_BS_C16, [t for layer in tree for t in layer]
    elif depth == 1 and first.ndim == 5 and s[0] == 2 and s[4] == NZ_PIECE:
        _, nb, pieces, bs, _ = s
        fmt, buffers = KVFormat.NL_X_TWO_NB_NZC_BS_C16, tree
    else:
        return None
    heads = int(hints.get("num_kv_heads", 1))
    if heads < 1 or (pieces * NZ_PIECE) % heads:
        raise ValueError(f"layout_hints['num_kv_heads']={heads} does not divide the {pieces * NZ_PIECE}-element NZ row")
    return fmt, buffers, _geom(len(tree), nb, bs, heads, pieces * NZ_PIECE // heads, first)


def _detect_sglang(tree: Any, hints: dict[str, Any]) -> Detected | None:
    first = _first(tree)
    depth, s = _depth(tree), first.shape
    tokens_per_block = hints.get("tokens_per_block")
    if hints.get("kv_list_layout") == "unified":
        # Shapes cannot tell this flat component list from other SGLang pools
        # (NH may be 1 after tensor parallelism): the hint decides, as upstream.
        return _detect_sglang_unified(tree)
    if depth == 1 and len(tree) == 2 and first.ndim == 5 and tree[0].shape == tree[1].shape:
        # SGLang NPU: [K_all, V_all], each [layers, blocks, block_size, heads, dim].
        nl, nb, bs, nh, hs = s
        buffers = [_layer_view(t, layer) for t in tree for layer in range(nl)]
        return KVFormat.TWO_X_NL_X_NB_BS_NH_HS, buffers, _geom(nl, nb, bs, nh, hs, first)
    if depth == 1 and first.ndim == 3 and s[1] == 1:
        pbs, _, hs = s
        return KVFormat.NL_X_NBBS_ONE_HS, tree, _geom(len(tree), 1, pbs, 1, hs, first)
    if depth == 1 and first.ndim == 3 and tokens_per_block:
        nb, bs, hs = s
        return KVFormat.NL_X_NB_BS_HS, tree, _geom(len(tree), nb, bs, 1, hs, first)
    if depth == 2 and len(tree) == 2 and len(tree[0]) == len(tree[1]):
        nl = len(tree[0])
        buffers = list(tree[0]) + list(tree[1])
        if first.ndim == 3:
            pbs, nh, hs = s
            return KVFormat.TWO_X_NL_X_NBBS_NH_HS, buffers, _geom(nl, 1, pbs, nh, hs, first)
        if first.ndim == 4:
            nb, bs, nh, hs = s
            return KVFormat.TWO_X_NL_X_NB_BS_NH_HS, buffers, _geom(nl, nb, bs, nh, hs, first)
    return None


def _detect_sglang_unified(tree: Any) -> Detected | None:
    """One tensor per K or V component (all K layers, then all V layers)."""
    if _depth(tree) != 1:
        return None
    first, nl = tree[0], len(tree)
    if first.ndim == 3:
        nb, bs, hs = first.shape
        return KVFormat.NL_X_NB_BS_HS, tree, _geom(nl, nb, bs, 1, hs, first)
    if first.ndim == 4:
        nb, bs, nh, hs = first.shape
        return KVFormat.NL_X_NB_BS_NH_HS, tree, _geom(nl, nb, bs, nh, hs, first)
    return None


def _layer_view(t: TensorDesc, layer: int) -> TensorDesc:
    return replace(t, ptr=t.ptr + layer * t.strides[0] * t.itemsize, shape=t.shape[1:], strides=t.strides[1:])


def _checked(fmt: KVFormat, buffers: Sequence[TensorDesc], geometry: KVGeometry) -> KVCacheLayout:
    """Every buffer must be dense, of the format's shape, one dtype and device."""
    spec = format_spec(fmt)
    first = buffers[0]
    # Plane tuples repeat a pattern of dtypes per layer; others use one dtype.
    period = len(geometry.planes) if spec.buffers == "layer_planes" else 1
    for i, b in enumerate(buffers):
        expected = buffer_shape(spec, geometry, i)
        if b.shape != expected:
            raise ValueError(
                f"kv_caches buffer {i} has shape {list(b.shape)}, expected {list(expected)} for {fmt.name}"
            )
        if not b.is_contiguous:
            raise ValueError(f"kv_caches buffer {i} is not dense (strides {b.strides}); {fmt.name} needs dense buffers")
        like = buffers[i % period]
        if (b.dtype, b.device) != (like.dtype, first.device):
            raise ValueError(
                f"kv_caches buffer {i} is {b.dtype} on {b.device}, buffer {i % period} is {like.dtype} on "
                f"{first.device}; use core.layer_groups.build_layer_groups for mixed layers"
            )
    return KVCacheLayout(fmt=fmt, geometry=geometry, dtype=first.dtype, device=first.device, buffers=tuple(buffers))
