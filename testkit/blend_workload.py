"""A synthetic multi-document (RAG-style) workload for CacheBlend, with holes.

A prompt is ``doc_1 SEP doc_2 SEP ... SEP doc_n SEP question``: the documents
are the reusable segments, the question is new each time. Documents are
precomputed (prefilled alone, then stored); a *hole* at index ``h`` replaces
document ``h`` by one that was never cached. Tokens are ids of the tiny
model's word-level vocabulary (:mod:`testkit.tiny_model`), so they
never contain the separator.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmcache_ascend.blend.settings import SPECIAL_STR
from testkit.tiny_model import prompt_token_ids

__all__ = ["SPECIAL_STR", "MultiDocWorkload", "separator_tokens"]


def separator_tokens(tokenizer: object, special_str: str = SPECIAL_STR) -> list[int]:
    """The separator LMCache's ``SegmentTokenDatabase`` matches: ``encode(special_str)[1:]``."""
    sep = list(tokenizer.encode(special_str))[1:]  # type: ignore[attr-defined]
    if not sep:
        raise ValueError(f"special_str {special_str!r} encodes to fewer than two tokens")
    return sep


@dataclass(frozen=True)
class MultiDocWorkload:
    num_docs: int
    doc_len: int
    question_len: int
    separator: tuple[int, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_docs < 1 or self.doc_len < 1 or self.question_len < 1:
            raise ValueError("num_docs, doc_len and question_len must be >= 1")
        if not self.separator:
            raise ValueError("separator must not be empty")

    def document(self, index: int) -> list[int]:
        """Cached document ``index``; ``-1 - k`` names the k-th never-cached (hole) document."""
        return prompt_token_ids(self.doc_len, offset=1 + self.seed * 997 + index * 131)

    def question(self, variant: int = 0) -> list[int]:
        return prompt_token_ids(self.question_len, offset=7 + self.seed * 997 + variant * 53 + 50_000)

    def document_span(self, index: int) -> tuple[int, int]:
        """Token range ``[start, end)`` of the document at position ``index`` of a prompt."""
        if not 0 <= index < self.num_docs:
            raise ValueError(f"index: {index} is not a document position in [0, {self.num_docs})")
        start = index * (self.doc_len + len(self.separator))
        return start, start + self.doc_len

    def documents(self) -> list[list[int]]:
        return [self.document(i) for i in range(self.num_docs)]

    def prompt(self, holes: tuple[int, ...] = (), variant: int = 0) -> list[int]:
        """The documents in order, those at ``holes`` replaced by never-cached ones, then a question."""
        for h in holes:
            if not 0 <= h < self.num_docs:
                raise ValueError(f"holes: {h} is not a document index in [0, {self.num_docs})")
        parts = [self.document(-1 - i) if i in holes else self.document(i) for i in range(self.num_docs)]
        parts.append(self.question(variant))
        tokens: list[int] = []
        for i, part in enumerate(parts):
            if i:
                tokens.extend(self.separator)
            tokens.extend(part)
        return tokens
