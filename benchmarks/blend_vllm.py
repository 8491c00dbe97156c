"""CacheBlend inside vLLM CPU: full recompute vs standard blending vs hole mode.

Three vLLM CPU engines, each in its own process, on the same random Llama (the
compute-heavier model of ``benchmarks/blend.py``, bf16) and the same prompts:

- ``full``: the connector with CacheBlend, LMCache keeping nothing, so vLLM
  computes every prompt (the reference; with the connector configured, because
  vLLM CPU 0.32 runs this prefill ~2x faster with any KV connector than without
  one, measured here, which would flatter blending);
- ``standard``: the connector with CacheBlend, contiguous reuse;
- ``hole``: the connector with CacheBlend in hole mode.

Per round (``--rounds``, each with its own documents): prompt A
(``doc_1 SEP ... SEP doc_n SEP question``) is computed and stored, then for
each ``h`` a prompt with document ``h`` replaced by a never-cached one and a
new question. Reported per mode and hole position (median over rounds): TTFT
(vLLM's first-token latency), the fraction of prompt tokens vLLM's scheduler
took from LMCache, the fraction whose cached KV the blender kept (not
recomputed), and how many of the greedy tokens equal full recompute's (the
blend is an approximation below ratio 1.0). Prints a table, writes
``benchmarks/results/blend_vllm_ttft.png``; with ``--json`` the last line is
one JSON object with ``reuse_hole``, ``reuse_standard`` (kept-KV fractions,
mean over hole prompts), ``ttft_ratio`` (hole TTFT / standard TTFT, summed)
and the other figures.

    python benchmarks/blend_vllm.py [--json] [--docs 4] [--doc-len 512] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testkit/: the harness beside the package, not in the wheel
from blend import SPEC, workload_parser  # noqa: E402
from common import bar_chart, format_table, print_json_last  # noqa: E402

from testkit.blend_workload import MultiDocWorkload, separator_tokens  # noqa: E402
from testkit.vllm_runner import run_engine  # noqa: E402
from testkit.tiny_model import build, prompt_token_ids  # noqa: E402

MODES = ("full", "standard", "hole")


def workloads(model_dir: Path, args: argparse.Namespace) -> list[MultiDocWorkload]:
    from transformers import AutoTokenizer

    sep = tuple(separator_tokens(AutoTokenizer.from_pretrained(model_dir)))
    return [MultiDocWorkload(args.docs, args.doc_len, args.question_len, sep, seed=r) for r in range(args.rounds)]


def prompts_of(loads: list[MultiDocWorkload]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """All prompts in send order, and (round, hole) for each hole prompt's index (-1: not a hole prompt)."""
    prompts, tags = [prompt_token_ids(256, offset=4242)], [(-1, -1)]  # warm-up
    for r, w in enumerate(loads):
        prompts.append(w.prompt())
        tags.append((r, -1))
        for h in range(w.num_docs):
            prompts.append(w.prompt(holes=(h,), variant=h + 1))
            tags.append((r, h))
    return prompts, tags


def run_mode(mode: str, model_dir: Path, prompts: list[list[int]], args: argparse.Namespace) -> list[dict[str, Any]]:
    options: dict[str, Any] = {
        "model_dir": model_dir,
        "max_model_len": max(len(p) for p in prompts) + 64,
        "prompts": prompts,
        "max_tokens": args.max_tokens,
        "blend_hole_mode": mode == "hole",
        "blend_ratio": args.ratio,
        "lmcache_store": mode != "full",
    }
    return run_engine(options, timeout_s=900)


def agreement(tokens: list[int], reference: list[int]) -> int:
    """Leading greedy tokens equal to the reference's."""
    n = 0
    for a, b in zip(tokens, reference, strict=False):
        if a != b:
            break
        n += 1
    return n


