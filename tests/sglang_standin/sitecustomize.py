"""STAND-IN fix-up for PyPI's torchvision next to CPU torch (SGLang harness only).

SGLang 0.5.23 imports torchvision at start-up (``sglang.srt.configs`` ->
``multimodal.internvl_utils``). PyPI's torchvision 0.28.0 is a CUDA build: its
``_C.so`` does not load beside CPU torch, which torchvision tolerates, but then
``torchvision/_meta_registrations.py`` calls
``torch.library.register_fake("torchvision::nms")`` (and ``qnms``) without the
guard its other registrations have, and ``import torchvision`` fails.

Python imports ``sitecustomize`` at start-up from ``sys.path``; the harness puts
this directory on ``PYTHONPATH`` of the SGLang processes it starts (never the
package, never the test process). Here the two op schemas are declared, with no
kernel: the import succeeds, and calling either op still fails loudly
("no kernel registered"). Nothing a text-only Llama runs calls them.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("torchvision") is not None:
    import torch

    _SCHEMAS = {
        "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
        "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    }
    _missing = [name for name in _SCHEMAS if not hasattr(torch.ops.torchvision, name)]
    if _missing:
        _LIB = torch.library.Library("torchvision", "FRAGMENT")  # kept alive: the schemas live with it
        for _name in _missing:
            _LIB.define(_SCHEMAS[_name])
