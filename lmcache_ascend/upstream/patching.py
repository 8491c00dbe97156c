"""The only code that writes into another project's classes, modules and registries.

Every touch-point (listed with its target, reason, upstream version and pin test
in :mod:`lmcache_ascend.upstream`) is a named function in its own module that
calls one of these; ``tests/upstream/test_seam.py`` fails when code outside this
package calls ``setattr`` or assigns to an attribute of an imported upstream name.

- :func:`wrap_method`: ``cls.name = make(original)``, once (a marker on the new
  function makes a second call a no-op); the original stays reachable as
  ``__wrapped__``.
- :func:`wrap_instance_method`: the same for one object's bound method.
- :func:`replace_attribute`: ``owner.name = value``, returning what was there.
- :func:`add_attribute`: ``owner.name = value`` only where ``owner`` has none.
- :func:`register_entry`: ``registry[key] = value`` in an upstream registry.
- :func:`patch_on_import`: run ``apply(module)`` right after ``module_name``
  executes (or now, if it already has), for targets imported after us.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, MutableMapping, Sequence
from types import ModuleType
from typing import Any

_MISSING = object()


def wrap_method(cls: type, name: str, make: Callable[[Any], Any], marker: str) -> bool:
    """Replace ``cls.name`` by ``make(original)`` unless already done; True if patched now."""
    original = getattr(cls, name)
    if getattr(original, marker, False):
        return False
    wrapped = functools.wraps(original)(make(original))
    setattr(wrapped, marker, True)
    setattr(cls, name, wrapped)
    return True


def wrap_instance_method(obj: object, name: str, make: Callable[[Any], Any], marker: str) -> bool:
    """Replace ``obj.name`` (a bound method) by ``make(original)`` on this object only, once."""
    original = getattr(obj, name)
    if getattr(original, marker, False):
        return False
    wrapped = make(original)
    setattr(wrapped, marker, True)
    setattr(obj, name, wrapped)
    return True


def replace_attribute(owner: object, name: str, value: Any) -> Any:
    """Set ``owner.name``; returns the previous value."""
    previous = getattr(owner, name, _MISSING)
    setattr(owner, name, value)
    return None if previous is _MISSING else previous


def add_attribute(owner: object, name: str, value: Any) -> bool:
    """Set ``owner.name`` where it does not exist yet; True if set now."""
    if hasattr(owner, name):
        return False
    setattr(owner, name, value)
    return True


def register_entry(registry: MutableMapping[Any, Any], key: Any, value: Any) -> None:
    """``registry[key] = value`` in a registry upstream keeps for itself."""
    registry[key] = value


def patch_on_import(module_name: str, apply: Callable[[ModuleType], Any]) -> None:
    """``apply(module)`` right after ``module_name`` is executed; now as well if it already was."""
    finder = next((f for f in sys.meta_path if isinstance(f, _PatchOnImport)), None)
    if finder is None:
        finder = _PatchOnImport()
        sys.meta_path.insert(0, finder)
    if apply not in finder.patches.setdefault(module_name, []):
        finder.patches[module_name].append(apply)
    module = sys.modules.get(module_name)
    if module is not None:
        apply(module)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """One finder for every import-time patch: wraps the target's own loader."""

    def __init__(self) -> None:
        self.patches: dict[str, list[Callable[[ModuleType], Any]]] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        applies = self.patches.get(fullname)
        if not applies:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader, tuple(applies))
        return spec


class _PatchingLoader(importlib.abc.Loader):
    """The target's own loader, then each patch."""

    def __init__(self, inner: importlib.abc.Loader, applies: tuple[Callable[[ModuleType], Any], ...]) -> None:
        self._inner = inner
        self._applies = applies

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        for apply in self._applies:
            apply(module)
