"""KV layer-group builder.

Models whose layers do not all share one KV layout (hybrid attention, MLA next
to MHA, per-layer head counts, different block sizes) are transferred one
*group* at a time: a group is a set of layers with the same layout identity

    (kv_size, num_heads, head_size, block_size, engine_group, dtype, format, planes)

which is the key upstream LMCache uses for its kernel groups
(``lmcache.v1.kv_layer_groups.KernelGroupIdentity``) plus, for plane tuples,
the widths of the planes (upstream's key cannot tell ``(512, 64)`` from ``(576,)``). Groups keep the order in
which their first layer appears; layers keep model order inside a group.

Input is what an engine registers: a per-layer list (tensors, or ``(K, V)``
tuples). Structures that are not per-layer lists (one cross-layer tensor,
SGLang's ``[K layers, V layers]``) form a single group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from lmcache_ascend.core.detection import KVCacheLayout, detect_kv_layout
from lmcache_ascend.core.kv_format import KVFormat


class LayerIdentity(NamedTuple):
    kv_size: int
    num_heads: int
    head_size: int
    block_size: int
    engine_group: int
    dtype: str
    fmt: KVFormat
    # Plane tuples: (width, itemsize) per plane; () otherwise. Two tuples can
    # pack the same row from different planes, e.g. (512, 64) and (576,).
    planes: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class KVLayerGroup:
    identity: LayerIdentity
    layer_indices: tuple[int, ...]
    layout: KVCacheLayout

    @property
    def num_layers(self) -> int:
        return len(self.layer_indices)


def _identity(layout: KVCacheLayout, engine_group: int) -> LayerIdentity:
    g = layout.geometry
    return LayerIdentity(
        kv_size=layout.kv_size,
        num_heads=g.num_heads,
        head_size=g.head_size,
        block_size=g.block_size,
        engine_group=engine_group,
        dtype=layout.dtype,
        fmt=layout.fmt,
        planes=g.planes,
    )


def _is_per_layer_list(kv_caches: Any, engine: str) -> bool:
    if not isinstance(kv_caches, (list, tuple)) or not kv_caches:
        return False
    if engine == "sglang":
        return False
    return True


def build_layer_groups(
    kv_caches: Any,
    engine: str = "vllm",
    layout_hints: Mapping[str, Any] | None = None,
    engine_groups: Sequence[int] | None = None,
) -> list[KVLayerGroup]:
    """Bucket layers by layout identity.

    Args:
        kv_caches: the engine's KV caches (see module docstring).
        engine: ``"vllm"`` or ``"sglang"``.
        layout_hints: passed to :func:`detect_kv_layout`.
        engine_groups: per-layer scheduler KV-group index (hybrid models);
            layers of different engine groups never share a layer group.

    Raises:
        ValueError: if ``engine_groups`` does not have one entry per layer, or
            a layer's layout is not recognised.
    """
    if not _is_per_layer_list(kv_caches, engine):
        layout = detect_kv_layout(kv_caches, engine, layout_hints)
        indices = tuple(range(layout.geometry.num_layers))
        group = engine_groups[0] if engine_groups else 0
        return [KVLayerGroup(_identity(layout, group), indices, layout)]

    layers = list(kv_caches)
    if engine_groups is not None and len(engine_groups) != len(layers):
        raise ValueError(
            f"engine_groups has {len(engine_groups)} entries for {len(layers)} layers"
        )
    buckets: dict[LayerIdentity, list[int]] = {}
    for i, entry in enumerate(layers):
        one = detect_kv_layout([entry], engine, layout_hints)
        key = _identity(one, engine_groups[i] if engine_groups else 0)
        buckets.setdefault(key, []).append(i)

    groups = []
    for key, members in buckets.items():
        layout = detect_kv_layout([layers[i] for i in members], engine, layout_hints)
        groups.append(KVLayerGroup(key, tuple(members), layout))
    return groups
