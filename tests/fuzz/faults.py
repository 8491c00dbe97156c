"""Fault catalogues shared by the fuzzers.

A :class:`Fault` rewrites one or more arguments of a valid :class:`~tests.fuzz.oracle.Call`
and records whether the result is still valid (benign) or which arguments an
error may name (bad). Faults are drawn with hypothesis, so failures shrink to
the smallest set of faults and values.

Value pools here are the malformed scalars every op must refuse: negative and
non-int counts, booleans (``True`` is an ``int`` subclass, never a size),
floats, strings, ``None``, unknown enum values. Slot faults cover the slot
semantics of every slot op: an out-of-range slot is an error only at a token
that is actually moved (``index >= skip``), a negative slot is always "skip
this token", and the slot tensor must be a 1-D int32/int64 tensor of exactly
one entry per token (any strides, any storage offset).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from tests.fuzz.oracle import Call

Apply = Callable[[st.DrawFn, Call], None]
Applies = Callable[[Call], bool]

INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Fault:
    name: str
    apply: Apply
    when: Applies = lambda call: True


def apply_faults(draw: st.DrawFn, call: Call, catalogue: Sequence[Fault], max_faults: int = 2) -> Call:
    """Apply 0..``max_faults`` distinct faults from ``catalogue`` in catalogue order
    (about one call in five stays fault-free, to exercise the success path)."""
    count = draw(st.sampled_from([0] + [n for n in range(1, max_faults + 1) for _ in range(2)]))
    picked = draw(st.lists(st.sampled_from(range(len(catalogue))), min_size=count, max_size=count, unique=True))
    for index in sorted(picked):
        fault = catalogue[index]
        if fault.when(call):
            fault.apply(draw, call)
    return call


def bad_count(minimum: int = 0) -> st.SearchStrategy[object]:
    """Values ``check_int(value, name, minimum)`` must refuse."""
    return st.one_of(
        st.integers(min_value=-(2**63), max_value=minimum - 1),
        st.sampled_from([True, False, 1.5, float("nan"), "3", None, b"1", [1]]),
    )


BAD_DIRECTIONS: tuple[object, ...] = (2, 3, -1, 2**40, 1.0, "1", None, True, [0])
BAD_FORMATS: tuple[object, ...] = (99, 14, 19, 20, 102, -1, 2**63, 1.5, "1", None, False, (1,))
BAD_DEVICES: tuple[object, ...] = ("bogus", "meta", "cuda:0", None, 3.5, True, ["cpu"], "cpu:x")


def bad_scalar(name: str, values: st.SearchStrategy[object]) -> Fault:
    def apply(draw: st.DrawFn, call: Call) -> None:
        value = draw(values)
        call.set(name, value, f"{name}={value!r}", (name,))

    return Fault(f"bad-{name}", apply)


def benign_value(name: str, make: Callable[[Call], object]) -> Fault:
    """A different spelling of a valid value (applied before any bad fault on ``name``)."""

    def apply(draw: st.DrawFn, call: Call) -> None:
        value = make(call)
        call.set(name, value, f"{name}={value!r}")

    return Fault(f"benign-{name}", apply)


# ------------------------------------------------------------------ slots
#
# Slot faults read three facts from ``call.kwargs`` under the names given:
# the slot tensor, and the number of tokens moved before it is skipped.


@dataclass(frozen=True)
class SlotInfo:
    """Where a call keeps its slot tensor and skip count, and the slot range."""

    arg: str
    skip: Callable[[Call], int]
    num_slots: Callable[[Call], int]


def _slots(call: Call, info: SlotInfo) -> torch.Tensor | None:
    s = call.kwargs.get(info.arg)
    ok = isinstance(s, torch.Tensor) and s.dim() == 1 and s.dtype in (torch.int32, torch.int64) and s.device.type == "cpu"
    return s if ok else None


def _set_slot(draw: st.DrawFn, call: Call, info: SlotInfo, values: st.SearchStrategy[int], moved_only: bool) -> int:
    """Write one drawn value at a drawn index; returns the index (-1 if none)."""
    s = _slots(call, info)
    if s is None or s.numel() == 0:
        return -1
    i = draw(st.integers(0, s.numel() - 1))
    limit = INT32_MAX if s.dtype == torch.int32 else 2**63 - 1
    value = max(-limit - 1, min(limit, draw(values)))
    s = s.clone()
    s[i] = value
    call.kwargs[info.arg] = s
    return i


def slot_faults(info: SlotInfo) -> list[Fault]:
    a = info.arg

    def out_of_range(draw: st.DrawFn, call: Call) -> None:
        n = info.num_slots(call)
        i = _set_slot(draw, call, info, st.one_of(st.integers(n, n + 4), st.sampled_from([INT32_MAX, 2**40, 2**63 - 1])), True)
        if i < 0:
            return
        if i >= info.skip(call):
            call.mark_bad(f"{a}[{i}] out of range", a)
        else:
            call.mark_benign(f"{a}[{i}] out of range inside the skipped prefix")

    def negative(draw: st.DrawFn, call: Call) -> None:
        values = st.one_of(st.integers(-4, -1), st.sampled_from([-(2**31), -(2**40), -(2**63)]))
        if _set_slot(draw, call, info, values, False) >= 0:
            call.mark_benign(f"{a} negative entry")

    def length(draw: st.DrawFn, call: Call) -> None:
        s = _slots(call, info)
        if s is None:
            return
        delta = draw(st.sampled_from([-3, -1, 1, 2]))
        n = max(0, s.numel() + delta)
        if n == s.numel():
            return
        call.kwargs[a] = s[:n].clone() if n < s.numel() else torch.cat([s, torch.full((n - s.numel(),), -1, dtype=s.dtype)])
        call.mark_bad(f"{a} length {s.numel()} -> {n}", a)

    def dtype(draw: st.DrawFn, call: Call) -> None:
        s = _slots(call, info)
        if s is None:
            return
        d = draw(st.sampled_from([torch.int16, torch.uint8, torch.float32, torch.float64, torch.bool, torch.uint64]))
        call.kwargs[a] = s.to(d)
        call.mark_bad(f"{a} dtype {d}", a)

    def int32(draw: st.DrawFn, call: Call) -> None:
        s = _slots(call, info)
        if s is None or (s.numel() and int(s.abs().max()) > INT32_MAX):
            return
        call.kwargs[a] = s.to(torch.int32)
        call.mark_benign(f"{a} int32")

    def strided(draw: st.DrawFn, call: Call) -> None:
        s = _slots(call, info)
        if s is None:
            return
        step = draw(st.integers(2, 3))
        # the gaps hold an out-of-range slot: an op that read them would refuse the call
        wide = torch.full((s.numel() * step + 1,), INT32_MAX, dtype=s.dtype)
        wide[1::step][: s.numel()] = s
        call.kwargs[a] = wide[1::step][: s.numel()]
        call.mark_benign(f"{a} strided view")

    def wrong_rank(draw: st.DrawFn, call: Call) -> None:
        s = _slots(call, info)
        if s is None:
            return
        call.kwargs[a] = s.reshape(1, -1) if draw(st.booleans()) or s.numel() != 1 else s.reshape(())
        call.mark_bad(f"{a} rank {call.kwargs[a].dim()}", a)

    def not_a_tensor(draw: st.DrawFn, call: Call) -> None:
        s = _slots(call, info)
        kind = draw(st.sampled_from(["list", "none", "meta"])) if s is not None else "none"
        if kind == "list":
            call.kwargs[a] = s.tolist()  # type: ignore[union-attr]
        else:
            call.kwargs[a] = s.to("meta") if kind == "meta" else None  # type: ignore[union-attr]
        call.mark_bad(f"{a} as {kind}", a)

    return [
        Fault(f"{a}-int32", int32),
        Fault(f"{a}-negative", negative),
        Fault(f"{a}-out-of-range", out_of_range),
        Fault(f"{a}-length", length),
        Fault(f"{a}-dtype", dtype),
        Fault(f"{a}-strided", strided),
        Fault(f"{a}-rank", wrong_rank),
        Fault(f"{a}-not-a-tensor", not_a_tensor),
    ]


def reference_slots(value: object) -> torch.Tensor:
    """The slot tensor of a valid call as the reference wants it (int64, dense)."""
    assert isinstance(value, torch.Tensor)
    return value.to(torch.int64).contiguous()


# ---------------------------------------------------------------- tensors


def padded_copy(t: torch.Tensor, call: Call, draw: st.DrawFn) -> torch.Tensor:
    """A copy of ``t`` that lives at a storage offset inside a larger buffer; the
    padding on both sides is guarded (a write there fails the test)."""
    front = draw(st.integers(1, 9))
    back = draw(st.integers(0, 9))
    n = t.numel()
    base = torch.empty(front + n + back, dtype=t.dtype)
    base.view(torch.uint8).fill_(0x5A)
    view = base[front : front + n].view(t.shape)
    view.copy_(t)
    call.guard(base[:front])
    call.guard(base[front + n :])
    return view


def strided_copy(t: torch.Tensor) -> torch.Tensor:
    """Same values, not contiguous (every other element of a wider buffer)."""
    if t.dim() == 0:
        return t
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    out = wide[..., ::2]
    out.copy_(t)
    return out
