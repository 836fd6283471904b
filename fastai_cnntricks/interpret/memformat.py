"Run a model in another memory format (channels_last is faster for convolutions) and put the original tensors back."
from __future__ import annotations
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ['memory_format']


@contextmanager
def memory_format(model: nn.Module, fmt=torch.channels_last, enabled=True):
    """Convert `model`'s 4-D parameters and buffers to `fmt` inside the block; afterwards the very tensors it had
    are put back (same storage, strides and values), also when the block raises."""
    if not enabled: yield model; return
    params = [(p, p.data) for p in model.parameters()]
    bufs = [(m, k, b) for m in model.modules() for k, b in m._buffers.items() if b is not None]
    try:
        model.to(memory_format=fmt)
        yield model
    finally:
        for p, d in params: p.data = d
        for m, k, b in bufs: m._buffers[k] = b
