"""Build a small random-weight Llama checkpoint locally (no download).

Used by the main job, the end-to-end tests and benchmarks: vLLM loads it like
any Hugging Face model directory. Weights are random but seeded, so the same
arguments give the same model; the tokenizer is a word-level vocabulary of
``w0 .. w{N}`` plus special tokens, so any text made of those words tokenizes
one token per word.

    python -m testkit.tiny_model --out models/tiny-llama
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
SPEC_FILE = "lmcache_ascend_model.json"


@dataclass(frozen=True)
class TinyLlamaSpec:
    num_layers: int = 4
    hidden_size: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 512
    vocab_words: int = 2000
    max_position_embeddings: int = 8192
    seed: int = 0
    # Larger than Llama's 0.02 so attention, and therefore the cached KV,
    # visibly steers greedy outputs: a corrupted KV load changes the tokens.
    initializer_range: float = 0.2
    # Mixed attention (Gemma / Ministral style): with sliding_window > 0, every
    # sliding_pattern-th layer attends to everything and the others only to the
    # last sliding_window tokens (vLLM reads config.layer_types).
    sliding_window: int = 0
    sliding_pattern: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes one token occupies across all layers (bf16)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * 2

    def layer_types(self) -> list[str] | None:
        """Per-layer attention kinds in Hugging Face's ``layer_types`` terms; None if all full."""
        if self.sliding_window <= 0:
            return None
        if self.sliding_pattern < 1:
            raise ValueError(f"sliding_pattern must be >= 1, got {self.sliding_pattern}")
        return ["full_attention" if (i + 1) % self.sliding_pattern == 0 else "sliding_attention" for i in range(self.num_layers)]


# A KV-heavy, compute-light model: 64 KiB of KV per token, so moving KV is a
# visible part of time-to-first-token on a CPU. With 16 layers, weights as large
# as the small model's make the network chaotic: changing only how the prefill
# is batched changes the greedy tokens. 0.08 keeps outputs stable under
# re-batching (checked with prefill chunks of 2048, 2047 and 1024 tokens) yet
# varied, so identical cold/warm outputs still mean identical KV.
KV_HEAVY = TinyLlamaSpec(
    num_layers=16, hidden_size=256, num_heads=4, num_kv_heads=4, head_dim=256, intermediate_size=256, initializer_range=0.08
)


def _word_indices(count: int, offset: int, vocab_words: int) -> list[int]:
    return [(offset + i * 7919) % vocab_words for i in range(count)]


def prompt_words(count: int, offset: int = 0, vocab_words: int = TinyLlamaSpec.vocab_words) -> str:
    """A prompt of ``count`` vocabulary words (one token each)."""
    return " ".join(f"w{i}" for i in _word_indices(count, offset, vocab_words))


def prompt_token_ids(count: int, offset: int = 0, vocab_words: int = TinyLlamaSpec.vocab_words) -> list[int]:
    """The token ids of :func:`prompt_words` (word ``wN`` is id ``N + len(SPECIAL)``)."""
    return [len(SPECIAL) + i for i in _word_indices(count, offset, vocab_words)]


def build(out: Path, spec: TinyLlamaSpec = TinyLlamaSpec()) -> Path:
    """Write the checkpoint and tokenizer to ``out`` unless it already holds this spec."""
    out = Path(out)
    marker = out / SPEC_FILE
    if marker.exists() and json.loads(marker.read_text()) == asdict(spec):
        return out
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(SPECIAL + [f"w{i}" for i in range(spec.vocab_words)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.save_pretrained(out)

    mixed = spec.layer_types()
    attention = {"layer_types": mixed, "sliding_window": spec.sliding_window} if mixed else {}
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
        torch_dtype="bfloat16",
        tie_word_embeddings=False,
        initializer_range=spec.initializer_range,
        **attention,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    marker.write_text(json.dumps(asdict(spec), indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build a small random Llama checkpoint.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--kv-heavy", action="store_true", help="16 layers, 4 KV heads x 256 (64 KiB KV per token)")
    a = p.parse_args(argv)
    spec = KV_HEAVY if a.kv_heavy else TinyLlamaSpec()
    print(build(a.out, spec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
