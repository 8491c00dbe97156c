"""Paged KV-cache formats: identifiers and physical layouts.

:class:`KVFormat` carries the same integer values and names as upstream
``lmcache.lmcache_native.EngineKVFormat`` (LMCache 0.5.6) for every layout
upstream knows, so a value detected here can be handed to LMCache unchanged
(:func:`to_upstream`). Ascend-only layouts take values from 100 upward in this
same enum (310P "NZ" layouts), so one enum names every layout the kernels accept.

:data:`FORMATS` describes each supported format physically, as data:

- ``buffers``: how the pointer table is ordered (the order upstream's
  ``key_value_ptrs`` uses for the format):
  ``"single"`` one tensor for all layers; ``"layer"`` one tensor per layer;
  ``"kv_layer"`` all K layers then all V layers; ``"layer_kv"`` K0, V0, K1, V1...;
  ``"layer_planes"`` each layer's planes in turn (L0P0, L0P1, ..., L1P0, ...).
- ``axes``: the axis order of one buffer, outermost first, with the tokens
  ``NB`` blocks, ``BS`` tokens in a block, ``PBS`` both folded into one slot
  axis, ``NH`` KV heads, ``HS`` head size, ``TWO`` the K/V axis, ``NL`` layers,
  ``ONE`` a size-1 axis, ``W`` a plane's own width (plane tuples), ``NZC`` and
  ``C16`` the 310P "NZ" split of a token's ``NH * HS`` elements into
  ``NH * HS / 16`` pieces of 16. Fused formats whose last axis packs
  ``[K | V]`` (``CS = 2 * HS``) are written with ``TWO, HS`` in place of ``CS``.
- ``mla``: one latent plane per layer (``kv_size == 1``, one head of ``HS``).
- ``single_kv``: each buffer holds one K *or* one V component with its real
  ``NH`` heads, so ``kv_size == 1`` without being MLA. Format 18
  (``NL_X_NB_BS_NH_HS``, SGLang's "unified" pool registered with LMCache's
  multi-process server) is ``"layer"`` buffers ``[NB, BS, NH, HS]``, one per
  K or V component (all K layers, then all V layers), and ``NL`` counts those
  components, not model layers. Its memory objects are single-plane,
  ``[1, NL, T, NH * HS]`` (LMCache's ``[NL, T, NH * HS]``): component ``i``
  is object layer ``i``, as LMCache's torch baseline lays it out.

Plane tuples (format 17: MLA ``(latent, rope)``, DSA ``(latent, rope, indexer)``,
DSA-C8 ``(latent, rope, int8 indexer, fp16 scale)``) pack a token's planes
byte-wise into one memory-object row, in tuple order, as upstream does; see
:mod:`lmcache_ascend.core.plane_tuples`.

Everything else (strides, plane offsets) is derived from these two facts in
:mod:`lmcache_ascend.core.planes`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

BufferOrder = Literal["single", "layer", "kv_layer", "layer_kv", "layer_planes"]


class KVFormat(enum.IntEnum):
    NB_NL_TWO_BS_NH_HS = 0
    NL_X_TWO_NB_BS_NH_HS = 1
    NL_X_NB_TWO_BS_NH_HS = 2
    NL_X_NB_BS_HS = 3
    TWO_X_NL_X_NBBS_NH_HS = 4
    NL_X_NBBS_ONE_HS = 5
    NL_X_TWO_NB_NH_BS_HS = 6
    NL_X_NB_TWO_NH_BS_HS = 7
    NB_NL_TWO_NH_BS_HS = 8
    TWO_X_NL_X_NB_BS_NH_HS = 9
    NL_X_NB_NH_BS_TWO_HS = 10
    NL_X_NB_BS_NH_TWO_HS = 11
    NL_X_NB_NH_BS_CS = 12
    NL_X_NB_BS_NH_CS = 13
    NL_X_NB_BSV_BSS = 14
    NL_X_TWO_NB_NH_ONE_BS_HS = 15
    NL_X_TWO_X_NB_BS_NH_HS = 16
    NL_X_NP_X_NB_BS_ONE_HS = 17
    NL_X_NB_BS_NH_HS = 18
    # Ascend-only (no upstream value): 310P "NZ" fractal layouts.
    NL_X_TWO_X_NB_NZC_BS_C16 = 100
    NL_X_TWO_NB_NZC_BS_C16 = 101


ASCEND_ONLY = frozenset({KVFormat.NL_X_TWO_X_NB_NZC_BS_C16, KVFormat.NL_X_TWO_NB_NZC_BS_C16})


@dataclass(frozen=True)
class FormatSpec:
    fmt: KVFormat
    buffers: BufferOrder
    axes: tuple[str, ...]
    mla: bool = False
    engines: tuple[str, ...] = ()
    # The trailing ``TWO, HS`` axes appear to engines as one ``CS`` axis.
    packed: bool = False
    # One K or V component per buffer, heads kept (not MLA): see the module docstring.
    single_kv: bool = False

    @property
    def kv_size(self) -> int:
        """Planes per layer of the memory object: 1 for MLA and single-component formats."""
        return 1 if self.mla or self.single_kv else 2

    @property
    def is_hnd(self) -> bool:
        return self.head_axis in self.axes and self.axes.index(self.head_axis) < self.axes.index(self._token_axis)

    @property
    def is_nz(self) -> bool:
        return "NZC" in self.axes

    @property
    def head_axis(self) -> str:
        """The axis that splits one token's row into runs (KV heads, or NZ pieces)."""
        return "NZC" if self.is_nz else "NH"

    @property
    def kv_inner(self) -> bool:
        """K and V of one head sit side by side (``... TWO, HS``)."""
        return self.axes[-2:] == ("TWO", "HS")

    @property
    def pbs_fused(self) -> bool:
        return "PBS" in self.axes

    @property
    def _token_axis(self) -> str:
        return "PBS" if self.pbs_fused else "BS"


