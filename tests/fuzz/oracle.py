"""The oracle every fuzzer in this package uses.

A fuzzed call is a valid call with zero or more *faults* applied (see
:mod:`tests.fuzz.faults`). Each fault is either *bad* (the call is now invalid:
it names the arguments an error may be reported under) or *benign* (a different
but valid way to pass the same thing: int32 slots, a strided slot view, a
tensor at a storage offset, an enum instead of an int...). The contract checked:

- a call with a bad fault raises ``ValueError`` or ``TypeError`` whose message
  names one of the faulty arguments (starts with it for the ops, the package's
  convention; contains it for the connectors), and every byte of every tensor
  the call could reach (whole storages, not only the views) is unchanged;
- a call with only benign faults succeeds, and the caller then compares the
  result with a plain-indexing reference.

Any other exception (``RuntimeError``, ``IndexError``, a segfault, a hang) fails
the test. There is no timing assertion anywhere: a hang is left to CI's timeout.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import HealthCheck, event, settings

# Budget: the whole directory runs in well under two minutes on two cores.
# LMCACHE_ASCEND_FUZZ_EXAMPLES=4000 (for instance) fuzzes deeper, by hand or in a nightly job.
EXAMPLES = int(os.environ.get("LMCACHE_ASCEND_FUZZ_EXAMPLES", "400"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ_SMALL = settings(FUZZ, max_examples=max(1, EXAMPLES // 7))


@dataclass
class Call:
    """Keyword arguments of one op call, and what the faults did to them.

    Faults that rewrite an argument's *content* (one slot, one pointer) add to
    what is wrong with it; faults that *replace* an argument (:meth:`set`)
    supersede earlier faults on that argument.
    """

    kwargs: dict[str, Any]
    applied: list[str] = field(default_factory=list)
    # Tensors that must stay untouched whatever happens (padding around views).
    guards: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    # Facts about the valid call that faults consult (format, form, sizes).
    ctx: dict[str, Any] = field(default_factory=dict)
    _bad: dict[str, set[str]] = field(default_factory=dict)

    @property
    def bad(self) -> set[str]:
        """Argument names an error may be reported under; empty when the call is valid."""
        return set().union(*self._bad.values())

    def mark_bad(self, fault: str, *names: str) -> None:
        self.applied.append(fault)
        self._bad[f"#{len(self.applied)}"] = set(names)

    def mark_benign(self, fault: str) -> None:
        self.applied.append(fault)

    def set(self, arg: str, value: object, fault: str, bad: tuple[str, ...] = ()) -> None:
        """Replace ``arg``; ``bad`` names the arguments an error may then name."""
        self.kwargs[arg] = value
        self.applied.append(fault)
        self._bad.pop(arg, None)
        if bad:
            self._bad[arg] = set(bad)

    def bad_for(self, arg: str) -> tuple[str, ...]:
        """Names a fault that replaced ``arg`` registered (to keep when replacing it again)."""
        return tuple(sorted(self._bad.get(arg, ())))

    def guard(self, t: torch.Tensor) -> None:
        self.guards.append((t, t.detach().clone()))

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # hypothesis' printer
        p.text(repr(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={describe(v)}" for k, v in self.kwargs.items())
        return f"Call(faults={self.applied}, bad={sorted(self.bad)}, ctx={self.ctx}, {args})"


def describe(value: object) -> str:
    """Short text for an argument: shapes and dtypes, not tensor contents."""
    if isinstance(value, torch.Tensor):
        small = value.numel() <= 16 and value.device.type != "meta" and not value.dtype.is_floating_point
        content = f" {value.tolist()}" if small else ""
        return f"{value.dtype}{list(value.shape)}@{value.device}/stride{list(value.stride())}{content}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(describe(v) for v in value[:4])
        return f"{type(value).__name__}[{inner}{', ...' if len(value) > 4 else ''}]"
    return repr(value)


def tensors_in(obj: object) -> list[torch.Tensor]:
    """Every tensor reachable through lists, tuples and dicts."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in tensors_in(item)]
    return []


def _storage_bytes(t: torch.Tensor) -> torch.Tensor:
    storage = t.untyped_storage()
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(storage, 0, (storage.nbytes(),), (1,))


class Snapshot:
    """Copies of the whole storages behind some tensors (each storage once)."""

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        self._items: list[tuple[torch.Tensor, torch.Tensor]] = []
        seen: set[tuple[int, int]] = set()
        for t in tensors:
            if t.device.type == "meta":
                continue  # no bytes to protect
            raw = _storage_bytes(t)
            key = (raw.data_ptr(), raw.numel())
            if key not in seen:
                seen.add(key)
                self._items.append((raw, raw.clone()))

    def assert_unchanged(self, what: str) -> None:
        for i, (raw, before) in enumerate(self._items):
            if not torch.equal(raw, before):
                where = (raw != before).nonzero().flatten()[:4].tolist()
                raise AssertionError(f"{what}: storage {i} ({raw.numel()} bytes) changed at bytes {where}")


def assert_guards(call: Call) -> None:
    for i, (t, before) in enumerate(call.guards):
        assert torch.equal(t, before), f"guard {i} (bytes around a view) was written; faults {call.applied}"


def message_names(message: str, names: Iterable[str], prefix: bool) -> bool:
    return any(message.startswith(n) if prefix else n in message for n in names)


def check_call(
    call: Call,
    run: Callable[[], object],
    protect: Iterable[torch.Tensor],
    *,
    prefix: bool = True,
) -> bool:
    """Run ``run``; enforce the contract above. True when the call succeeded (the
    caller then checks the result), False when it was rightly refused."""
    snap = Snapshot([*protect, *tensors_in(call.kwargs)])
    if not call.bad:
        event("valid call, compared with the reference")
        run()  # any exception here is a failure: the call was valid
        assert_guards(call)
        return True
    event("invalid call, refusal checked")
    try:
        run()
    except (ValueError, TypeError) as exc:
        message = str(exc)
        assert message_names(message, call.bad, prefix), (
            f"{type(exc).__name__} {message!r} does not name any of {sorted(call.bad)} (faults {call.applied})"
        )
        snap.assert_unchanged(f"after refusing faults {call.applied}")
        assert_guards(call)
        return False
    raise AssertionError(f"faults {call.applied} were accepted; expected an error naming one of {sorted(call.bad)}")
