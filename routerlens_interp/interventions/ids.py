"""Layer numbers and expert ids as masks and expert sets take them: integers only (``int()`` would turn 1.5,
2.0, True or "3" silently into another expert)."""
from __future__ import annotations

import numbers

import torch


def _layer_key(layer) -> int:
    """A layer number from an int or a JSON key ("3"); anything else (1.5, true, "a") is refused."""
    if isinstance(layer, str) and layer.isascii() and layer.isdigit():
        return int(layer)
    if isinstance(layer, numbers.Integral) and not isinstance(layer, bool):
        return int(layer)
    raise ValueError(f"ExpertSet layer {layer!r} is not a layer number (an integer, or its digits as a JSON key)")


def _expert_id(layer, e) -> int:
    """An expert id: an integer (Python, NumPy or a 0-d integer tensor). 1.5, 2.0, true and "3" are refused:
    ``int()`` would turn them silently into another expert."""
    if isinstance(e, torch.Tensor) and e.dim() == 0 and not (e.is_floating_point() or e.is_complex()
                                                              or e.dtype == torch.bool):
        return int(e)
    if isinstance(e, numbers.Integral) and not isinstance(e, bool):
        return int(e)
    raise ValueError(f"ExpertSet layer {layer!r}: expert id {e!r} ({type(e).__name__}) is not an integer; "
                     "write ids as whole numbers, e.g. [3, 7]")
