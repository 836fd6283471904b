"""Which input rows and columns a module's output depends on, measured rather than derived, so that any local module
(a convolution, a pooling, a whole residual block) is covered without knowing its code.

Perturbing input rows r and r + 1 changes output rows ceil((r - hi) / s) .. floor((r + 1 + lo) / s) when output row
j depends only on input rows j*s - lo .. j*s + hi (two rows, so that a kernel dilated by 2 has no blind rows). We
perturb `rows` such pairs of rows (and of columns) of a crop of the module's real input, one per batch item, and read
s, lo and hi off the changed outputs; a module that is not local (it pools globally, say) or that the crop is too
small to tell about gives None. Plain convolutions and elementwise modules (norms in eval mode, activations), most of
an opening chain, have their geometry read off their settings instead: measuring each cost about as much as the
windows it saves at small sizes. Either way the scheme is checked against full passes before it is used.
"""
from __future__ import annotations
from typing import NamedTuple

import torch
from torch import nn

__all__ = ['AxisGeometry', 'known_geometry', 'local_geometry']


class AxisGeometry(NamedTuple):
    "Along one axis: output j reads inputs j*stride - lo .. j*stride + hi."
    stride: int
    lo: int
    hi: int


def _axis(changed, r0, n_in, n_out):
    "(stride, lo, hi) from which outputs `changed` (R, n_out) when input rows r0 + t and r0 + t + 1 were perturbed."
    s = max(1, round(n_in / n_out))
    spans = []
    for row in changed:
        idx = row.nonzero()[:, 0].tolist()
        if not idx or idx[0] == 0 or idx[-1] == n_out - 1 or len(idx) != idx[-1] - idx[0] + 1: return None
        spans.append((idx[0], idx[-1]))
    lo = max(j1 * s - (r0 + t + 1) for t, (_, j1) in enumerate(spans))
    hi = max((r0 + t) - j0 * s for t, (j0, _) in enumerate(spans))
    predicted = [(-((hi - r0 - t) // s), (r0 + t + 1 + lo) // s) for t in range(len(spans))]
    return AxisGeometry(s, lo, hi) if predicted == spans and lo + hi >= 0 else None


def _centred_crop(n, size):
    """(start, length) of a crop of about `size` px from the middle of a side of `n` px. It starts on a multiple of 8
    and keeps the side's remainder mod 8, so that strides up to 8 see the same phase and 'same' padding computed from
    the input size (timm's Conv2dSame) stays as in the full map."""
    length = min(n, size + n % 8)
    start = (n - length) // 2 // 8 * 8
    return start, length


_POINTWISE = (nn.Identity, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
              nn.LeakyReLU, nn.ELU, nn.Mish, nn.Dropout, nn.Dropout2d)


def _pointwise(module):
    "An elementwise module in eval mode (activations, inference BatchNorms, timm's BatchNormAct2d of such an activation)."
    if type(module) in _POINTWISE: return True
    if type(module) is nn.BatchNorm2d: return not module.training and module.track_running_stats
    if type(module).__name__ == 'BatchNormAct2d':
        return (not module.training and module.track_running_stats and _pointwise(getattr(module, 'act', nn.Identity()))
                and _pointwise(getattr(module, 'drop', nn.Identity())))
    return False


def _conv_geometry(conv):
    "(stride, lo, hi) per axis of a zero-padded nn.Conv2d, from its kernel, stride, padding and dilation; else None."
    if type(conv) is not nn.Conv2d or conv.padding_mode != 'zeros': return None
    if isinstance(conv.padding, str):
        if conv.padding == 'valid': pads = (0, 0)
        else: pads = tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))  # 'same' (stride 1)
    else: pads = conv.padding
    return tuple(AxisGeometry(s, p, d * (k - 1) - p)
                 for k, s, p, d in zip(conv.kernel_size, conv.stride, pads, conv.dilation))


def known_geometry(module):
    "The geometry of a module whose settings give it (plain convolutions, elementwise modules), else None."
    if _pointwise(module): return AxisGeometry(1, 0, 0), AxisGeometry(1, 0, 0)
    return _conv_geometry(module)


@torch.no_grad()
def local_geometry(module, a: torch.Tensor, size: int = 48, rows: int = 4):
    """((stride, lo, hi) along height, the same along width) for `module` fed `a` (1, C, H, W): output (j, k)
    depends only on input rows j*stride - lo .. j*stride + hi and likewise for columns; None if not local or not
    measurable here. `rows` consecutive rows are perturbed: strides up to `rows` are told apart."""
    if not (isinstance(a, torch.Tensor) and a.dim() == 4 and len(a) == 1): return None
    known = known_geometry(module)
    if known is not None: return known
    if min(a.shape[2:]) < 12: return None
    _, c, h, w = a.shape
    (y0, lh), (x0, lw) = _centred_crop(h, size), _centred_crop(w, size)
    crop = a[:, :, y0:y0 + lh, x0:x0 + lw]
    ry, rx = lh // 2 // rows * rows, lw // 2 // rows * rows
    g = torch.Generator(device=a.device).manual_seed(0)
    scale = 10 * float(crop.float().std()) + 1  # large and of both signs: it survives ReLUs and wins max-pools
    batch = crop.expand(1 + 2 * rows, -1, -1, -1).clone(memory_format=torch.preserve_format)
    for t in range(rows):
        batch[1 + t, :, ry + t:ry + t + 2] += scale * torch.randn(c, 2, lw, generator=g, device=a.device).to(a.dtype)
        batch[1 + rows + t, :, :, rx + t:rx + t + 2] += scale * torch.randn(c, lh, 2, generator=g,
                                                                              device=a.device).to(a.dtype)
    try: out = module(batch)
    except Exception: return None
    if not (isinstance(out, torch.Tensor) and out.dim() == 4 and len(out) == 1 + 2 * rows): return None
    diff = (out[1:] - out[:1]).abs() > 1e-5 * out[:1].abs().max() + 1e-12  # untouched outputs: unchanged
    gy = _axis(diff[:rows].any(3).any(1), ry, lh, out.shape[2])
    gx = _axis(diff[rows:].any(2).any(1), rx, lw, out.shape[3])
    return (gy, gx) if gy and gx else None
