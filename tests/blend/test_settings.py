"""BlendSettings from LMCache's own config: enable_blending, ratios, check layers
and our ``extra_config["blend_hole_mode"]``."""

from __future__ import annotations

from typing import Any

import pytest
from lmcache.v1.config import LMCacheEngineConfig

from lmcache_ascend.blend.settings import HOLE_MODE_KEY, BlendSettings


def config(**over: Any) -> Any:
    return LMCacheEngineConfig.from_defaults(chunk_size=256, use_layerwise=True, enable_blending=True, **over)


def test_reads_lmcache_keys() -> None:
    got = BlendSettings.from_lmcache_config(
        config(blend_recompute_ratios=[0.3, 0.9], blend_check_layers=[2], extra_config={HOLE_MODE_KEY: True})
    )
    assert got == BlendSettings(recompute_ratio=0.3, check_layer=2, hole_mode=True)


def test_defaults_keep_hole_mode_off() -> None:
    got = BlendSettings.from_lmcache_config(config())
    assert got.hole_mode is False
    assert got == BlendSettings()


@pytest.mark.parametrize(("raw", "want"), [("true", True), ("False", False), ("1", True), (False, False)])
def test_hole_mode_from_strings(raw: object, want: bool) -> None:
    assert BlendSettings.from_lmcache_config(config(extra_config={HOLE_MODE_KEY: raw})).hole_mode is want


def test_bad_hole_mode_string_is_refused() -> None:
    with pytest.raises(ValueError, match=HOLE_MODE_KEY):
        BlendSettings.from_lmcache_config(config(extra_config={HOLE_MODE_KEY: "sometimes"}))


def test_blending_off_is_refused() -> None:
    cfg = LMCacheEngineConfig.from_defaults(chunk_size=256)
    with pytest.raises(ValueError, match="enable_blending"):
        BlendSettings.from_lmcache_config(cfg)


@pytest.mark.parametrize(
    ("kwargs", "kind", "name"),
    [
        (dict(recompute_ratio=1.5), ValueError, "recompute_ratio"),
        (dict(recompute_ratio="0.1"), TypeError, "recompute_ratio"),
        (dict(recompute_ratio=True), TypeError, "recompute_ratio"),
        (dict(check_layer=-1), ValueError, "check_layer"),
        (dict(check_layer=1.0), TypeError, "check_layer"),
        (dict(hole_mode=1), TypeError, "hole_mode"),
    ],
)
def test_bad_values_name_the_field(kwargs: dict[str, Any], kind: type[Exception], name: str) -> None:
    with pytest.raises(kind, match=f"^{name}"):
        BlendSettings(**kwargs)


def test_check_layer_must_exist_in_the_model() -> None:
    with pytest.raises(ValueError, match="check_layer"):
        BlendSettings(check_layer=4).check_model(4)
