"""Import torchvision safely on a CPU-only torch.

The torchvision 0.28.0 wheel on PyPI is a CUDA build. Imported next to the CPU build
of torch 2.13.0 it fails with ``operator torchvision::nms does not exist``, because its
compiled operators are not loaded. Defining the ``nms``/``qnms`` operator schemas first
lets the pure-Python parts (models, transforms, weights API) import normally; the
detection operators themselves are not used by this project. Decoding with
``torchvision.io`` stays unavailable: this project decodes with Pillow.
"""

from __future__ import annotations

import sys
from types import ModuleType

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIB = None  # keeps the torch.library fragment alive for the process


def import_torchvision() -> ModuleType:
    """Return the ``torchvision`` module, working around the CPU-torch import error."""
    global _LIB
    try:
        import torchvision

        return torchvision
    except RuntimeError as err:  # pragma: no branch - only on CPU torch + CUDA torchvision
        if "torchvision::nms" not in str(err):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    _LIB = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS.values():
        try:
            _LIB.define(schema)
        except RuntimeError:  # already defined by someone else
            pass
    import torchvision

    return torchvision
