"Run a model in another memory format (channels_last is faster for convolutions) and put the original tensors back."
from __future__ import annotations
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ['memory_format']


def memory_format_for(channels_last: bool) -> torch.memory_format:
    "`torch.channels_last` if `channels_last`, else `torch.contiguous_format`."
    return torch.channels_last if channels_last else torch.contiguous_format


@contextmanager
def memory_format(model: nn.Module, fmt=torch.channels_last, enabled=True):
    """Convert `model`'s 4-D parameters, their grads and its buffers to `fmt` inside the block; afterwards the very
    tensors it had are put back (same storage, strides and values), also when the block raises."""
    if not enabled: yield model; return
    params = [(p, p.data) for p in model.parameters()]
    # `Module.to` converts a parameter's grad in place (`grad.data = ...`): keep the grad's own data to put back.
    grads = [(p, p.grad, p.grad.data) for p in model.parameters() if p.grad is not None]
    bufs = [(m, k, b) for m in model.modules() for k, b in m._buffers.items() if b is not None]
    try:
        model.to(memory_format=fmt)
        yield model
    finally:
        for p, d in params: p.data = d
        for p, g, d in grads: g.data = d; p.grad = g
        for m, k, b in bufs: m._buffers[k] = b