def rows_of(
    results: dict[str, list[dict[str, Any]]], prompts: list[list[int]], tags: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    rows = []
    for i, (r, h) in enumerate(tags):
        if h < 0:
            continue
        for mode, res in results.items():
            out, n = res[i], len(prompts[i])
            blend = out.get("blend", {})
            rows.append({
                "round": r, "hole": h, "mode": mode, "tokens": n, "ttft_s": out["ttft_s"],
                "hit": out["from_lmcache"] / n, "kept": blend.get("reused_tokens", 0) / n,
                "after_hole": blend.get("segments_after_hole", 0),
                "agree": agreement(out["token_ids"], results["full"][i]["token_ids"]),
            })
    return rows


def summary(rows: list[dict[str, Any]], docs: int) -> dict[str, Any]:
    by = {m: [r for r in rows if r["mode"] == m] for m in MODES}
    ttft = {m: sum(r["ttft_s"] for r in by[m]) for m in MODES}
    return {
        "reuse_hole": statistics.mean(r["kept"] for r in by["hole"]),
        "reuse_standard": statistics.mean(r["kept"] for r in by["standard"]),
        "hit_hole": statistics.mean(r["hit"] for r in by["hole"]),
        "hit_standard": statistics.mean(r["hit"] for r in by["standard"]),
        "ttft_ratio": ttft["hole"] / ttft["standard"],
        "hole_over_full": ttft["hole"] / ttft["full"],
        "standard_over_full": ttft["standard"] / ttft["full"],
        "agree_hole": statistics.mean(r["agree"] for r in by["hole"]),
        "agree_standard": statistics.mean(r["agree"] for r in by["standard"]),
        "docs_after_hole": {m: {str(h + 1): statistics.median(r["after_hole"] for r in by[m] if r["hole"] == h)
                                for h in range(docs)} for m in ("standard", "hole")},
    }


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    table = []
    for h in range(args.docs):
        for mode in MODES:
            sel = [r for r in rows if r["hole"] == h and r["mode"] == mode]
            med = {k: statistics.median(r[k] for r in sel) for k in ("ttft_s", "hit", "kept", "after_hole", "agree")}
            table.append([f"doc {h + 1}/{args.docs}", mode, sel[0]["tokens"], med["ttft_s"] * 1000, med["hit"], med["kept"],
                          None if mode == "full" else int(med["after_hole"]), f"{med['agree']:.0f}/{args.max_tokens}"])
    print(format_table(["hole", "mode", "tokens", "TTFT ms", "from LMCache", "kept KV", "docs after hole", "= full"], table))
    figures = summary(rows, args.docs)
    print(
        f"kept cached KV: hole mode {figures['reuse_hole']:.2f}, standard {figures['reuse_standard']:.2f} of the prompt; "
        f"TTFT hole / standard {figures['ttft_ratio']:.2f}, hole / full {figures['hole_over_full']:.2f}, "
        f"standard / full {figures['standard_over_full']:.2f}; greedy tokens equal to full recompute: "
        f"hole {figures['agree_hole']:.1f}, standard {figures['agree_standard']:.1f} of {args.max_tokens}"
    )
    groups = [f"hole in doc {h + 1}" for h in range(args.docs)]
    series = {m: [statistics.median(r["ttft_s"] * 1000 for r in rows if r["hole"] == h and r["mode"] == m)
                  for h in range(args.docs)] for m in MODES}
    plot = bar_chart(args.plot_dir / "blend_vllm_ttft.png",
                     f"vLLM CPU TTFT with CacheBlend, {args.docs} docs x {args.doc_len} tokens, ratio {args.ratio}",
                     groups, series, "ms")
    if plot:
        print(f"plot: {plot}")
    return figures


def main(argv: list[str] | None = None) -> int:
    p = workload_parser(__doc__.split("\n\n")[0], doc_len=512)
    p.add_argument("--rounds", type=int, default=2, help="rounds, each with its own documents (medians over them)")
    p.add_argument("--max-tokens", type=int, default=8)
    a = p.parse_args(argv)

    print(f"[1/3] model {a.model_dir}: {SPEC.num_layers} layers, hidden {SPEC.hidden_size} (bf16, random weights)", flush=True)
    build(a.model_dir, SPEC)
    prompts, tags = prompts_of(workloads(a.model_dir, a))
    results = {}
    for i, mode in enumerate(MODES, 1):
        print(f"[2/3] engine {i}/{len(MODES)}: {mode} ({len(prompts)} prompts; start-up ~30 s)", flush=True)
        results[mode] = run_mode(mode, a.model_dir, prompts, a)
    print(f"[3/3] results (medians over {a.rounds} rounds)")
    figures = report(rows_of(results, prompts, tags), a)
    if a.json:
        print_json_last({**figures, "ratio": a.ratio, "docs": a.docs, "doc_len": a.doc_len, "layers": SPEC.num_layers})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
