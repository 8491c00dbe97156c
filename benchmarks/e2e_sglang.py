"""SGLang 0.5.23 ``--enable-lmcache``: TTFT cold vs warm, lmcache_ascend's ops vs LMCache's default CPU backend.

What is measured: time to first token (first streamed chunk of SGLang's
``/generate``, greedy) of ``--prompts`` distinct prompts of ``--prompt-tokens``
tokens (default 2100, not a multiple of the 256-token chunk) on a KV-heavy,
compute-light random Llama (16 layers, 64 KiB of KV per token, so moving KV is
a visible part of TTFT), served by a real SGLang server on CPU. Three
configurations run one after the other, each with a fresh SGLang server (and a
fresh ``lmcache server`` where LMCache is on), one short warm-up request first:

- ``no LMCache``: every prompt cold; again at once (a hit in SGLang's own radix
  cache: the fastest any cache can make a warm request in this SGLang, see
  below); again after ``/flush_cache`` (SGLang recomputes: the flush works);
- ``ascend_cpu``: ``lmcache server`` and SGLang's scheduler both with
  ``LMCACHE_DEVICE_BACKEND=ascend_cpu`` (lmcache_ascend's ops), KV through the
  server's shared-memory pool (``--shm-name``): cold (computed and stored), then
  warm after ``/flush_cache`` (loaded from LMCache);
- ``default``: the same with LMCache's default CPU backend in both processes.

Reported: median (and min) TTFT per configuration and phase, tokens SGLang
loaded from LMCache, whether every output equals the no-LMCache output of the
same prompt, and the share of the CPUs other processes used meanwhile (the
machine may be shared: a warning says when timings are skewed). The lmcache
server's own "Retrieved N tokens in X s" / "Stored" log times show where warm
time goes. On CPU, SGLang's ``torch_native`` attention runs an extend over a
cached prefix as a full causal attention over the whole sequence (it pads the
query to the sequence length and drops the prefix rows), so a cache hit saves
the projections and MLP of the prefix but not its attention; the radix-hit row
measures that floor. Prints a table and the CPU, writes
``benchmarks/results/e2e_sglang.png``; with ``--json`` the last line is one
JSON object (``warm_over_cold``, ``ours_over_upstream``, ``tokens_from_lmcache``,
``identical_outputs``, raw medians, CPU). Targets are reported, not asserted.

Needs ``scripts/sglang_env.sh``'s environment: ``bash scripts/dev.sh bench-sglang [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from common import RESULTS_DIR, bar_chart, cpu_model, format_table, print_json_last  # noqa: E402

from lmcache_ascend.integrations.lmcache import ASCEND_CPU_BACKEND as BACKEND_NAME  # noqa: E402
from testkit.mp_server import running_server  # noqa: E402
from testkit.tiny_model import KV_HEAVY, build, prompt_token_ids  # noqa: E402
from tests.e2e.sglang.servers import (  # noqa: E402
    Generation, SGLangServer, flush_cache, generate, running_sglang, write_lmcache_config, work_directory,
)  # fmt: skip

NO_LMCACHE = "no LMCache"
# Configuration name -> LMCache device backend in both processes (None: LMCache's default).
LMCACHE_CONFIGS: dict[str, str | None] = {BACKEND_NAME: BACKEND_NAME, "default": None}
TARGETS = {"warm_over_cold": 0.3, "ours_over_upstream": 0.7}
OTHER_CPU_WARN = 15.0
LOG_TIME = re.compile(r"(Retrieved|Stored) (\d+) tokens in ([0-9.]+) s")


class OtherCpu:
    """Share of the machine's CPU time used by processes other than this benchmark's during a phase.

    The machine may be shared: ``/proc/stat``'s busy time minus the CPU time of
    this process and the servers' process groups (SGLang, ``lmcache server``).
    """

    def __init__(self) -> None:
        self.pgids: set[int] = {os.getpgid(0)}
        self.hz = os.sysconf("SC_CLK_TCK")
        self.cores = len(os.sched_getaffinity(0))

    @staticmethod
    def busy() -> int:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields) - fields[3] - fields[4]  # all but idle and iowait

    def ours(self) -> int:
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                rest = stat.read_text().rsplit(")", 1)[1].split()
                if int(rest[2]) in self.pgids:
                    total += int(rest[11]) + int(rest[12])
        return total

    @contextlib.contextmanager
    def measure(self, out: list[float]) -> Iterator[None]:
        """Appends the percentage of all cores other processes kept busy while the body ran."""
        t0, b0, o0 = time.monotonic(), self.busy(), self.ours()
        yield
        wall, other = time.monotonic() - t0, (self.busy() - b0) - (self.ours() - o0)
        out.append(max(0.0, 100.0 * other / (self.hz * self.cores * wall)) if wall > 0 else 0.0)


@dataclass
class ConfigRun:
    name: str
    cold: list[Generation]
    warm: list[Generation]
    # No-LMCache configuration only: the same prompts again before the flush.
    radix_hit: list[Generation] = field(default_factory=list)
    # From the lmcache server's log: (tokens, seconds) per retrieve / store.
    retrieved: list[tuple[int, float]] = field(default_factory=list)
    stored: list[tuple[int, float]] = field(default_factory=list)
    transport: str = ""
    # Other processes' CPU share (%) during cold, radix hit (if any), warm.
    other_cpu: dict[str, float] = field(default_factory=dict)


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def log_times(path: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    retrieved: list[tuple[int, float]] = []
    stored: list[tuple[int, float]] = []
    with contextlib.suppress(OSError):
        for m in LOG_TIME.finditer(path.read_text(errors="replace")):
            (retrieved if m.group(1) == "Retrieved" else stored).append((int(m.group(2)), float(m.group(3))))
    return retrieved, stored


def transport_mode(sglang_log: Path) -> str:
    """The worker transfer mode LMCache's connector logged in SGLang ("SHM", "pickle", ...)."""
    with contextlib.suppress(OSError):
        found = re.findall(r"engine-driven context registered \(instance_id=\d+, mode=([^)]+)\)", sglang_log.read_text(errors="replace"))
        if found:
            return found[-1]
    return "?"