def _spec(
    fmt: KVFormat,
    buffers: BufferOrder,
    axes: str,
    *engines: str,
    mla: bool = False,
    packed: bool = False,
    single_kv: bool = False,
) -> FormatSpec:
    return FormatSpec(fmt, buffers, tuple(axes.split()), mla=mla, engines=engines, packed=packed, single_kv=single_kv)


F = KVFormat
FORMATS: dict[KVFormat, FormatSpec] = {
    s.fmt: s
    for s in (
        _spec(F.NB_NL_TWO_BS_NH_HS, "single", "NB NL TWO BS NH HS", "vllm cross-layer NHD"),
        _spec(F.NL_X_TWO_NB_BS_NH_HS, "layer", "TWO NB BS NH HS", "vllm flash-attn NHD"),
        _spec(F.NL_X_NB_TWO_BS_NH_HS, "layer", "NB TWO BS NH HS", "vllm flashinfer NHD"),
        _spec(F.NL_X_NB_BS_HS, "layer", "NB BS HS", "vllm MLA", mla=True),
        _spec(F.TWO_X_NL_X_NBBS_NH_HS, "kv_layer", "PBS NH HS", "sglang MHA"),
        _spec(F.NL_X_NBBS_ONE_HS, "layer", "PBS ONE HS", "sglang MLA", mla=True),
        _spec(F.NL_X_TWO_NB_NH_BS_HS, "layer", "TWO NB NH BS HS", "vllm flash-attn HND"),
        _spec(F.NL_X_NB_TWO_NH_BS_HS, "layer", "NB TWO NH BS HS", "vllm flashinfer HND"),
        _spec(F.NB_NL_TWO_NH_BS_HS, "single", "NB NL TWO NH BS HS", "vllm cross-layer HND"),
        _spec(F.TWO_X_NL_X_NB_BS_NH_HS, "kv_layer", "NB BS NH HS", "sglang MHA paged", "sglang NPU"),
        _spec(F.NL_X_NB_NH_BS_TWO_HS, "layer", "NB NH BS TWO HS", "vllm blocks-first HND (deprecated name of 12)", packed=True),
        _spec(F.NL_X_NB_BS_NH_TWO_HS, "layer", "NB BS NH TWO HS", "vllm blocks-first NHD (deprecated name of 13)", packed=True),
        _spec(F.NL_X_NB_NH_BS_CS, "layer", "NB NH BS TWO HS", "vllm CPU", packed=True),
        _spec(F.NL_X_NB_BS_NH_CS, "layer", "NB BS NH TWO HS", "vllm fused NHD", packed=True),
        _spec(F.NL_X_TWO_NB_NH_ONE_BS_HS, "layer", "TWO NB NH ONE BS HS", "vllm-rbln"),
        _spec(F.NL_X_TWO_X_NB_BS_NH_HS, "layer_kv", "NB BS NH HS", "vllm-ascend (K, V) tuples"),
        _spec(F.NL_X_NP_X_NB_BS_ONE_HS, "layer_planes", "NB BS ONE W", "vllm-ascend MLA/DSA plane tuples", mla=True),
        _spec(F.NL_X_NB_BS_NH_HS, "layer", "NB BS NH HS", "sglang unified (MP): one tensor per K or V", single_kv=True),
        _spec(F.NL_X_TWO_X_NB_NZC_BS_C16, "layer_kv", "NB NZC BS C16", "vllm-ascend 310P NZ, separate K/V"),
        _spec(F.NL_X_TWO_NB_NZC_BS_C16, "layer", "TWO NB NZC BS C16", "vllm-ascend 310P NZ, merged K/V"),
    )
}


def format_spec(fmt: int | KVFormat) -> FormatSpec:
    """Return the physical description of ``fmt``.

    Raises:
        ValueError: if the kernels do not support ``fmt`` (the message lists
            the formats they do support).
    """
    try:
        return FORMATS[KVFormat(int(fmt))]
    except (ValueError, KeyError):
        supported = ", ".join(f"{int(f)} {f.name}" for f in FORMATS)
        raise ValueError(
            f"engine_kv_format {fmt!r} is not supported by lmcache_ascend kernels; "
            f"supported: {supported}"
        ) from None


def to_upstream(fmt: int | KVFormat) -> Any:
    """Convert to ``lmcache.lmcache_native.EngineKVFormat`` (imports LMCache).

    Raises:
        ValueError: for Ascend-only layouts, which upstream has no value for.
    """
    if int(fmt) in ASCEND_ONLY:
        raise ValueError(f"{KVFormat(int(fmt)).name} is Ascend-only: LMCache has no EngineKVFormat for it")
    from lmcache.lmcache_native import EngineKVFormat

    return EngineKVFormat(int(fmt))
