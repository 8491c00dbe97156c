"""Faults on the tensor arguments of the slot ops: the memory object and the paged side.

The paged side comes in two forms (``call.ctx["form"]``):

- ``"ptr"``: an int64 table of base addresses. Addresses cannot be checked
  beyond their count, null and sign, so only those faults are drawn here; a
  table whose addresses point at buffers smaller than the scalars describe is
  outside what any op can detect (documented in ``test_fuzz_slot_ops``).
- tensors (a list, per-layer tuples, ``[[K layers], [V layers]]``...): every
  leaf is checked against the geometry, so shape, dtype, density, device and
  count faults are drawn on a random leaf.

Faults that change the geometry the op infers (object row width, object
dtype, a larger block stride) are drawn only in tensor form, where the tensors
make them detectable.

``call.ctx`` keys read here: ``form``, ``fmt``, ``kv_planes_ok`` (object K/V
plane counts that are valid) and ``kv_axis`` (the object's K/V axis; None for
MLA objects, which have none), ``lone_paged_tensor`` (the paged side is one
tensor that alone defines the geometry), ``object_arg`` and ``paged_arg``
(argument names).
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st

from tests.fuzz.faults import Fault, padded_copy, strided_copy
from tests.fuzz.oracle import Call

Path = tuple[int, ...]
PLANE_TUPLES = 17


def leaves(node: object, path: Path = ()) -> list[Path]:
    """Paths to every non-list item of a nested list/tuple structure."""
    if isinstance(node, (list, tuple)):
        return [p for i, item in enumerate(node) for p in leaves(item, (*path, i))]
    return [path]


def get_leaf(node: Any, path: Path) -> Any:
    for i in path:
        node = node[i]
    return node


def replace_leaf(node: Any, path: Path, new: object) -> Any:
    """A copy of the structure (same list/tuple types) with one leaf replaced."""
    if not path:
        return new
    items = list(node)
    items[path[0]] = replace_leaf(items[path[0]], path[1:], new)
    return type(node)(items) if isinstance(node, tuple) else items


def drop_leaf(node: Any, path: Path) -> Any:
    if len(path) == 1:
        items = [x for i, x in enumerate(node) if i != path[0]]
        return tuple(items) if isinstance(node, tuple) else items
    items = list(node)
    items[path[0]] = drop_leaf(items[path[0]], path[1:])
    return type(node)(items) if isinstance(node, tuple) else items


def _other_dtype(dtype: torch.dtype, draw: st.DrawFn, avoid: object = None) -> torch.dtype:
    """A dtype other than ``dtype`` (and than ``avoid``'s, when it is a tensor:
    two dtype faults landing on the same dtype would make a consistent call)."""
    taken = {dtype, avoid.dtype if isinstance(avoid, torch.Tensor) else None}
    choices = [d for d in (torch.float16, torch.bfloat16, torch.float32, torch.int8, torch.float64) if d not in taken]
    return draw(st.sampled_from(choices))


# ------------------------------------------------------------ memory object


def object_faults() -> list[Fault]:
    def name(call: Call) -> str:
        return call.ctx.get("object_arg", "key_value")

    def obj(call: Call) -> torch.Tensor:
        return call.kwargs[name(call)]

    def is_tensor(call: Call) -> bool:
        return isinstance(call.kwargs.get(name(call)), torch.Tensor)

    def tensor_form(call: Call) -> bool:
        return is_tensor(call) and call.ctx["form"] != "ptr"

    def rank(draw: st.DrawFn, call: Call) -> None:
        t = obj(call)
        call.kwargs[name(call)] = t.flatten(0, 1) if draw(st.booleans()) and t.dim() > 1 else t.unsqueeze(0)
        call.mark_bad(f"{name(call)} rank", name(call))

    def planes(draw: st.DrawFn, call: Call) -> None:
        t = obj(call)
        axis = call.ctx.get("kv_axis", 0)
        if axis is None or axis >= t.dim():
            return
        k = draw(st.sampled_from([n for n in (1, 2, 3) if n not in call.ctx["kv_planes_ok"]]))
        shape = list(t.shape)
        shape[axis] = k
        call.kwargs[name(call)] = torch.zeros(shape, dtype=t.dtype)
        call.mark_bad(f"{name(call)} with {k} K/V planes", name(call))

    def row(draw: st.DrawFn, call: Call) -> None:
        t = obj(call)
        width = max(1, t.shape[-1] + draw(st.sampled_from([-1, 1, 16])))
        if width == t.shape[-1]:
            return
        call.kwargs[name(call)] = torch.zeros(*t.shape[:-1], width, dtype=t.dtype)
        call.ctx["row_changed"] = True
        # where heads matter, the row is checked against head_size and blamed on it
        call.mark_bad(f"{name(call)} row {t.shape[-1]} -> {width}", name(call), "head_size")

    def dtype(draw: st.DrawFn, call: Call) -> None:
        t = obj(call)
        call.kwargs[name(call)] = t.to(_other_dtype(t.dtype, draw))
        call.mark_bad(f"{name(call)} dtype", name(call), call.ctx["paged_arg"])

    def strided(draw: st.DrawFn, call: Call) -> None:
        t = strided_copy(obj(call))
        call.kwargs[name(call)] = t
        if t.is_contiguous():
            call.mark_benign(f"{name(call)} strided but dense")
        else:
            call.mark_bad(f"{name(call)} non-contiguous", name(call))

    def padded(draw: st.DrawFn, call: Call) -> None:
        call.kwargs[name(call)] = padded_copy(obj(call), call, draw)
        call.mark_benign(f"{name(call)} at a storage offset")

    def requires_grad(draw: st.DrawFn, call: Call) -> None:
        t = obj(call)
        if t.dtype.is_floating_point:
            call.kwargs[name(call)] = t.clone().requires_grad_()
            call.mark_benign(f"{name(call)} requires grad")

    def not_a_tensor(draw: st.DrawFn, call: Call) -> None:
        kind = draw(st.sampled_from(["list", "none", "meta", "numpy"]))
        t = obj(call)
        new: object = {"list": t.tolist, "none": lambda: None, "meta": lambda: t.to("meta"), "numpy": lambda: t.detach().float().numpy()}[kind]()
        call.kwargs[name(call)] = new
        call.mark_bad(f"{name(call)} as {kind}", name(call))

    # Benign re-placements first: a later fault then acts on the moved tensor.
    return [
        Fault("object-padded", padded, is_tensor),
        Fault("object-requires-grad", requires_grad, is_tensor),
        Fault("object-rank", rank, is_tensor),
        Fault("object-planes", planes, is_tensor),
        Fault("object-row", row, tensor_form),
        Fault("object-dtype", dtype, tensor_form),
        Fault("object-strided", strided, is_tensor),
        Fault("object-not-a-tensor", not_a_tensor, is_tensor),
    ]


# ------------------------------------------------------------- paged side


def paged_faults() -> list[Fault]:
    def name(call: Call) -> str:
        return call.ctx.get("paged_arg", "key_value_ptrs")

    def is_table(call: Call) -> bool:
        p = call.kwargs.get(name(call))
        return isinstance(p, torch.Tensor) and p.dtype == torch.int64 and p.dim() == 1 and call.ctx["form"] == "ptr"

    def is_tensors(call: Call) -> bool:
        return call.ctx["form"] != "ptr" and bool(leaves(call.kwargs.get(name(call))))

    def table(kind: str) -> Fault:
        def apply(draw: st.DrawFn, call: Call) -> None:
            p = call.kwargs[name(call)]
            if p.numel() == 0:
                return  # an earlier fault already cut the table to nothing
            i = draw(st.integers(0, p.numel() - 1))
            if kind == "short":
                new: object = p[: draw(st.integers(0, p.numel() - 1))]
                call.ctx["table_cut"] = True
            elif kind == "long" and call.ctx.get("table_cut"):
                return  # one pointer more may restore the count just cut
            elif kind in ("null", "negative"):
                new = p.clone()
                new[i] = 0 if kind == "null" else -int(p[i])  # type: ignore[index]
            elif kind == "long":
                new = torch.cat([p, p[:1]])
            else:
                conv = {"2d": lambda: p.reshape(1, -1), "list": p.tolist, "meta": lambda: p.to("meta"), "uint64": lambda: p.to(torch.uint64)}
                new = conv[kind]()
            call.kwargs[name(call)] = new
            if kind in ("long", "uint64"):
                call.mark_benign(f"pointer table {kind}")
            else:
                call.mark_bad(f"pointer table {kind}", name(call))

        return Fault(f"pointer-table-{kind}", apply, is_table)

    def leaf(kind: str) -> Fault:
        def apply(draw: st.DrawFn, call: Call) -> None:
            arg = call.kwargs[name(call)]
            paths = leaves(arg)
            path = paths[0] if kind == "dtype" and call.ctx["fmt"] == PLANE_TUPLES else draw(st.sampled_from(paths))
            t = get_leaf(arg, path)
            names = {name(call)}
            if not isinstance(t, torch.Tensor):
                return
            if kind == "drop":
                new = drop_leaf(arg, path) if len(path) else []
                call.ctx["dropped_leaf"] = True
            elif kind == "extra":
                if call.ctx.get("dropped_leaf"):
                    return  # one dropped and one added buffer may well make a valid call
                new = [*arg, t] if isinstance(arg, (list, tuple)) else [arg, t]
            elif kind == "shape":
                # A lone paged tensor defines the geometry: only its last axis
                # (the row) is checked against the object; other axes just
                # describe a different, valid cache.
                lone = call.ctx.get("lone_paged_tensor", False)
                if call.ctx.get("row_changed"):
                    # a wider row on both sides may agree again: the row spans the paged tensor's
                    # trailing axes (heads and head size, or NZ pieces), whichever one grows
                    return
                if call.ctx.get("page_buffer_size_changed"):
                    return  # one more slot on both sides may agree again
                dim = t.dim() - 1 if lone else draw(st.integers(0, t.dim() - 1))
                shape = list(t.shape)
                shape[dim] += 1
                new = replace_leaf(arg, path, torch.zeros(shape, dtype=t.dtype))
                call.ctx["paged_shape_changed"] = True
                # the first buffer defines the geometry the scalars are checked against
                names |= {call.ctx["object_arg"], "page_buffer_size", "block_size"}
            elif kind == "dtype":
                avoid = call.kwargs.get(call.ctx["object_arg"])
                new = replace_leaf(arg, path, t.to(_other_dtype(t.dtype, draw, avoid)))
                names.add(call.ctx["object_arg"])
            elif kind == "strided":
                s = strided_copy(t)
                if s.is_contiguous():
                    return
                new = replace_leaf(arg, path, s)
            else:
                new = replace_leaf(arg, path, {"int": 12345, "none": None, "meta": t.to("meta")}[kind])
            if not any(isinstance(get_leaf(new, p), torch.Tensor) for p in leaves(new)):
                # no tensor left to read the geometry from (the last one dropped, or a lone
                # tensor made an int or None): the op judges the scalars first, as for a
                # pointer table (either fault order)
                names |= {"block_size", "head_size", "page_buffer_size"}
            call.kwargs[name(call)] = new
            call.mark_bad(f"paged leaf {path} {kind}", *names)

        return Fault(f"paged-leaf-{kind}", apply, is_tensors)

    def container(draw: st.DrawFn, call: Call) -> None:
        # Without tensors the op reads the geometry off the scalars first, as for a pointer table.
        names = (name(call), "block_size", "head_size", "page_buffer_size")
        call.set(name(call), draw(st.sampled_from([{}, "tensors", 7, None, set()])), "paged argument of the wrong kind", names)

    return [
        *(table(k) for k in ("short", "null", "negative", "2d", "list", "meta", "long", "uint64")),
        *(leaf(k) for k in ("drop", "shape", "dtype", "strided", "int", "none", "meta", "extra")),
        Fault("paged-container", container),
    ]
