"""``lmcache_ascend/_kvcore.pyi`` (what mypy checks callers against) matches the built native core.

pybind11 writes each function's signature as the first line of its docstring;
the stub must name the same functions with the same parameters in the same
order, so a binding added, removed or renamed in ``csrc/bindings.cpp`` fails
here until the stub follows.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from lmcache_ascend import _kvcore

STUB = Path(__file__).resolve().parents[2] / "lmcache_ascend" / "_kvcore.pyi"


def stub_functions() -> dict[str, list[str]]:
    tree = ast.parse(STUB.read_text())
    return {n.name: [a.arg for a in n.args.args] for n in tree.body if isinstance(n, ast.FunctionDef)}


def stub_constants() -> set[str]:
    tree = ast.parse(STUB.read_text())
    return {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def native_parameters(name: str) -> list[str]:
    first_line = (getattr(_kvcore, name).__doc__ or "").splitlines()[0]
    match = re.fullmatch(rf"{name}\((.*)\) -> .*", first_line)
    assert match, f"{name}: no pybind11 signature in its docstring: {first_line!r}"
    params = match.group(1)
    return [p.split(":")[0].strip() for p in re.split(r",\s*(?![^\[]*\])", params) if p.strip()]


def test_stub_names_every_native_function_and_constant() -> None:
    public = {n for n in dir(_kvcore) if not n.startswith("_")}
    functions = {n for n in public if callable(getattr(_kvcore, n))}
    assert set(stub_functions()) == functions
    assert stub_constants() == public - functions


def test_stub_parameters_match_the_bindings() -> None:
    for name, params in stub_functions().items():
        assert params == native_parameters(name), name
