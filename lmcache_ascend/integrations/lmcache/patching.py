"""Wrapping an upstream method once: the one mechanism the upstream guards share.

``wrap_once(cls, name, wrapper, marker)`` replaces ``cls.name`` by
``wrapper(original)`` (with the original's name, docstring and ``__wrapped__``)
unless the current method already carries ``marker``; it returns whether it
patched. Callers: ``remote_get_guard`` and ``lm_bounds``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def wrap_once(cls: type, name: str, wrapper: Callable[[Any], Any], marker: str) -> bool:
    original = getattr(cls, name)
    if getattr(original, marker, False):
        return False
    wrapped = functools.wraps(original)(wrapper(original))
    setattr(wrapped, marker, True)
    setattr(cls, name, wrapped)
    return True
