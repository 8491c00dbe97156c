"""Faults on the scalar arguments of ``multi_layer_kv_transfer`` and its relatives.

Each fault knows which ``call.ctx`` facts make a value valid or not:
``fmt``, ``form`` (``"ptr"`` or tensors), ``num_slots``, ``num_tokens``,
``nb_first`` (the format's block axis is outermost), ``tight_block_stride``
(elements of one block), ``block_matters`` (the buffer is not blocks laid end
to end, so the block size changes addresses).
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from lmcache.lmcache_native import EngineKVFormat, TransferDirection

from tests.fuzz.faults import BAD_DEVICES, BAD_DIRECTIONS, BAD_FORMATS, Fault, bad_count, bad_scalar, benign_value
from tests.fuzz.oracle import Call
from tests.kernels.reference import MLA_FORMATS


def direction_faults(arg: str = "direction") -> list[Fault]:
    return [
        benign_value(arg, lambda call: TransferDirection(int(call.kwargs[arg]))),
        bad_scalar(arg, st.sampled_from(BAD_DIRECTIONS)),
    ]


def format_faults(arg: str = "engine_kv_format") -> list[Fault]:
    return [
        benign_value(arg, lambda call: EngineKVFormat(int(call.kwargs[arg]))),
        bad_scalar(arg, st.sampled_from(BAD_FORMATS)),
    ]


def device_faults(arg: str) -> list[Fault]:
    return [
        benign_value(arg, lambda call: "cpu:0" if isinstance(call.kwargs[arg], torch.device) else torch.device("cpu")),
        bad_scalar(arg, st.sampled_from(BAD_DEVICES)),
    ]


def _tensor_form(call: Call) -> bool:
    return call.ctx["form"] != "ptr"


def page_buffer_size_faults() -> list[Fault]:
    def mismatch(draw: st.DrawFn, call: Call) -> None:
        n = call.ctx["num_slots"]
        if call.ctx.get("paged_shape_changed"):
            return  # a resized paged buffer and a matching page_buffer_size make a valid call
        value = draw(st.sampled_from([n + 1, n * 2, max(1, n - 1)]))
        if value != n:
            call.ctx["page_buffer_size_changed"] = True
            call.set("page_buffer_size", value, f"page_buffer_size {n} -> {value}", ("page_buffer_size", "block_size"))

    def bad(draw: st.DrawFn, call: Call) -> None:
        # LMCache's CUDA kernel ignores page_buffer_size for MLA, and 0 is accepted
        # there when the paged tensors give the slot count (not from a pointer table).
        minimum = 0 if call.ctx["fmt"] in MLA_FORMATS and _tensor_form(call) else 1
        value = draw(bad_count(minimum))
        call.set("page_buffer_size", value, f"page_buffer_size={value!r}", ("page_buffer_size",))

    return [Fault("bad-page_buffer_size", bad), Fault("page-buffer-size-mismatch", mismatch, _tensor_form)]


def block_size_faults() -> list[Fault]:
    def zero(draw: st.DrawFn, call: Call) -> None:
        bad = call.ctx["form"] == "ptr" and call.ctx["block_matters"]
        call.set("block_size", 0, "block_size 0", ("block_size",) if bad else ())

    return [Fault("block-size-zero", zero), bad_scalar("block_size", bad_count(0))]


def skip_faults(arg: str = "skip_prefix_n_tokens") -> list[Fault]:
    def past_end(draw: st.DrawFn, call: Call) -> None:
        call.set(arg, call.ctx["num_tokens"] + draw(st.integers(0, 3)), f"{arg} past the last token")

    return [Fault(f"{arg}-past-end", past_end), bad_scalar(arg, bad_count(0))]


def block_stride_faults() -> list[Fault]:
    arg = "block_stride_elems"

    def wrong_format(draw: st.DrawFn, call: Call) -> None:
        value = draw(st.integers(1, 4096))
        if value == call.ctx.get("plane_block_stride"):
            value += 1  # plane tuples accept plane 0's own block stride
        call.set(arg, value, f"{arg} on a format whose blocks are not outermost", (arg,))

    def smaller(draw: st.DrawFn, call: Call) -> None:
        tight = call.ctx["tight_block_stride"]
        if tight > 1:
            call.set(arg, draw(st.integers(1, tight - 1)), f"{arg} smaller than a block", (arg, call.ctx["paged_arg"]))

    def tight(draw: st.DrawFn, call: Call) -> None:
        # A pointer table with block_size 0 is read as one block of the whole
        # buffer: the engine's real (smaller) block stride then contradicts it.
        ambiguous = call.ctx["form"] == "ptr" and call.kwargs.get("block_size") == 0 and call.ctx["num_blocks"] > 1
        call.set(arg, call.ctx["tight_block_stride"], f"{arg} = one block", (arg, "block_size") if ambiguous else ())

    def larger(draw: st.DrawFn, call: Call) -> None:
        # Dense tensors cannot have a wider block stride: reading past a
        # block would run off the end of the last one.
        value = call.ctx["tight_block_stride"] + draw(st.integers(1, 64))
        bad = (arg, call.ctx["paged_arg"]) if call.ctx["num_blocks"] > 1 else ()
        call.set(arg, value, f"{arg} wider than one block", bad)

    def nb_first(call: Call) -> bool:
        return bool(call.ctx["nb_first"])

    return [
        Fault(f"{arg}-tight", tight, nb_first),
        Fault(f"{arg}-larger", larger, lambda call: nb_first(call) and _tensor_form(call)),
        Fault(f"{arg}-smaller", smaller, nb_first),
        Fault(f"{arg}-wrong-format", wrong_format, lambda call: not call.ctx["nb_first"]),
        bad_scalar(arg, bad_count(0)),
    ]
