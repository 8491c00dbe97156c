"""CacheBlend with hole mode, end to end in one process (CPU, no download).

What a serving worker does with ``enable_blending``, without the engine around it:
a real LMCache 0.5.6 engine (blending, layerwise, CPU tier) with lmcache_ascend's
``BlendBufferConnector`` over a paged KV cache, and the ``SegmentBlender`` over a
small random Llama (transformers). LMCache config used (YAML equivalent)::

    chunk_size: 256
    local_cpu: true
    use_layerwise: true
    enable_blending: true
    blend_special_str: " # # "
    blend_recompute_ratios: [0.15]
    blend_check_layers: [1]
    extra_config: {blend_hole_mode: true}

Three documents are prefilled alone and stored. Then a prompt
``doc1 SEP NEW SEP doc3 SEP question`` arrives: document 2 was never cached (a
hole). Standard blending reuses doc1 only; hole mode also reuses doc3.

    python examples/blend_hole_mode.py [--model-dir models/tiny-llama]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # testkit/: the harness beside the package, not in the wheel


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="CacheBlend hole mode, in one process")
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "tiny-llama")
    p.add_argument("--doc-len", type=int, default=128)
    a = p.parse_args(argv)

    from transformers import AutoTokenizer

    from testkit.blend_stack import LocalBlendStack, StackOptions, full_recompute, load_model
    from testkit.blend_workload import MultiDocWorkload, separator_tokens
    from testkit.tiny_model import build

    print(f"[1/4] building / loading the random Llama in {a.model_dir}", flush=True)
    build(a.model_dir)
    model = load_model(a.model_dir)
    separator = separator_tokens(AutoTokenizer.from_pretrained(a.model_dir))
    workload = MultiDocWorkload(num_docs=3, doc_len=a.doc_len, question_len=16, separator=tuple(separator))

    print("[2/4] LMCache engine with enable_blending and extra_config.blend_hole_mode=true", flush=True)
    stack = LocalBlendStack(a.model_dir, model, StackOptions(hole_mode=True, recompute_ratio=0.15))
    try:
        print(f"[3/4] precomputing {workload.num_docs} documents of {a.doc_len} tokens", flush=True)
        for doc in workload.documents():
            stack.prefill_and_store(doc)
        prompt = workload.prompt(holes=(1,))
        print(f"[4/4] prompt of {len(prompt)} tokens, document 2 is a hole", flush=True)
        full_hidden, _ = full_recompute(model, prompt)
        for name, hole_mode in (("standard", False), ("hole mode", True)):
            r = stack.blend(prompt, hole_mode=hole_mode)
            dev = float((r.last_hidden.float() - full_hidden[-1].float()).norm() / full_hidden[-1].float().norm())
            print(f"  {name:9s}: {r.loaded_tokens} tokens loaded, {r.reused_tokens} reused "
                  f"({r.reuse_fraction:.0%} of the prompt), {r.segments_reused_after_hole} cached document(s) "
                  f"reused after the hole, {r.computed.numel()} tokens computed past layer {r.plan.check_layer}; "
                  f"last-token deviation from full recompute {dev:.3f}")
        exact = stack.blend(prompt, recompute_ratio=1.0)
        print(f"  ratio 1.0 : output equals full recompute: {bool((exact.hidden == full_hidden).all())}")
    finally:
        stack.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
