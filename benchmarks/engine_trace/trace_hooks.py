"""Timestamps of a warm request's steps inside vLLM's and LMCache's own processes.

Who uses it: ``benchmarks/mp_timeline.py`` puts this folder first on the
``PYTHONPATH`` of the engines it starts and sets ``$LMCACHE_ASCEND_TRACE_DIR``;
the folder's ``sitecustomize.py`` then calls :func:`install` in every Python
process of that run (vLLM's front end, EngineCore and worker, the ``lmcache
server``). Nothing is wrapped in a process that never imports a module of
:data:`HOOKS`, and nothing at all without the variable.

What it records: each function of :data:`HOOKS` is wrapped when its module is
first imported (a ``sys.meta_path`` finder runs the module, then wraps); every
call appends one JSON line to ``$LMCACHE_ASCEND_TRACE_DIR/events-<pid>.jsonl``:
``{"ev", "pid", "t0", "t1"}`` (``time.monotonic_ns``: one clock for every
process of the host) plus the hook's fields (a request id, the lookup's hit, a
step's ``executed``). A hook whose function a newer vLLM or LMCache no longer
has is written as ``{"ev": "missing", "hook": ...}`` instead, so the timeline
names what it could not see rather than showing a phase as zero.

The hooks are LMCache 0.5.6's engine-driven (SHM) multi-process path and vLLM's
``EngineCore`` step loop; ``tests/test_benchmark_mp_timeline.py`` checks that
every one of them still exists in the installed versions.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

TRACE_DIR_ENV = "LMCACHE_ASCEND_TRACE_DIR"

Fields = Callable[[tuple, object], dict[str, Any]]


def _no_fields(args: tuple, result: object) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Hook:
    """``module.owner.name`` (``owner`` None: a module-level function), recorded as ``event``."""

    module: str
    owner: str | None
    name: str
    event: str
    fields: Fields = _no_fields


_MP_CONNECTOR = "lmcache.integration.vllm.lmcache_mp_connector"
_WORKER_TRANSFER = "lmcache.v1.multiprocess.transfer_context.worker_transfer"
_SHM_CONTEXT = "lmcache.v1.multiprocess.transfer_context.shm"
_ENGINE_CORE = "vllm.v1.engine.core"

HOOKS: tuple[Hook, ...] = (
    # the request reaches the scheduler (its TTFT clock has been running since the front end took it)
    Hook(_ENGINE_CORE, "EngineCore", "add_request", "add_request", lambda a, r: {"req": a[1].request_id}),
    # one scheduler step: schedule, the worker's execute_model (connector loads inside), outputs
    Hook(_ENGINE_CORE, "EngineCore", "step", "step", lambda a, r: {"executed": bool(r[1])}),  # type: ignore[index]
    # the scheduler asks LMCache how many tokens it holds; None = the lookup RPC has not answered yet
    Hook(_MP_CONNECTOR, "LMCacheMPConnector", "get_num_new_matched_tokens", "lookup",
         lambda a, r: {"req": a[1].request_id, "hit": r[0]}),  # type: ignore[index]
    # the worker's whole synchronous retrieve of one request
    Hook(_WORKER_TRANSFER, "EngineDrivenTransferContext", "submit_retrieve", "retrieve", lambda a, r: {"req": a[1]}),
    # its three parts: the server pins the chunks (RPC), the engine copies them, the server unpins (RPC)
    Hook(_SHM_CONTEXT, "EngineDrivenContextShm", "prepare_retrieve", "prepare"),
    Hook(_WORKER_TRANSFER, None, "scatter_cpu_to_paged_kv", "copy"),
    Hook(_SHM_CONTEXT, "EngineDrivenContextShm", "commit_retrieve", "commit"),
)


class EventLog:
    """Appends one JSON object per line to ``<directory>/events-<pid>.jsonl``, opened on first write."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._file: Any = None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self._file = open(os.path.join(self._directory, f"events-{os.getpid()}.jsonl"), "a", buffering=1)  # noqa: SIM115
        self._file.write(json.dumps(record, default=str) + "\n")


def wrap(fn: Callable[..., Any], hook: Hook, log: EventLog) -> Callable[..., Any]:
    """``fn`` with one event per call (calls that raise are recorded too, with ``"raised": true``)."""

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic_ns()
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            log.write({"ev": hook.event, "pid": os.getpid(), "t0": t0, "t1": time.monotonic_ns(), "raised": True})
            raise
        t1 = time.monotonic_ns()
        try:
            extra = hook.fields(args, result)
        except (AttributeError, IndexError, TypeError) as exc:  # a changed signature: keep the timing
            extra = {"fields_error": repr(exc)}
        log.write({"ev": hook.event, "pid": os.getpid(), "t0": t0, "t1": t1, **extra})
        return result

    return traced


def apply_hooks(module: ModuleType, hooks: Sequence[Hook], log: EventLog) -> None:
    """Wrap every hook of ``module`` in place; a hook it lacks is logged as ``missing``."""
    for hook in hooks:
        owner: Any = module if hook.owner is None else getattr(module, hook.owner, None)
        fn = getattr(owner, hook.name, None) if owner is not None else None
        if fn is None:
            log.write({"ev": "missing", "hook": f"{hook.module}:{hook.owner or ''}.{hook.name}"})
            continue
        setattr(owner, hook.name, wrap(fn, hook, log))


class _HookFinder(importlib.abc.MetaPathFinder):
    """Finds a hooked module with the other finders, then wraps its hooks once it has run."""

    def __init__(self, by_module: dict[str, list[Hook]], log: EventLog) -> None:
        self._by_module = by_module
        self._log = log

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        hooks = self._by_module.get(name)
        if hooks is None:
            return None
        spec = next((s for f in sys.meta_path if f is not self and (s := _find(f, name, path, target)) is not None), None)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        run_module = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            apply_hooks(module, hooks, self._log)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _find(finder: Any, name: str, path: Any, target: Any) -> importlib.machinery.ModuleSpec | None:
    find_spec = getattr(finder, "find_spec", None)
    return find_spec(name, path, target) if find_spec is not None else None


def install(directory: str | None = None, hooks: Sequence[Hook] = HOOKS) -> bool:
    """Wrap ``hooks`` in this process as their modules are imported; False when no directory is set."""
    directory = directory or os.environ.get(TRACE_DIR_ENV)
    if not directory:
        return False
    by_module: dict[str, list[Hook]] = {}
    for hook in hooks:
        by_module.setdefault(hook.module, []).append(hook)
    log = EventLog(directory)
    already = {name: sys.modules[name] for name in by_module if name in sys.modules}
    for name, module in already.items():
        apply_hooks(module, by_module.pop(name), log)
    sys.meta_path.insert(0, _HookFinder(by_module, log))
    return True
