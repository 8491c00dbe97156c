"""The SGLang test stand-in (``tests/sglang_standin``) against plain references.

- ``assign_req_to_token_pool_cpu`` and ``copy_all_layer_kv_cache_cpu`` equal a
  plain-Python reference (loops over lists) exactly, with the semantics of
  SGLang's Triton kernels ``assign_req_to_token_pool`` (``allocation.py``) and
  ``copy_all_layer_kv_cache_tiled`` (``cache_move.py``: every source row is read
  before any target row is written); also through SGLang's own call sites;
- bad input raises ``ValueError``; any other name is a placeholder that raises
  ``NotImplementedError`` naming the op; dunder lookups raise ``AttributeError``;
- the torchvision fix-up (``sitecustomize.py``) is needed and works;
- pin: SGLang 0.5.23 on CPU binds exactly the stand-in's two functions where it
  imports them (fails loudly if upstream renames or moves them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from types import ModuleType

import pytest
import torch

from .conftest import STANDIN_DIR

# ------------------------------------------------------------- references


def ref_assign(table: list[list[int]], rows: list[int], starts: list[int], ends: list[int], locs: list[int]) -> None:
    """``table[rows[i]][starts[i]:ends[i]]`` = the i-th run of ``locs`` (runs end to end)."""
    offset = 0
    for row, start, end in zip(rows, starts, ends, strict=True):
        for j in range(end - start):
            table[row][start + j] = locs[offset + j]
        offset += end - start


def ref_move(rows: list[bytes], tgt: list[int], src: list[int]) -> list[bytes]:
    """Row ``tgt[j]`` = the *original* row ``src[j]``; other rows unchanged."""
    out = list(rows)
    for t, s in zip(tgt, src, strict=True):
        out[t] = rows[s]
    return out


def row_bytes(t: torch.Tensor) -> list[bytes]:
    flat = t.contiguous().view(torch.uint8).reshape(t.shape[0], -1)
    return [bytes(r.tolist()) for r in flat]


# ------------------------------------------------- assign_req_to_token_pool

POOL_LEN, TABLE_ROWS = 16, 6
# (req_pool_indices, start_offset, end_offset)
ASSIGN_CASES: dict[str, tuple[list[int], list[int], list[int]]] = {
    "one": ([2], [0], [5]),
    "several-to-row-end": ([4, 1, 3], [3, 0, 7], [9, 4, POOL_LEN]),
    "empty-ranges-between": ([1, 2, 5, 0], [4, 0, 6, 9], [4, 3, 6, 12]),
    "zero-length-request": ([3], [2], [2]),
    "no-requests": ([], [], []),
}


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=["idx64", "idx32"])
@pytest.mark.parametrize("table_dtype", [torch.int32, torch.int64], ids=["table32", "table64"])
@pytest.mark.parametrize("case", list(ASSIGN_CASES))
def test_assign_matches_reference(standin: ModuleType, gen: torch.Generator, case: str, table_dtype: torch.dtype, index_dtype: torch.dtype) -> None:
    """Every cell equals the reference: written runs, and all others as they were."""
    rows, starts, ends = ASSIGN_CASES[case]
    table = torch.randint(-1000, -1, (TABLE_ROWS, POOL_LEN), generator=gen, dtype=table_dtype)
    needed = sum(e - s for s, e in zip(starts, ends))
    locs = torch.randperm(10_000, generator=gen)[: needed + 3]  # int64, longer than needed
    expected = table.tolist()
    ref_assign(expected, rows, starts, ends, locs.tolist())
    assert sum(a != b for ra, rb in zip(expected, table.tolist()) for a, b in zip(ra, rb)) == needed

    def idx(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=index_dtype)

    standin.assign_req_to_token_pool_cpu(idx(rows), table, idx(starts), idx(ends), locs, POOL_LEN)
    assert table.dtype == table_dtype and table.tolist() == expected


def _assign_args(**over: object) -> dict[str, object]:
    args: dict[str, object] = dict(
        req_pool_indices=torch.tensor([1, 2]),
        req_to_token=torch.zeros(4, 8, dtype=torch.int32),
        start_offset=torch.tensor([0, 2]),
        end_offset=torch.tensor([3, 4]),
        out_cache_loc=torch.arange(5),
        pool_len=8,
    )
    args.update(over)
    return args


BAD_ASSIGN = {
    "table-not-2d": dict(req_to_token=torch.zeros(32, dtype=torch.int32)),
    "pool-len-mismatch": dict(pool_len=9),
    "lengths-differ": dict(end_offset=torch.tensor([3])),
    "end-before-start": dict(start_offset=torch.tensor([0, 4]), end_offset=torch.tensor([3, 2])),
    "end-past-row": dict(end_offset=torch.tensor([3, 9]), out_cache_loc=torch.arange(20)),
    "too-few-locations": dict(out_cache_loc=torch.arange(4)),
    # start -2, end -1 would be a Python slice: column pool_len - 2 written silently.
    "negative-start": dict(start_offset=torch.tensor([0, -2]), end_offset=torch.tensor([3, -1])),
    "negative-row": dict(req_pool_indices=torch.tensor([1, -1])),  # would write the last row silently
    "row-past-table": dict(req_pool_indices=torch.tensor([1, 4])),  # would be an IndexError
}


@pytest.mark.parametrize("case", list(BAD_ASSIGN))
def test_assign_rejects_bad_input(standin: ModuleType, case: str) -> None:
    """Inconsistent shapes or ranges raise ValueError, whatever was written before."""
    args = _assign_args(**BAD_ASSIGN[case])
    with pytest.raises(ValueError):
        standin.assign_req_to_token_pool_cpu(**args)


# ------------------------------------------------- copy_all_layer_kv_cache

ROWS = 9
# (tgt_loc, src_loc): overlapping sets must behave as "read every source first".
MOVE_CASES: dict[str, tuple[list[int], list[int]]] = {
    "disjoint": ([6, 7, 8], [1, 2, 3]),
    "cycle": ([2, 3, 1], [1, 2, 3]),
    "swap": ([4, 0], [0, 4]),
    "shift-overlap": ([2, 3, 4], [1, 2, 3]),
    "onto-itself": ([5, 3], [5, 3]),
    "empty": ([], []),
}


def _buffers(gen: torch.Generator) -> list[torch.Tensor]:
    """Rows of 32, 12 and 5 bytes: the strides differ per buffer."""
    return [
        torch.randn(ROWS, 2, 8, generator=gen).to(torch.bfloat16),
        torch.randn(ROWS, 3, generator=gen),
        torch.randint(0, 256, (ROWS, 5), generator=gen, dtype=torch.int64).to(torch.uint8),
    ]


def _ptrs_and_strides(buffers: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """As SGLang builds them (``MHATokenToKVPool._init_data_ptrs_and_strides``)."""
    ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.uint64)
    return ptrs, torch.tensor([b.stride(0) * b.dtype.itemsize for b in buffers])


@pytest.mark.parametrize("loc_dtype", [torch.int64, torch.int32], ids=["loc64", "loc32"])
@pytest.mark.parametrize("case", list(MOVE_CASES))
def test_copy_matches_reference(standin: ModuleType, gen: torch.Generator, case: str, loc_dtype: torch.dtype) -> None:
    """Every row of every buffer equals the reference: moved rows and untouched ones."""
    tgt, src = MOVE_CASES[case]
    buffers = _buffers(gen)
    before = [row_bytes(b) for b in buffers]
    expected = [ref_move(rows, tgt, src) for rows in before]
    if case not in ("empty", "onto-itself"):
        assert expected != before
    ptrs, strides = _ptrs_and_strides(buffers)
    assert len(set(strides.tolist())) == 3
    standin.copy_all_layer_kv_cache_cpu(ptrs, strides, torch.tensor(tgt, dtype=loc_dtype), torch.tensor(src, dtype=loc_dtype))
    assert [row_bytes(b) for b in buffers] == expected


BAD_COPY = {
    "lengths-differ": (2, 3, [1, 2], [3]),
    "ptrs-vs-strides": (3, 2, [1], [2]),
    "negative-target": (3, 3, [-1], [2]),
    "negative-source": (3, 3, [1], [-2]),
}


@pytest.mark.parametrize("case", list(BAD_COPY))
def test_copy_rejects_bad_input_and_writes_nothing(standin: ModuleType, gen: torch.Generator, case: str) -> None:
    """Inconsistent arguments raise ValueError before any row moves."""
    n_ptrs, n_strides, tgt, src = BAD_COPY[case]
    buffers = _buffers(gen)
    before = [row_bytes(b) for b in buffers]
    ptrs, strides = _ptrs_and_strides(buffers)
    with pytest.raises(ValueError):
        standin.copy_all_layer_kv_cache_cpu(ptrs[:n_ptrs], strides[:n_strides], torch.tensor(tgt), torch.tensor(src))
    assert [row_bytes(b) for b in buffers] == before


# --------------------------------------------------------- SGLang call sites


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_real_mha_pool_moves_rows_through_the_standin(sglang_cpu: ModuleType, gen: torch.Generator, dtype: torch.dtype) -> None:
    """SGLang's own ``MHATokenToKVPool.move_kv_cache`` (K and V rows of different
    widths: ``v_head_dim`` != ``head_dim``) moves exactly the reference rows."""
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    pool = MHATokenToKVPool(
        size=30, page_size=1, dtype=dtype, head_num=2, head_dim=8, v_head_dim=4, layer_num=2,
        device="cpu", enable_memory_saver=False, enable_kv_cache_copy=True,
    )  # fmt: skip
    buffers = [*pool.k_buffer, *pool.v_buffer]
    for b in buffers:
        b.copy_(torch.randn(b.shape, generator=gen).to(dtype))
    assert len(set(pool.data_strides.tolist())) == 2
    tgt, src = [3, 17, 9, 30], [9, 3, 17, 5]  # a 3-cycle plus one more move
    before = [row_bytes(b) for b in buffers]
    pool.move_kv_cache(torch.tensor(tgt), torch.tensor(src))
    assert [row_bytes(b) for b in buffers] == [ref_move(rows, tgt, src) for rows in before]


def test_real_assign_call_site_matches_reference(sglang_cpu: ModuleType, gen: torch.Generator) -> None:
    """SGLang's ``assign_req_to_token_pool_func`` on a real ``ReqToTokenPool`` (int32 table)."""
    from sglang.srt.mem_cache import allocation
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool

    req_pool = ReqToTokenPool(size=5, max_context_len=24, device="cpu", enable_memory_saver=False)
    rows, starts, ends = [3, 1, 5], [0, 10, 4], [7, 10, 24]
    locs = torch.randperm(500, generator=gen)[: sum(e - s for s, e in zip(starts, ends))]
    expected = req_pool.req_to_token.tolist()
    ref_assign(expected, rows, starts, ends, locs.tolist())
    allocation.assign_req_to_token_pool_func(
        torch.tensor(rows), req_pool.req_to_token, torch.tensor(starts), torch.tensor(ends), locs, len(rows)
    )
    assert req_pool.req_to_token.tolist() == expected


