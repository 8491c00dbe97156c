"""The blended forward of one prompt, one layer at a time.

Token ``i`` sits at position ``i``. Every layer receives that layer's K/V rows
``[T, Hkv * d]`` for the whole prompt from the device connector (cached
segments already re-rotated; other rows zero or the engine's own) and completes
them in place:

- before the check layer every token is computed, and its fresh K/V replaces
  the loaded rows (the attention uses exactly what is later cached);
- at the check layer the squared distance between fresh and loaded K per token
  (float32, summed over heads) feeds :meth:`BlendPlan.select`; from here on
  only the selected rows are computed, and only their K/V rows are replaced;
- the selected rows attend over all ``T`` keys with the exact causal mask of
  their positions (key ``j`` visible to query ``i`` iff ``j <= i``).

With every token selected (ratio 1.0) this is the model's own forward.
"""

from __future__ import annotations

import torch

from lmcache_ascend.blend.model import LayerModel
from lmcache_ascend.blend.plan import BlendPlan


class BlendForward:
    def __init__(self, model: LayerModel, plan: BlendPlan, tokens: torch.Tensor) -> None:
        if tokens.dim() != 1 or tokens.numel() != plan.num_tokens:
            raise ValueError(f"tokens must be 1-D with {plan.num_tokens} entries, got shape {tuple(tokens.shape)}")
        self.model = model
        self.plan = plan
        self.rows = torch.arange(plan.num_tokens, device=model.device)
        self.selected: torch.Tensor | None = None
        self.hidden = model.embed(tokens)

    def run_layer(self, layer: int, k_rows: torch.Tensor, v_rows: torch.Tensor) -> None:
        """Compute ``layer`` for the current rows, completing ``k_rows`` / ``v_rows`` in place."""
        m = self.model
        num_tokens = self.plan.num_tokens
        if tuple(k_rows.shape) != (num_tokens, m.kv_row) or k_rows.shape != v_rows.shape:
            raise ValueError(f"layer {layer}: K/V rows must be [{num_tokens}, {m.kv_row}], got {tuple(k_rows.shape)}")
        if k_rows.dtype != m.dtype:
            raise TypeError(f"layer {layer}: KV dtype {k_rows.dtype} differs from the model's {m.dtype}")
        residual = self.hidden
        q, k, v = m.project(layer, m.attention_input(layer, residual), self.rows)
        if layer == self.plan.check_layer and self.selected is None:
            fresh = _as_rows(k).float()
            deviation = (fresh - k_rows.to(fresh.device).float()).pow(2).sum(dim=-1)
            keep = self.plan.select(deviation).to(m.device)
            if keep.numel() < num_tokens:  # all kept: leave the tensors exactly as they are
                q, k, v = q[:, :, keep], k[:, :, keep], v[:, :, keep]
                residual = residual[:, keep]
            self.rows = self.selected = keep
        k_rows[self.rows.to(k_rows.device)] = _as_rows(k).to(k_rows.device)
        v_rows[self.rows.to(v_rows.device)] = _as_rows(v).to(v_rows.device)
        keys = _as_heads(k_rows.to(m.device), m.num_kv_heads)
        values = _as_heads(v_rows.to(m.device), m.num_kv_heads)
        out = m.attend(layer, q, keys, values, causal_mask(self.rows, num_tokens, q.dtype))
        self.hidden = m.finish(layer, residual, out)

    def output(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final-norm hidden states ``[n, D]`` of the computed rows, and those rows' positions."""
        return self.model.final_norm(self.hidden)[0], self.rows


def causal_mask(rows: torch.Tensor, num_keys: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask ``[1, 1, len(rows), num_keys]``: 0 where key <= query position, dtype min elsewhere."""
    keys = torch.arange(num_keys, device=rows.device)
    visible = keys[None, :] <= rows[:, None]
    zero = torch.zeros((), dtype=dtype, device=rows.device)
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=rows.device)
    return torch.where(visible, zero, blocked)[None, None]


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """``[1, H, n, d]`` -> ``[n, H * d]`` (the ``KV_2TD`` row layout)."""
    return x[0].transpose(0, 1).reshape(x.shape[2], -1)


def _as_heads(rows: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[T, H * d]`` -> ``[1, H, T, d]``, a view with transformers' K/V strides."""
    return rows.view(1, rows.shape[0], num_heads, -1).transpose(1, 2)
