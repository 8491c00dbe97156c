"""``lmcache_ascend/upstream/patching.py``: each write happens once, keeps the original reachable,
and an import-time patch runs right after its target module executes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from lmcache_ascend.upstream import patching


class Target:
    def greet(self, name: str) -> str:
        """Says hello."""
        return f"hello {name}"


def loud(original: Any) -> Any:
    def greet(self: Any, name: str) -> str:
        return original(self, name).upper()

    return greet


def test_wrap_method_wraps_once_and_keeps_the_original() -> None:
    cls = type("Fresh", (Target,), {"greet": Target.greet})
    assert patching.wrap_method(cls, "greet", loud, "_probe_mark") is True
    assert patching.wrap_method(cls, "greet", loud, "_probe_mark") is False  # not HELLO twice over
    assert cls().greet("a") == "HELLO A"
    assert cls.greet.__wrapped__ is Target.greet and cls.greet.__doc__ == "Says hello."
    assert Target().greet("a") == "hello a"  # the class it was copied from is untouched


def test_wrap_instance_method_changes_one_object() -> None:
    one, other = Target(), Target()
    assert patching.wrap_instance_method(one, "greet", lambda orig: lambda name: orig(name) + "!", "_probe_mark")
    assert not patching.wrap_instance_method(one, "greet", lambda orig: lambda name: orig(name) + "!", "_probe_mark")
    assert one.greet("a") == "hello a!" and other.greet("a") == "hello a"


def test_replace_and_add_attribute() -> None:
    module = ModuleType("probe")
    assert patching.replace_attribute(module, "x", 1) is None
    assert patching.replace_attribute(module, "x", 2) == 1 and module.x == 2
    assert patching.add_attribute(module, "x", 3) is False and module.x == 2
    assert patching.add_attribute(module, "y", 4) is True and module.y == 4


def test_register_entry() -> None:
    registry: dict[str, int] = {"a": 1}
    patching.register_entry(registry, "b", 2)
    assert registry == {"a": 1, "b": 2}


@pytest.fixture
def probe_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = "lmcache_ascend_probe_target"
    (tmp_path / f"{name}.py").write_text("VALUE = 'upstream'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    yield name
    sys.modules.pop(name, None)


def test_patch_on_import_runs_after_the_module_executes(probe_module: str) -> None:
    seen: list[str] = []

    def apply(module: ModuleType) -> None:
        seen.append(module.VALUE)
        patching.replace_attribute(module, "VALUE", "patched")

    patching.patch_on_import(probe_module, apply)
    patching.patch_on_import(probe_module, apply)  # registered once
    assert seen == []  # not imported yet
    module = __import__(probe_module)
    assert seen == ["upstream"] and module.VALUE == "patched"
    finders = [f for f in sys.meta_path if isinstance(f, patching._PatchOnImport)]
    assert len(finders) == 1 and finders[0].find_spec("json", None) is None


def test_patch_on_import_applies_now_to_a_module_already_imported(probe_module: str) -> None:
    module = __import__(probe_module)
    patching.patch_on_import(probe_module, lambda m: patching.replace_attribute(m, "VALUE", "now"))
    assert module.VALUE == "now"