# -------------------------------------------------------- other names


def test_other_names_are_placeholders_that_raise(standin: ModuleType) -> None:
    """Any other op imports, but calling it raises NotImplementedError naming it."""
    from sgl_kernel import fused_add_rmsnorm_cpu  # type: ignore[attr-defined]

    assert fused_add_rmsnorm_cpu.__name__ == "fused_add_rmsnorm_cpu"
    with pytest.raises(NotImplementedError, match=r"sgl_kernel\.fused_add_rmsnorm_cpu is not provided") as info:
        fused_add_rmsnorm_cpu(torch.zeros(1), weight=None)
    assert "assign_req_to_token_pool_cpu" in str(info.value) and "copy_all_layer_kv_cache_cpu" in str(info.value)
    with pytest.raises(NotImplementedError, match="decode_attention_cpu"):
        standin.decode_attention_cpu()
    # The two ops are real functions of the module, not placeholders.
    assert {"assign_req_to_token_pool_cpu", "copy_all_layer_kv_cache_cpu"} <= set(vars(standin))


@pytest.mark.parametrize("name", ["__wrapped__", "__all__", "__version__", "__torch_function__"])
def test_dunder_lookups_raise_attribute_error(standin: ModuleType, name: str) -> None:
    """Dunders are not placeholders (``hasattr`` probes by Python and libraries)."""
    with pytest.raises(AttributeError):
        getattr(standin, name)
    assert not hasattr(standin, name)


