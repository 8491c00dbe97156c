"""Kernel benchmark: paged KV <-> memory object, ours vs upstream vs memcpy.

One realistic chunk (default: bf16, 16 layers, 8 KV heads x 128, 256 tokens in a
8192-slot paged buffer of 16-token blocks at random block ids) is stored
(paged -> ``KV_2LTD`` object) and loaded back, for several paged formats, by:

- ``ours``: ``lmcache_ascend.ops`` on the host C++ core;
- ``ours-torch``: the same op forced onto the device-generic torch path;
- ``upstream``: LMCache 0.5.6's torch baseline (``lmcache.v1.platform.torch_ops``),
  where it supports the format;
- ``memcpy``: ``torch.Tensor.copy_`` of the same number of bytes, contiguous.

Ascend layouts get rows of their own, with the same layers, tokens, slots and
block size: MLA ``(latent 512, rope 64)`` and DSA-C8 ``(latent 512, rope 64,
int8 indexer 128, fp16 scale 1)`` plane tuples (format 17, ``KV_MLA_FMT``
object, moved by ``multi_layer_block_kv_transfer``: upstream's only format-17
path is its torch block baseline, so all three implementations use the block op
there) and 310P NZ separate K/V (Ascend-only format 100, slot op; upstream has
no such layout). Their memcpy column copies as many bytes as their own object holds.

Each timed call works on a different chunk (``--rotate`` chunks at different
block ids, into different objects; memcpy likewise cycles through as many
buffer pairs), so data is as cold in the CPU caches as in serving;
``--rotate 1`` repeats one chunk (cache-hot). Host copy bandwidth drifts within
a run, so memcpy is timed in rounds alternating with ours (per format and
direction) and ``ours/memcpy`` is the median of the per-round ratios.

Prints a table (GB/s per op, direction, format) and the ratios, writes a PNG
bar chart to ``benchmarks/results/kernels.png``; with ``--json`` the last line
is one JSON object with ``store_vs_memcpy``, ``load_vs_memcpy``,
``store_vs_upstream``, ``load_vs_upstream`` (for the vLLM flash NHD format,
the layout upstream's baseline supports), ``min_vs_memcpy`` (the lowest
ours / memcpy ratio over every format and both directions),
``vs_memcpy_by_format`` (``{format: {"store": ratio, "load": ratio}}``),
``memcpy_gbps_by_format`` (the plain copy's GB/s next to each row: a shared
host's memory bandwidth moves between runs and rows, and ratios read against a
fast plain copy measure each thread's own speed), ``front_end_us_by_format``
(microseconds per call of ours spent outside the C++
copy: the op's Python checks and plane table, a fixed cost per call) and the
raw figures.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, bar_chart, format_table, print_json_last, time_calls  # noqa: E402

import lmcache_ascend.ops as ops  # noqa: E402
from lmcache_ascend.kernels import host  # noqa: E402
from lmcache_ascend.core.kv_format import KVFormat  # noqa: E402
from lmcache.lmcache_native import EngineKVFormat as F  # noqa: E402
from lmcache.lmcache_native import PageBufferShapeDesc  # noqa: E402
from lmcache.lmcache_native import TransferDirection as D  # noqa: E402
from lmcache.v1.platform import torch_ops as upstream  # noqa: E402

HEADLINE = F.NL_X_TWO_NB_BS_NH_HS
# Alternating memcpy / ours rounds per format and direction (see _measure).
ROUNDS = 5
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Shape:
    layers: int
    heads: int
    head_size: int
    tokens: int
    slots: int
    block_size: int
    dtype: torch.dtype

    @property
    def blocks(self) -> int:
        return self.slots // self.block_size

    @property
    def object_bytes(self) -> int:
        return 2 * self.layers * self.tokens * self.heads * self.head_size * self.dtype.itemsize


def _layer_shape(fmt: F, s: Shape) -> tuple[int, ...] | None:
    nb, bs, nh, hs = s.blocks, s.block_size, s.heads, s.head_size
    return {
        F.NL_X_TWO_NB_BS_NH_HS: (2, nb, bs, nh, hs),
        F.NL_X_NB_TWO_BS_NH_HS: (nb, 2, bs, nh, hs),
        F.NL_X_TWO_NB_NH_BS_HS: (2, nb, nh, bs, hs),
        F.NL_X_NB_NH_BS_CS: (nb, nh, bs, 2 * hs),
    }.get(fmt)


FORMATS = {
    "vLLM flash NHD (1)": F.NL_X_TWO_NB_BS_NH_HS,
    "flashinfer NHD (2)": F.NL_X_NB_TWO_BS_NH_HS,
    "flash HND (6)": F.NL_X_TWO_NB_NH_BS_HS,
    "vLLM CPU (12)": F.NL_X_NB_NH_BS_CS,
    "vllm-ascend K,V tuples (16)": F.NL_X_TWO_X_NB_BS_NH_HS,
}
UPSTREAM_OK = {F.NL_X_TWO_NB_BS_NH_HS, F.NL_X_NB_TWO_BS_NH_HS}
# Plane tuples per layer: (width, dtype); None = the --dtype of the run.
PlaneSpec = tuple[tuple[int, "torch.dtype | None"], ...]
PLANE_TUPLES: dict[str, PlaneSpec] = {
    "MLA (latent, rope) (17)": ((512, None), (64, None)),
    "DSA-C8 4 planes (17)": ((512, None), (64, None), (128, torch.int8), (1, torch.float16)),
}
NZ_LAYOUTS = {"310P NZ K,V (100)": KVFormat.NL_X_TWO_X_NB_NZC_BS_C16}
ALL_NAMES = [*FORMATS, *PLANE_TUPLES, *NZ_LAYOUTS]
Rows = dict[str, dict[str, "float | None"]]


def _paged(fmt: F, s: Shape) -> tuple[list, torch.Tensor]:
    if fmt == F.NL_X_TWO_X_NB_BS_NH_HS:
        layers = [tuple(torch.randn(s.blocks, s.block_size, s.heads, s.head_size).to(s.dtype) for _ in range(2)) for _ in range(s.layers)]
        ptrs = torch.tensor([t.data_ptr() for layer in layers for t in layer], dtype=torch.int64)
        return layers, ptrs
    layers = [torch.randn(_layer_shape(fmt, s)).to(s.dtype) for _ in range(s.layers)]
    return layers, torch.tensor([t.data_ptr() for t in layers], dtype=torch.int64)


def _slots(s: Shape, gen: torch.Generator) -> torch.Tensor:
    blocks = torch.randperm(s.blocks, generator=gen)[: -(-s.tokens // s.block_size)]
    slots = (blocks[:, None] * s.block_size + torch.arange(s.block_size)).reshape(-1)
    return slots[: s.tokens].contiguous()


def _measure(calls, nbytes: int, repeat: int, rotate: int, upstream_ok: bool) -> Rows:
    """Store and load rows: ours (host) against memcpy of the same bytes in alternating
    rounds, ours forced onto the torch path, upstream or None.

    The host's copy bandwidth drifts by 30% within a minute on a shared VM, so
    each round times memcpy right before ours and ``vs_memcpy`` is the median of
    the per-round ratios; ``ours`` and ``memcpy`` are the medians of their rounds.
    """
    copies = _memcpy_calls(nbytes, rotate)
    per_round = max(rotate, repeat // ROUNDS)
    out: Rows = {}
    for name, direction in (("store", D.D2H), ("load", D.H2D)):
        ours_fns = calls(ops, direction)
        pairs = [(_gbps(copies, nbytes, per_round), _gbps(ours_fns, nbytes, per_round)) for _ in range(ROUNDS)]
        row: dict[str, float | None] = {
            "ours": statistics.median(o for _, o in pairs),
            "memcpy": statistics.median(m for m, _ in pairs),
            "vs_memcpy": statistics.median(o / m for m, o in pairs),
            "front_end_us": _front_end_us(ours_fns, per_round),
        }
        os.environ["LMCACHE_ASCEND_KERNEL_BACKEND"] = "torch"
        try:
            row["ours-torch"] = _gbps(calls(ops, direction), nbytes, max(rotate, repeat // 3))
        finally:
            os.environ.pop("LMCACHE_ASCEND_KERNEL_BACKEND")
        row["upstream"] = _gbps(calls(upstream, direction), nbytes, max(rotate, repeat // 5)) if upstream_ok else None
        out[name] = row
    return out


def bench_format(fmt: F, s: Shape, repeat: int, rotate: int, gen: torch.Generator) -> Rows:
    layers, ptrs = _paged(fmt, s)
    chunks = [(_slots(s, gen), torch.empty(2, s.layers, s.tokens, s.heads * s.head_size, dtype=s.dtype)) for _ in range(rotate)]
    kw = dict(block_size=s.block_size, head_size=s.head_size)

    def calls(impl, direction: D) -> list:
        return [
            lambda slots=slots, obj=obj: impl.multi_layer_kv_transfer(
                obj, ptrs, slots, torch.device("cpu"), s.slots, direction, fmt, **kw
            )
            for slots, obj in chunks
        ]

    out = _measure(calls, s.object_bytes, repeat, rotate, fmt in UPSTREAM_OK)
    return out


def _random(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    return torch.randint(-128, 128, shape, dtype=torch.int16).to(dtype)


def bench_plane_tuple(spec: PlaneSpec, s: Shape, repeat: int, rotate: int, gen: torch.Generator) -> Rows:
    """Format 17 through ``multi_layer_block_kv_transfer``: ours take ``[1, L, chunk, H]``
    objects, upstream ``[L, chunk, H]`` views of the same tensors."""
    planes = [(w, d or s.dtype) for w, d in spec]
    layers = [tuple(_random((s.blocks, s.block_size, 1, w), d) for w, d in planes) for _ in range(s.layers)]
    row_bytes = sum(w * d.itemsize for w, d in planes)
    first = planes[0][1]
    hidden = row_bytes // first.itemsize
    chunk = -(-s.tokens // s.block_size) * s.block_size
    desc = PageBufferShapeDesc()
    desc.kv_size, desc.nl, desc.nb, desc.bs, desc.nh, desc.hs = 1, s.layers, s.blocks, s.block_size, 1, hidden
    desc.element_size, desc.block_stride_elems, desc.dtype = first.itemsize, s.block_size * planes[0][0], first
    chunks = [
        (_slots(s, gen)[:: s.block_size] // s.block_size, torch.empty(1, s.layers, chunk, hidden, dtype=first))
        for _ in range(rotate)
    ]

    def calls(impl, direction: D) -> list:
        return [
            lambda blocks=blocks, obj=obj: impl.multi_layer_block_kv_transfer(
                layers, [obj if impl is ops else obj[0]], blocks, torch.device("cpu"), direction, desc, chunk,
                F.NL_X_NP_X_NB_BS_ONE_HS, 0,
            )
            for blocks, obj in chunks
        ]

    nbytes = s.layers * chunk * row_bytes
    out = _measure(calls, nbytes, repeat, rotate, True)
    return out


def bench_nz(fmt: KVFormat, s: Shape, repeat: int, rotate: int, gen: torch.Generator) -> Rows:
    """310P NZ: per layer (K, V), each ``[NB, NH * HS / 16, BS, 16]``; ``KV_2LTD`` objects."""
    pieces = s.heads * s.head_size // 16
    layers = [tuple(_random((s.blocks, pieces, s.block_size, 16), s.dtype) for _ in range(2)) for _ in range(s.layers)]
    ptrs = torch.tensor([t.data_ptr() for layer in layers for t in layer], dtype=torch.int64)
    chunks = [(_slots(s, gen), torch.empty(2, s.layers, s.tokens, s.heads * s.head_size, dtype=s.dtype)) for _ in range(rotate)]

    def calls(impl, direction: D) -> list:
        return [
            lambda slots=slots, obj=obj: impl.multi_layer_kv_transfer(
                obj, ptrs, slots, torch.device("cpu"), s.slots, direction, fmt, s.block_size, s.head_size
            )
            for slots, obj in chunks
        ]

    out = _measure(calls, s.object_bytes, repeat, rotate, False)
    return out


def _gbps(fns, nbytes: int, repeat: int) -> float:
    return nbytes / time_calls(fns, repeat=repeat) / 1e9


class _CoreTimer:
    """Stands in for the C++ core (``host._kvcore``), timing its copy calls
    (``transfer_planes``: slot ops; ``transfer_blocks``: block ops)."""

    def __init__(self, core: object) -> None:
        self.core = core
        self.seconds = 0.0

    def __getattr__(self, name: str) -> object:
        return getattr(self.core, name)

    def _timed(self, name: str, args: tuple[object, ...]) -> None:
        start = time.perf_counter()
        try:
            getattr(self.core, name)(*args)
        finally:
            self.seconds += time.perf_counter() - start

    def transfer_planes(self, *args: object) -> None:
        self._timed("transfer_planes", args)

    def transfer_blocks(self, *args: object) -> None:
        self._timed("transfer_blocks", args)


def _front_end_us(fns, calls: int) -> float:
    """Microseconds per call of ours spent outside the C++ copy: the op's Python checks
    and plane table (a fixed cost per call, which a small chunk feels most)."""
    timer = _CoreTimer(host._kvcore)
    host._kvcore = timer  # type: ignore[assignment]
    try:
        for fn in fns:  # the swap's first calls look names up afresh
            fn()
        timer.seconds = 0.0
        start = time.perf_counter()
        for i in range(calls):
            fns[i % len(fns)]()
        total = time.perf_counter() - start
    finally:
        host._kvcore = timer.core  # type: ignore[assignment]
    if timer.seconds == 0.0:  # the op reached the core by a path the timer does not stand in for
        raise RuntimeError("no copy call was timed: _CoreTimer lacks the core function these ops call")
    return (total - timer.seconds) / calls * 1e6


@functools.lru_cache(maxsize=1)
def _memcpy_calls(nbytes: int, rotate: int) -> list:
    """``rotate`` contiguous copies of ``nbytes`` (distinct buffer pairs, cold like the chunks)."""
    nbytes = nbytes // 4 * 4
    pairs = [(torch.randn(nbytes // 4).view(torch.uint8), torch.empty(nbytes, dtype=torch.uint8)) for _ in range(rotate)]
    return [lambda src=src, dst=dst: dst.copy_(src) for src, dst in pairs]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-size", type=int, default=128)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--slots", type=int, default=8192)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--repeat", type=int, default=48, help="timed calls per case (median is reported)")
    p.add_argument("--rotate", type=int, default=16, help="distinct chunks cycled through (1 = cache-hot)")
    p.add_argument("--formats", nargs="*", choices=sorted(ALL_NAMES), default=None, help="default: all")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.add_argument("--plot", type=Path, default=RESULTS_DIR / "kernels.png")
    a = p.parse_args(argv)
    shape = Shape(a.layers, a.heads, a.head_size, a.tokens, a.slots, a.block_size, DTYPES[a.dtype])
    names = a.formats or ALL_NAMES
    gen = torch.Generator().manual_seed(0)

    print(
        f"chunk: {a.dtype}, {a.layers} layers, {a.heads} heads x {a.head_size}, {a.tokens} tokens "
        f"({shape.object_bytes / 2**20:.1f} MiB), paged buffer {a.slots} slots in blocks of {a.block_size}; "
        f"cycling {a.rotate} chunk(s); torch threads {torch.get_num_threads()}"
    )
    rotate = max(1, a.rotate)
    # As vLLM's engine core does after start-up (vllm.utils.gc_utils.freeze_gc_heap):
    # otherwise collections of the imported libraries' objects land inside timed calls.
    gc.collect()
    gc.freeze()
    results: dict[str, Rows] = {}
    for name in tqdm(names, desc="formats", file=sys.stderr):
        if name in PLANE_TUPLES:
            results[name] = bench_plane_tuple(PLANE_TUPLES[name], shape, a.repeat, rotate, gen)
        elif name in NZ_LAYOUTS:
            results[name] = bench_nz(NZ_LAYOUTS[name], shape, a.repeat, rotate, gen)
        else:
            results[name] = bench_format(FORMATS[name], shape, a.repeat, rotate, gen)

    rows = []
    for name, per_dir in results.items():
        for direction, r in per_dir.items():
            up = r["upstream"]
            rows.append([name, direction, r["ours"], r["ours-torch"], up, r["memcpy"], r["vs_memcpy"], r["ours"] / up if up else None, r["front_end_us"]])
    headers = ["format", "op", "ours GB/s", "ours-torch GB/s", "upstream GB/s", "memcpy GB/s", "ours/memcpy", "ours/upstream", "front end us/call"]
    print(format_table(headers, rows))

    plot = bar_chart(
        a.plot,
        f"paged KV <-> memory object, {a.tokens} tokens, {a.layers} layers ({a.dtype})",
        [f"{n}\n{d}" for n in results for d in results[n]],
        {
            "ours (C++)": [r["ours"] for n in results for r in results[n].values()],
            "ours (torch path)": [r["ours-torch"] for n in results for r in results[n].values()],
            "upstream torch baseline": [r["upstream"] for n in results for r in results[n].values()],
            "memcpy": [r["memcpy"] for n in results for r in results[n].values()],
        },
        "GB/s",
    )
    if plot:
        print(f"plot: {plot}")

    if a.json:
        print_json_last(_summary(results))
    return 0


def _summary(results: dict[str, Rows]) -> dict[str, object]:
    """The ``--json`` line: ours / memcpy of the same bytes per format and direction, their
    minimum, and the headline format's figures when it was run (``--formats`` may leave it out)."""
    vs_memcpy = {n: {d: r["vs_memcpy"] for d, r in per_dir.items()} for n, per_dir in results.items()}
    out: dict[str, object] = {
        "min_vs_memcpy": min(v for per_dir in vs_memcpy.values() for v in per_dir.values()),  # type: ignore[type-var]
        "vs_memcpy_by_format": vs_memcpy,
        "front_end_us_by_format": {n: {d: r["front_end_us"] for d, r in per_dir.items()} for n, per_dir in results.items()},
        "memcpy_gbps_by_format": {n: {d: r["memcpy"] for d, r in per_dir.items()} for n, per_dir in results.items()},
    }
    head = next((n for n in results if FORMATS.get(n) == HEADLINE), None)
    if head is None:
        return out
    store, load = results[head]["store"], results[head]["load"]
    return out | {
        "format": head,
        "memcpy_gbps": statistics.median([store["memcpy"], load["memcpy"]]),
        "store_gbps": store["ours"],
        "load_gbps": load["ours"],
        "upstream_store_gbps": store["upstream"],
        "upstream_load_gbps": load["upstream"],
        "store_vs_memcpy": store["vs_memcpy"],
        "load_vs_memcpy": load["vs_memcpy"],
        "store_vs_upstream": store["ours"] / store["upstream"],
        "load_vs_upstream": load["ours"] / load["upstream"],
    }


if __name__ == "__main__":
    raise SystemExit(main())