def run_prompts(server: SGLangServer, label: str, prompts: list[list[int]], max_new_tokens: int) -> list[Generation]:
    out = []
    for i, prompt in enumerate(prompts, start=1):
        g = generate(server, prompt, max_new_tokens=max_new_tokens)
        progress(f"    {label} prompt {i}: TTFT {g.ttft_s * 1000:7.1f} ms, "
                 f"{g.storage_tokens} tokens from LMCache, {g.cached_tokens} cached")
        out.append(g)
    return out


def run_config(
    name: str, backend: str | None, lmcache: bool, a: argparse.Namespace, prompts: list[list[int]], workdir: Path, n: int
) -> ConfigRun:
    tag = re.sub(r"\W+", "_", name)
    meter = OtherCpu()
    other: dict[str, list[float]] = {"cold": [], "radix_hit": [], "warm": []}
    with contextlib.ExitStack() as stack:
        config = None
        server_log = workdir / f"lmcache-{tag}.log"
        if lmcache:
            progress(f"  starting lmcache server (device backend {backend or 'LMCache default'}, shared memory)")
            shm_name = f"lmc_bench_{os.getpid()}_{n}"
            srv = stack.enter_context(
                running_server(backend=backend, log_path=server_log, chunk_size=a.chunk_size, l1_gb=a.l1_gib, shm_name=shm_name)
            )
            config = write_lmcache_config(workdir / f"lmcache-{tag}.yaml", srv.port)
            meter.pgids.add(srv.pid)
        progress("  starting SGLang (CPU; ~40-60 s)" + (" with --enable-lmcache" if lmcache else ""))
        sglang_log = workdir / f"sglang-{tag}.log"
        sg = stack.enter_context(running_sglang(a.model_dir, log_path=sglang_log, lmcache_config=config, backend=backend))
        meter.pgids.add(sg.pid)
        generate(sg, prompt_token_ids(300, offset=4242), max_new_tokens=2)
        progress("  warm-up request done; cold requests" + (" (computed and stored)" if lmcache else ""))
        with meter.measure(other["cold"]):
            cold = run_prompts(sg, "cold", prompts, a.max_new_tokens)
        radix_hit: list[Generation] = []
        if not lmcache:
            with meter.measure(other["radix_hit"]):
                radix_hit = run_prompts(sg, "SGLang radix hit", prompts, a.max_new_tokens)
        flush_cache(sg)
        progress("  /flush_cache done; same prompts again" + (" (loaded from LMCache)" if lmcache else " (recomputed)"))
        with meter.measure(other["warm"]):
            warm = run_prompts(sg, "warm" if lmcache else "after flush", prompts, a.max_new_tokens)
        progress("  stopping servers")
    retrieved, stored = log_times(server_log) if lmcache else ([], [])
    transport = transport_mode(sglang_log) if lmcache else ""
    return ConfigRun(name, cold, warm, radix_hit, retrieved, stored, transport, {k: v[-1] for k, v in other.items() if v})


