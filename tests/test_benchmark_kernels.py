"""``benchmarks/kernels.py`` runs end to end on a tiny chunk and its ``--json`` line keeps
the keys the README and the issue read (a benchmark that broke would otherwise go
unnoticed until someone needs its figures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ["DSA-C8 4 planes (17)", "vLLM CPU (12)"]


def test_kernels_benchmark_json_line(tmp_path: Path) -> None:
    plot = tmp_path / "kernels.png"
    args = ["--layers", "2", "--tokens", "32", "--slots", "512", "--repeat", "4", "--rotate", "2", "--json", "--plot", str(plot)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), *args, "--formats", *FORMATS],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(last["vs_memcpy_by_format"]) == set(FORMATS)
    assert last["min_vs_memcpy"] == min(v for d in last["vs_memcpy_by_format"].values() for v in d.values())
    for name in FORMATS:
        for direction in ("store", "load"):
            assert last["vs_memcpy_by_format"][name][direction] > 0
            assert last["front_end_us_by_format"][name][direction] > 0
            assert last["memcpy_gbps_by_format"][name][direction] > 0
    assert "front end us/call" in done.stdout
    assert plot.stat().st_size > 0