# ----------------------------------------------------- subprocess checks

_NO_TORCHVISION = importlib.util.find_spec("torchvision") is None


def _python(code: str, *flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SGLANG_USE_CPU_ENGINE")}
    cmd = [sys.executable, *flags, "-c", code]
    return subprocess.run(cmd, env={**base, **env}, capture_output=True, text=True, timeout=300)


_SKIP_TV = "torchvision is not installed: nothing for the fix-up to fix"


@pytest.mark.skipif(_NO_TORCHVISION, reason=_SKIP_TV)
def test_torchvision_import_fails_without_the_fixup() -> None:
    """PyPI's torchvision (CUDA build) does not import next to CPU torch as is.

    ``-S``: no ``site`` processing, so neither the ``.pth`` file that
    ``scripts/sglang_env.sh`` installs nor ``sitecustomize`` runs; the
    environment's packages are put on ``sys.path`` by hand."""
    purelib = sysconfig.get_paths()["purelib"]  # this environment's, as site would find it
    code = f"import sys\nsys.path.append({purelib!r})\nimport torchvision\n"
    done = _python(code, "-S")
    assert done.returncode != 0 and "torchvision::nms" in done.stderr, done.stderr[-2000:]


@pytest.mark.skipif(_NO_TORCHVISION, reason=_SKIP_TV)
def test_torchvision_imports_with_the_fixup_and_nms_still_fails_loudly() -> None:
    """With the stand-in directory on PYTHONPATH, its ``sitecustomize`` runs and
    torchvision imports; calling ``nms`` still raises."""
    code = (
        "import sitecustomize, torch, torchvision\n"
        "print('FIXUP', sitecustomize.__file__)\n"
        "try:\n"
        "    torch.ops.torchvision.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)\n"
        "except NotImplementedError:\n"
        "    print('NMS-RAISES')\n"
    )
    done = _python(code, PYTHONPATH=str(STANDIN_DIR))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"FIXUP {STANDIN_DIR / 'sitecustomize.py'}" in done.stdout and "NMS-RAISES" in done.stdout


_PIN = """
import json
import sgl_kernel
from sglang.kernels.ops.kvcache import cache_move
from sglang.srt.mem_cache import allocation
names = {"allocation": (allocation, "assign_req_to_token_pool_cpu"),
         "cache_move": (cache_move, "copy_all_layer_kv_cache_cpu")}
print("PIN" + json.dumps({
    "standin": sgl_kernel.__file__,
    **{key: getattr(mod, name, None) is vars(sgl_kernel)[name] for key, (mod, name) in names.items()},
}))
"""


@pytest.mark.parametrize("cpu_engine", [True, False], ids=["cpu-engine", "no-cpu-engine"])
def test_sglang_binds_exactly_the_two_standin_ops_on_cpu(standin: ModuleType, cpu_engine: bool) -> None:
    """Pin: with ``SGLANG_USE_CPU_ENGINE=1`` SGLang 0.5.23's two CPU call sites hold the
    stand-in's functions (without it, neither is imported: the variable is what matters)."""
    env = {"PYTHONPATH": str(STANDIN_DIR), **({"SGLANG_USE_CPU_ENGINE": "1"} if cpu_engine else {})}
    done = _python(_PIN, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("PIN"))
    found = json.loads(line[3:])
    assert found == {"standin": str(STANDIN_DIR / "sgl_kernel" / "__init__.py"), "allocation": cpu_engine, "cache_move": cpu_engine}