def median_ms(gens: list[Generation]) -> float:
    return statistics.median(g.ttft_s for g in gens) * 1000


def median_log_ms(items: list[tuple[int, float]]) -> float:
    """Median of the server's logged retrieve / store times, ms (NaN when none was logged)."""
    return statistics.median(t for _, t in items) * 1000 if items else float("nan")


def same_outputs(gens: list[Generation], ref: list[Generation]) -> bool:
    return all(g.output_ids == r.output_ids for g, r in zip(gens, ref, strict=True))


def log_summary(run: ConfigRun) -> str:
    def med(items: list[tuple[int, float]]) -> str:
        if not items:
            return "none logged"
        secs, tokens = statistics.median(t for _, t in items), statistics.median(n for n, _ in items)
        return f"{len(items)}x, median {secs * 1000:.1f} ms for {tokens:.0f} tokens"

    return f"{run.name}: transport mode={run.transport}; server log: retrieves {med(run.retrieved)}; stores {med(run.stored)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "kv-heavy-llama")
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=2100)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=256, help="lmcache server chunk size")
    p.add_argument("--l1-gib", type=float, default=1.0, help="lmcache server's L1 (shared memory) pool")
    p.add_argument("--workdir", type=Path, default=None, help="logs and configs (default: a temporary directory, removed)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", type=Path, default=RESULTS_DIR / "e2e_sglang.png")
    a = p.parse_args(argv)
    if a.prompts < 1 or a.prompt_tokens <= a.chunk_size:
        p.error("need --prompts >= 1 and --prompt-tokens above --chunk-size (a shorter prompt has no whole chunk to load)")

    spec = KV_HEAVY
    load_start = os.getloadavg()[0]
    total = 2 + 1 + len(LMCACHE_CONFIGS)
    progress(f"[1/{total}] CPU: {cpu_model()}; load average (1 min) {load_start:.2f}")
    progress(f"          model {a.model_dir}: {spec.num_layers} layers, {spec.kv_bytes_per_token // 1024} KiB KV per token; "
             f"{a.prompts} prompts x {a.prompt_tokens} tokens ({a.prompt_tokens * spec.kv_bytes_per_token / 2**20:.0f} MiB KV each)")
    build(a.model_dir, KV_HEAVY)
    prompts = [prompt_token_ids(a.prompt_tokens, offset=31 * (i + 1)) for i in range(a.prompts)]
    with work_directory(a.workdir, "lmcache-ascend-sglang-bench-") as workdir:
        progress(f"[2/{total}] {NO_LMCACHE}: SGLang alone (logs in {workdir})")
        runs = [run_config(NO_LMCACHE, None, False, a, prompts, workdir, 0)]
        for i, (name, backend) in enumerate(LMCACHE_CONFIGS.items(), start=1):
            progress(f"[{2 + i}/{total}] {name}: lmcache server + SGLang --enable-lmcache, "
                     f"device backend {backend or 'LMCache default'} in both")
            runs.append(run_config(name, backend, True, a, prompts, workdir, i))

    progress(f"[{total}/{total}] results (median of {a.prompts} prompts, {a.prompt_tokens} tokens each)")
    ref = runs[0].cold
    rows: list[list[object]] = []
    series_cold: list[float | None] = []
    series_warm: list[float | None] = []
    identical, worst_other = True, 0.0
    for run in runs:
        phases: tuple[tuple[str, str, list[Generation]], ...]
        if run.name == NO_LMCACHE:
            phases = (("cold", "cold", run.cold), ("SGLang radix hit (no flush)", "radix_hit", run.radix_hit),
                      ("after flush (recompute)", "warm", run.warm))
        else:
            phases = (("cold (compute + store)", "cold", run.cold), ("warm (from LMCache)", "warm", run.warm))
        for label, key, gens in phases:
            same = same_outputs(gens, ref)
            identical &= same
            tokens = ",".join(str(g.storage_tokens) for g in gens)
            busy = run.other_cpu[key]
            worst_other = max(worst_other, busy)
            fastest = min(g.ttft_s for g in gens) * 1000
            rows.append([f"{run.name} / {label}", median_ms(gens), fastest, tokens, "yes" if same else "NO", f"{busy:.0f}"])
        series_cold.append(median_ms(run.cold))
        series_warm.append(median_ms(run.warm))
    headers = ["configuration / phase", "median TTFT ms", "min TTFT ms", "tokens from LMCache", "outputs = no-LMCache", "other CPU %"]
    print(format_table(headers, rows))
    print("other CPU %: share of all cores that processes outside this benchmark kept busy during the phase")
    if worst_other > OTHER_CPU_WARN:
        print(f"WARNING: other processes used up to {worst_other:.0f}% of the CPUs during a phase: timings and ratios are skewed; "
              "rerun on a quiet machine")
    by_name = {r.name: r for r in runs}
    ours, upstream = by_name[BACKEND_NAME], by_name["default"]
    warm_over_cold = median_ms(ours.warm) / median_ms(ours.cold)
    ours_over_upstream = median_ms(ours.warm) / median_ms(upstream.warm)
    radix_ms = median_ms(runs[0].radix_hit)
    for run in runs[1:]:
        print(log_summary(run))
    print(f"warm/cold TTFT ({BACKEND_NAME}): {warm_over_cold:.2f} (target <= {TARGETS['warm_over_cold']}) "
          f"{'met' if warm_over_cold <= TARGETS['warm_over_cold'] else 'MISSED'}")
    print(f"warm TTFT {BACKEND_NAME} / LMCache default: {ours_over_upstream:.2f} (target <= {TARGETS['ours_over_upstream']}) "
          f"{'met' if ours_over_upstream <= TARGETS['ours_over_upstream'] else 'MISSED'}")
    retrieve = median_log_ms(ours.retrieved)
    retrieve_ratio = retrieve / median_log_ms(upstream.retrieved)
    print(f"the copy LMCache does ({BACKEND_NAME} / LMCache default), from the server's log: retrieve {retrieve_ratio:.2f}, "
          f"store {median_log_ms(ours.stored) / median_log_ms(upstream.stored):.2f}")
    print(f"where warm time goes ({BACKEND_NAME}): {median_ms(ours.warm):.0f} ms warm TTFT, of which the server logs {retrieve:.0f} ms "
          f"retrieving; SGLang's own radix hit, no LMCache involved, takes {radix_ms:.0f} ms "
          f"(radix hit / cold {radix_ms / median_ms(runs[0].cold):.2f}: the floor of warm/cold for this SGLang attention backend)")
    print(f"greedy outputs identical to SGLang without LMCache: {'yes' if identical else 'NO'}")
    print(f"CPU: {cpu_model()}; load average (1 min) at start {load_start:.2f}, at end {os.getloadavg()[0]:.2f}")
    plot = bar_chart(a.plot, f"SGLang --enable-lmcache: TTFT, {a.prompt_tokens}-token prompts",
                     [r.name for r in runs], {"cold": series_cold, "warm (after /flush_cache)": series_warm,
                      "SGLang radix hit (no flush)": [radix_ms, None, None]}, "median TTFT, ms", headroom=1.45)
    if plot:
        print(f"plot: {plot}")
    if a.json:
        print_json_last({
            "warm_over_cold": warm_over_cold,
            "ours_over_upstream": ours_over_upstream,
            "tokens_from_lmcache": [g.storage_tokens for g in ours.warm],
            "tokens_from_lmcache_total": sum(g.storage_tokens for g in ours.warm),
            "tokens_from_lmcache_default": [g.storage_tokens for g in upstream.warm],
            "identical_outputs": identical,
            "median_ttft_ms": {r.name: {"cold": median_ms(r.cold), "warm": median_ms(r.warm)} for r in runs},
            "radix_hit_ttft_ms": radix_ms,
            "warm_over_radix_hit": median_ms(ours.warm) / radix_ms,
            "server_retrieve_ms_median": {r.name: median_log_ms(r.retrieved) for r in runs[1:]},
            "server_store_ms_median": {r.name: median_log_ms(r.stored) for r in runs[1:]},
            "retrieve_ours_over_upstream": retrieve_ratio,
            "transport": {r.name: r.transport for r in runs[1:]},
            "targets": TARGETS,
            "prompts": a.prompts,
            "prompt_tokens": a.prompt_tokens,
            "kv_bytes_per_token": spec.kv_bytes_per_token,
            "cpu": cpu_model(),
            "loadavg_1min": [load_start, os.getloadavg()[0]],
            "other_cpu_pct": {r.name: r.other_cpu for r in runs},
            "other_cpu_pct_max": worst_other,
        })
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
