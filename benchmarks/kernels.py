"""Kernel benchmark: paged KV <-> memory object, ours vs upstream vs memcpy.

One realistic chunk (default: bf16, 16 layers, 8 KV heads x 128, 256 tokens in a
8192-slot paged buffer of 16-token blocks at random block ids) is stored
(paged -> ``KV_2LTD`` object) and loaded back, for several paged formats, by:

- ``ours``: ``lmcache_ascend.ops`` on the host C++ core;
- ``ours-torch``: the same op forced onto the device-generic torch path;
- ``upstream``: LMCache 0.5.6's torch baseline (``lmcache.v1.platform.torch_ops``),
  where it supports the format;
- ``memcpy``: ``torch.Tensor.copy_`` of the same number of bytes, contiguous.

Each timed call works on a different chunk (``--rotate`` chunks at different
block ids, into different objects; memcpy likewise cycles through as many
buffer pairs), so data is as cold in the CPU caches as in serving;
``--rotate 1`` repeats one chunk (cache-hot).

Prints a table (GB/s per op, direction, format) and the ratios, writes a PNG
bar chart to ``benchmarks/results/kernels.png``; with ``--json`` the last line
is one JSON object with ``store_vs_memcpy``, ``load_vs_memcpy``,
``store_vs_upstream``, ``load_vs_upstream`` (for the vLLM flash NHD format,
the layout upstream's baseline supports) and the raw figures.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, bar_chart, format_table, print_json_last, time_calls  # noqa: E402

import lmcache_ascend.ops as ops  # noqa: E402
from lmcache.lmcache_native import EngineKVFormat as F  # noqa: E402
from lmcache.lmcache_native import TransferDirection as D  # noqa: E402
from lmcache.v1.platform import torch_ops as upstream  # noqa: E402

HEADLINE = F.NL_X_TWO_NB_BS_NH_HS
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


def bench_format(fmt: F, s: Shape, repeat: int, rotate: int, gen: torch.Generator) -> dict[str, dict[str, float | None]]:
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

    out: dict[str, dict[str, float | None]] = {}
    for name, direction in (("store", D.D2H), ("load", D.H2D)):
        row: dict[str, float | None] = {"ours": _gbps(calls(ops, direction), s, repeat)}
        os.environ["LMCACHE_ASCEND_KERNEL_BACKEND"] = "torch"
        try:
            row["ours-torch"] = _gbps(calls(ops, direction), s, max(rotate, repeat // 3))
        finally:
            os.environ.pop("LMCACHE_ASCEND_KERNEL_BACKEND")
        row["upstream"] = _gbps(calls(upstream, direction), s, max(rotate, repeat // 5)) if fmt in UPSTREAM_OK else None
        out[name] = row
    del layers
    return out


def _gbps(fns, s: Shape, repeat: int) -> float:
    return s.object_bytes / time_calls(fns, repeat=repeat) / 1e9


def bench_memcpy(s: Shape, repeat: int, rotate: int) -> float:
    pairs = [(torch.randn(s.object_bytes // 4).view(torch.uint8), torch.empty(s.object_bytes, dtype=torch.uint8)) for _ in range(rotate)]
    return _gbps([lambda src=src, dst=dst: dst.copy_(src) for src, dst in pairs], s, repeat)


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
    p.add_argument("--formats", nargs="*", choices=sorted(FORMATS), default=None, help="default: all")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.add_argument("--plot", type=Path, default=RESULTS_DIR / "kernels.png")
    a = p.parse_args(argv)
    shape = Shape(a.layers, a.heads, a.head_size, a.tokens, a.slots, a.block_size, DTYPES[a.dtype])
    names = a.formats or list(FORMATS)
    gen = torch.Generator().manual_seed(0)

    print(
        f"chunk: {a.dtype}, {a.layers} layers, {a.heads} heads x {a.head_size}, {a.tokens} tokens "
        f"({shape.object_bytes / 2**20:.1f} MiB), paged buffer {a.slots} slots in blocks of {a.block_size}; "
        f"cycling {a.rotate} chunk(s); torch threads {torch.get_num_threads()}"
    )
    rotate = max(1, a.rotate)
    memcpy = bench_memcpy(shape, a.repeat, rotate)
    results = {}
    for name in tqdm(names, desc="formats", file=sys.stderr):
        results[name] = bench_format(FORMATS[name], shape, a.repeat, rotate, gen)

    rows = []
    for name, per_dir in results.items():
        for direction, r in per_dir.items():
            up = r["upstream"]
            rows.append([name, direction, r["ours"], r["ours-torch"], up, memcpy, r["ours"] / memcpy, r["ours"] / up if up else None])
    print(format_table(["format", "op", "ours GB/s", "ours-torch GB/s", "upstream GB/s", "memcpy GB/s", "ours/memcpy", "ours/upstream"], rows))

    plot = bar_chart(
        a.plot,
        f"paged KV <-> memory object, {a.tokens} tokens, {a.layers} layers ({a.dtype})",
        [f"{n}\n{d}" for n in results for d in results[n]],
        {
            "ours (C++)": [r["ours"] for n in results for r in results[n].values()],
            "ours (torch path)": [r["ours-torch"] for n in results for r in results[n].values()],
            "upstream torch baseline": [r["upstream"] for n in results for r in results[n].values()],
            "memcpy": [memcpy for n in results for _ in results[n]],
        },
        "GB/s",
    )
    if plot:
        print(f"plot: {plot}")

    head = next((n for n in results if FORMATS[n] == HEADLINE), None)
    if a.json and head:
        store, load = results[head]["store"], results[head]["load"]
        print_json_last(
            {
                "format": head,
                "memcpy_gbps": memcpy,
                "store_gbps": store["ours"],
                "load_gbps": load["ours"],
                "upstream_store_gbps": store["upstream"],
                "upstream_load_gbps": load["upstream"],
                "store_vs_memcpy": store["ours"] / memcpy,
                "load_vs_memcpy": load["ours"] / memcpy,
                "store_vs_upstream": store["ours"] / store["upstream"],
                "load_vs_upstream": load["ours"] / load["upstream"],
            }
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
