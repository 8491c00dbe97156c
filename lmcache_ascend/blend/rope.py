"""Re-rotation of cached K to new positions, on lmcache_ascend's ``rotary_embedding_k_fused``.

:func:`cos_sin_table` builds the table the op reads (vLLM's layout: per
position ``rot_dim / 2`` cosines then ``rot_dim / 2`` sines) from a model's
inverse frequencies, in float32 with the same arithmetic as transformers'
default rotary embedding, so a re-rotated K matches a freshly computed one to
float precision. :class:`KeyRotator` applies it to ``[tokens, heads * head]``
rows in place (NeoX pairing, as Llama uses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmcache_ascend.kernels.rope_ops import rotary_embedding_k_fused


def cos_sin_table(inv_freq: torch.Tensor, max_positions: int, scaling: float = 1.0) -> torch.Tensor:
    """``[max_positions, 2 * len(inv_freq)]`` float32: cos(p * f) | sin(p * f), times ``scaling``."""
    if inv_freq.dim() != 1 or inv_freq.numel() < 1:
        raise ValueError(f"inv_freq must be a non-empty 1-D tensor, got shape {tuple(inv_freq.shape)}")
    if max_positions < 1:
        raise ValueError(f"max_positions must be >= 1, got {max_positions}")
    positions = torch.arange(max_positions, device=inv_freq.device).float()
    freqs = positions[:, None] * inv_freq.float()[None, :]
    return torch.cat([freqs.cos() * scaling, freqs.sin() * scaling], dim=-1)


@dataclass(frozen=True)
class KeyRotator:
    table: torch.Tensor  # [max_positions, rot_dim]
    head_size: int
    is_neox: bool = True

    def __post_init__(self) -> None:
        if self.table.dim() != 2 or self.table.shape[1] > self.head_size:
            raise ValueError(f"table must be [positions, rot_dim <= head_size {self.head_size}], got {tuple(self.table.shape)}")

    @property
    def max_positions(self) -> int:
        return self.table.shape[0]

    def __call__(self, old_positions: torch.Tensor, new_positions: torch.Tensor, rows: torch.Tensor) -> None:
        """Rotate ``rows`` ``[T, heads * head_size]`` (a view is fine) in place."""
        if rows.dim() != 2 or rows.shape[1] % self.head_size:
            raise ValueError(f"rows must be [tokens, heads * {self.head_size}], got {tuple(rows.shape)}")
        if rows.shape[0] == 0:
            return
        table = self.table if self.table.device == rows.device else self.table.to(rows.device)
        keys = rows.view(rows.shape[0], -1, self.head_size)
        rotary_embedding_k_fused(
            old_positions.to(rows.device), new_positions.to(rows.device), keys, self.head_size, table, self.is_neox
        )
