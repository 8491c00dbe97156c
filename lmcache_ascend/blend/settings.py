"""Blend settings, read from LMCache's configuration.

LMCache keys used: ``enable_blending`` (must be on), ``blend_recompute_ratios``
(the first entry is the ratio, as upstream uses it), ``blend_check_layers`` (the
first entry is the layer where tokens are selected; later layers compute only
the selected tokens) and, ours, ``extra_config["blend_hole_mode"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HOLE_MODE_KEY = "blend_hole_mode"
SPECIAL_STR = " # # "  # LMCache's default blend_special_str
DEFAULT_RATIO = 0.15
DEFAULT_CHECK_LAYER = 1


@dataclass(frozen=True)
class BlendSettings:
    recompute_ratio: float = DEFAULT_RATIO
    check_layer: int = DEFAULT_CHECK_LAYER
    hole_mode: bool = False

    def __post_init__(self) -> None:
        ratio = self.recompute_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            raise TypeError(f"recompute_ratio must be a number, got {type(ratio).__name__}")
        if not 0.0 <= float(ratio) <= 1.0:
            raise ValueError(f"recompute_ratio must lie in [0, 1], got {ratio}")
        if isinstance(self.check_layer, bool) or not isinstance(self.check_layer, int):
            raise TypeError(f"check_layer must be an int, got {type(self.check_layer).__name__}")
        if self.check_layer < 0:
            raise ValueError(f"check_layer must be >= 0, got {self.check_layer}")
        if not isinstance(self.hole_mode, bool):
            raise TypeError(f"hole_mode must be a bool, got {type(self.hole_mode).__name__}")

    def check_model(self, num_layers: int) -> None:
        if self.check_layer >= num_layers:
            raise ValueError(f"check_layer {self.check_layer} must be < the model's {num_layers} layers")

    @classmethod
    def from_lmcache_config(cls, config: Any) -> BlendSettings:
        """Settings from an ``LMCacheEngineConfig`` with ``enable_blending`` on."""
        if not getattr(config, "enable_blending", False):
            raise ValueError("config: enable_blending must be on for CacheBlend")
        ratios = getattr(config, "blend_recompute_ratios", None) or [DEFAULT_RATIO]
        layers = getattr(config, "blend_check_layers", None) or [DEFAULT_CHECK_LAYER]
        extra = getattr(config, "extra_config", None) or {}
        hole = extra.get(HOLE_MODE_KEY, False)
        if isinstance(hole, str):
            if hole.strip().lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config: extra_config[{HOLE_MODE_KEY!r}] must be a bool, got {hole!r}")
            hole = hole.strip().lower() in ("true", "1")
        return cls(recompute_ratio=float(ratios[0]), check_layer=int(layers[0]), hole_mode=bool(hole))
