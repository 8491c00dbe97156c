"""A one-entry cache for "the same engine buffers as last call": what connectors keep per engine.

Serving passes the same KV buffers on every call; describing them (layout
detection, pointer tables) is worth doing once. :class:`LastBuilt` keeps the
value built for the most recent key as one ``(key, value)`` tuple, replaced
whole, so callers on several threads never pair one call's key with another
call's value. A ``None`` key means "cannot be identified": build, do not keep.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LastBuilt(Generic[V]):
    def __init__(self) -> None:
        self._last: tuple[Hashable, V] | None = None

    def get(self, key: Hashable | None, build: Callable[[], V]) -> V:
        """The value for ``key``: the kept one if ``key`` equals the last key, else ``build()`` (kept)."""
        last = self._last
        if key is not None and last is not None and last[0] == key:
            return last[1]
        value = build()
        if key is not None:
            self._last = (key, value)
        return value
