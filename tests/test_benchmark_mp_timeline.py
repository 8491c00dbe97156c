"""``benchmarks/mp_timeline.py`` and its hooks (``benchmarks/engine_trace``): phases from events, wrapping, upstream pins."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import mp_timeline  # noqa: E402
from engine_trace import trace_hooks  # noqa: E402

MS = 1_000_000


def _ev(ev: str, t0: float, t1: float, pid: int = 1, **fields: object) -> dict:
    return {"ev": ev, "pid": pid, "t0": int(t0 * MS), "t1": int(t1 * MS), **fields}


def _mp_request(req: str, at: float, pid_worker: int = 2) -> list[dict]:
    """One warm MP request starting at ``at`` ms: two unanswered lookups, a retrieve, the forward."""
    return [
        _ev("add_request", at, at + 0.1, req=req),
        _ev("step", at + 0.2, at + 2.0, executed=False),
        _ev("lookup", at + 0.3, at + 0.4, req=req, hit=None),
        _ev("lookup", at + 3.0, at + 3.5, req=req, hit=4096),  # answered: lookup phase ends at 3.5
        _ev("step", at + 2.9, at + 22.0, executed=False),
        _ev("retrieve", at + 4.0, at + 21.0, pid=pid_worker, req=req),
        _ev("prepare", at + 4.5, at + 6.5, pid=pid_worker),
        _ev("copy", at + 6.6, at + 19.5, pid=pid_worker),
        _ev("commit", at + 19.6, at + 20.9, pid=pid_worker),
        _ev("step", at + 24.0, at + 60.0, executed=True),
    ]


def _sorted(events: list[dict]) -> list[dict]:
    return sorted(events, key=lambda e: e["t0"])


def test_mp_request_phases_add_up_to_its_ttft() -> None:
    events = _sorted(_mp_request("r1", 100.0))
    t = mp_timeline.request_timeline(events, events[0])
    assert t is not None
    assert t["lookup"] == pytest.approx(3.5)
    assert t["to_load"] == pytest.approx(1.0)  # hit answered at 3.5, prepare starts at 4.5
    assert t["prepare"] == pytest.approx(2.0)
    assert t["copy"] == pytest.approx(13.0)  # prepare's end to the copy's end
    assert t["commit"] == pytest.approx(1.4)
    assert t["to_forward"] == pytest.approx(3.1)
    assert t["forward"] == pytest.approx(36.0)
    assert t["total"] == pytest.approx(60.0)
    assert sum(t[p] for p in mp_timeline.PHASES) == pytest.approx(t["total"])
    assert t["hit"] == 4096


def test_prefix_cache_request_has_no_lookup_or_copy() -> None:
    events = _sorted([_ev("add_request", 10, 10.1, req="p"), _ev("step", 10.5, 45.5, executed=True)])
    t = mp_timeline.request_timeline(events, events[0])
    assert t is not None
    assert [t[p] for p in ("lookup", "to_load", "prepare", "copy", "commit")] == [0.0] * 5
    assert t["to_forward"] == pytest.approx(0.5) and t["forward"] == pytest.approx(35.0)
    assert t["hit"] is None


def test_parts_of_another_process_or_request_are_not_counted() -> None:
    events = _mp_request("r1", 0.0)
    # a prepare of another worker process inside the retrieve's window is not this retrieve's
    events = [e for e in events if e["ev"] != "prepare"] + [_ev("prepare", 4.5, 6.5, pid=99)]
    events = _sorted(events)
    t = mp_timeline.request_timeline(events, events[0])
    assert t is not None
    # without its own prepare the whole retrieve counts as the copy: nothing invented
    assert t["prepare"] == 0.0 and t["commit"] == 0.0
    assert t["to_load"] == pytest.approx(0.5) and t["copy"] == pytest.approx(17.0)
    assert sum(t[p] for p in mp_timeline.PHASES) == pytest.approx(t["total"])


def test_request_that_never_ran_is_left_out_and_warm_are_the_last() -> None:
    events = _mp_request("cold", 0.0) + _mp_request("warm1", 100.0) + _mp_request("warm2", 200.0)
    events.append(_ev("add_request", 300.0, 300.1, req="stuck"))
    events = _sorted(events)
    assert mp_timeline.request_timeline(events, events[-1]) is None
    warm = mp_timeline.warm_timelines(events, 2)
    assert len(warm) == 2 and all(t["total"] == pytest.approx(60.0) for t in warm)
    assert mp_timeline.warm_timelines(events, 5) == mp_timeline.warm_timelines(events, 3)


def test_medians_and_copy_free_ratio() -> None:
    base = {p: 1.0 for p in mp_timeline.PHASES}
    rows = [{**base, "copy": c, "total": 7 + c - 1} for c in (10.0, 14.0, 12.0)]
    m = mp_timeline.medians(rows)
    assert m["copy"] == 12.0 and m["total"] == 18.0 and m["lookup"] == 1.0
    assert mp_timeline.copy_free_ratio({"total": 60.0, "copy": 13.0}, {"total": 100.0, "copy": 50.0}) == pytest.approx(0.47)


def test_load_events_sorts_and_reports_missing_hooks(tmp_path: Path) -> None:
    (tmp_path / "events-2.jsonl").write_text(json.dumps(_ev("copy", 5, 6, pid=2)) + "\n")
    (tmp_path / "events-1.jsonl").write_text("\n".join(json.dumps(e) for e in [
        _ev("step", 7, 8), {"ev": "missing", "hook": "m:C.f"}, _ev("add_request", 1, 2, req="x")]) + "\n\n")
    events, missing = mp_timeline.load_events(tmp_path)
    assert [e["ev"] for e in events] == ["add_request", "copy", "step"]
    assert missing == ["m:C.f"]


# --- the hooks -----------------------------------------------------------------------------------


@pytest.fixture
def fake_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A module ``tl_fake_mod`` on ``sys.path``, not yet imported; the finder is removed afterwards."""
    (tmp_path / "tl_fake_mod.py").write_text(textwrap.dedent("""
        class Engine:
            def step(self, n):
                return {"n": n}, n > 0
            def boom(self):
                raise KeyError("x")
        def scatter(x):
            return x * 2
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tl_fake_mod", raising=False)
    before = list(sys.meta_path)
    yield "tl_fake_mod"
    sys.meta_path[:] = before
    sys.modules.pop("tl_fake_mod", None)


def _events(directory: Path) -> list[dict]:
    return [json.loads(line) for p in directory.glob("events-*.jsonl") for line in p.read_text().splitlines()]


def test_install_wraps_on_import_and_logs_calls(fake_module: str, tmp_path: Path) -> None:
    out = tmp_path / "trace"
    out.mkdir()
    hooks = (
        trace_hooks.Hook(fake_module, "Engine", "step", "step", lambda a, r: {"executed": r[1]}),
        trace_hooks.Hook(fake_module, "Engine", "boom", "boom"),
        trace_hooks.Hook(fake_module, None, "scatter", "copy", lambda a, r: {"bad": a[5]}),  # IndexError: timing kept
        trace_hooks.Hook(fake_module, "Engine", "gone", "gone"),
        trace_hooks.Hook(fake_module, "Nope", "step", "nope"),
    )
    assert trace_hooks.install(str(out), hooks)
    mod = importlib.import_module(fake_module)
    assert mod.Engine().step(3) == ({"n": 3}, True)  # results pass through unchanged
    assert mod.scatter(4) == 8
    with pytest.raises(KeyError):
        mod.Engine().boom()
    assert mod.Engine.step.__name__ == "step"  # functools.wraps: registries keyed on names still work
    events = _events(out)
    by_ev = {e["ev"]: e for e in events if e["ev"] != "missing"}
    assert by_ev["step"]["executed"] is True and by_ev["step"]["pid"] == os.getpid()
    assert by_ev["step"]["t0"] <= by_ev["step"]["t1"]
    assert by_ev["boom"]["raised"] is True
    assert "fields_error" in by_ev["copy"]
    assert sorted(e["hook"] for e in events if e["ev"] == "missing") == [f"{fake_module}:Engine.gone", f"{fake_module}:Nope.step"]


def test_install_wraps_a_module_already_imported(fake_module: str, tmp_path: Path) -> None:
    mod = importlib.import_module(fake_module)
    assert trace_hooks.install(str(tmp_path), (trace_hooks.Hook(fake_module, None, "scatter", "copy"),))
    mod.scatter(1)
    assert [e["ev"] for e in _events(tmp_path)] == ["copy"]


def test_install_without_a_directory_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(trace_hooks.TRACE_DIR_ENV, raising=False)
    before = list(sys.meta_path)
    assert trace_hooks.install() is False
    assert sys.meta_path == before


@pytest.mark.parametrize("traced", [True, False])
def test_sitecustomize_installs_only_when_asked(tmp_path: Path, traced: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != trace_hooks.TRACE_DIR_ENV}
    env["PYTHONPATH"] = str(BENCH / "engine_trace")
    if traced:
        env[trace_hooks.TRACE_DIR_ENV] = str(tmp_path)
    code = "import sys; print(any(type(f).__name__ == '_HookFinder' for f in sys.meta_path))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == str(traced)


@pytest.mark.parametrize("hook", trace_hooks.HOOKS, ids=lambda h: f"{h.owner}.{h.name}")
def test_every_hook_exists_in_installed_vllm_and_lmcache(hook: trace_hooks.Hook) -> None:
    """Pins the traced path to LMCache 0.5.6 / the vLLM in use: a rename fails here, not as a silent zero."""
    pytest.importorskip("vllm")
    pytest.importorskip("lmcache")
    module = importlib.import_module(hook.module)
    owner = module if hook.owner is None else getattr(module, hook.owner)
    assert callable(getattr(owner, hook.name))
