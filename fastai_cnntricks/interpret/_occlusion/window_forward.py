"""Forward passes of occluded copies of one image, one batch of windows at a time.

An occluded image differs from the image only inside its window, and a convolution, a pooling or a whole residual
block changes its output only where its receptive field meets a change. So the first layers of a CNN need computing
only around each window (incremental inference, as in Nakandala et al., "Incremental and Approximate Inference for
Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019). The model runs once on the image, keeping the input of
each module of its opening chain (`forward_chain`); then, per batch of windows, each of those modules runs only on a
crop around the changed patch (the image's activations with the patch pasted in) and hands its changed patch to the
next. Where the crop would exceed `max_crop` of the map, the patch is pasted into the image's activations and the
rest of the network runs as usual. On resnet18 at 224 px with 16 px windows this covers the stem, layer1 and layer2.

Exactness: an output computed on a crop equals the full pass's wherever its receptive field lies inside the crop, or
runs past a crop edge that is also the map's edge (padding then acts as in the full pass); crop starts are multiples
of the module's stride, so the output grids coincide. Receptive fields are measured (`local_geometry`); the modules
before the hand-over point see NaNs in place of the image, so a model reading the image or their outputs anywhere
else is caught when the scheme is checked against full passes on three windows. Otherwise, or when nothing is
local, the occluded images go through the model whole.
"""
from __future__ import annotations
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from ..memformat import memory_format_for
from .call_chain import forward_chain
from .inference_copy import set_module
from .receptive_field import local_geometry

__all__ = ['WindowGrid', 'occluded_images', 'window_forward']


class WindowGrid(NamedTuple):
    "The occluding windows: their size (h, w) in px and the start rows `ys` / columns `xs` of the grid (1-D tensors)."
    window: tuple
    ys: torch.Tensor
    xs: torch.Tensor


class AxisCrop(NamedTuple):
    "Along one axis, per window: the module's changed outputs (`count` of them from `first`) and the crop it runs on."
    count: int  # changed outputs per window
    first: torch.Tensor  # (n windows,) index of the first changed output
    length: int  # crop length
    start: torch.Tensor  # (n windows,) crop start


def occluded_images(x, base, grid):
    """(iy, ix) -> the images `x` occluded by `base` in those windows (index tensors (B,) each), built in one
    vectorized `where` (no per-window loop), as an NCHW view of channels-last memory."""
    _, _, h, w = x.shape
    hh, ww = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    x_hwc, base_hwc = x.permute(0, 2, 3, 1), base.expand_as(x).permute(0, 2, 3, 1)

    def images(iy, ix):
        y0, x0 = grid.ys[iy], grid.xs[ix]
        rows = (hh >= y0[:, None]) & (hh < y0[:, None] + grid.window[0])
        cols = (ww >= x0[:, None]) & (ww < x0[:, None] + grid.window[1])
        mask = (rows[:, :, None] & cols[:, None, :])[..., None]  # (B, H, W, 1)
        return torch.where(mask, base_hwc, x_hwc).permute(0, 3, 1, 2)
    return images


def _full_forward(model, x, base, grid, channels_last):
    "(iy, ix) -> the model's logits on the occluded images, in the model's memory format."
    images = occluded_images(x, base, grid)

    def occluded_forward(iy, ix):
        xb = images(iy, ix)
        return model(xb if channels_last else xb.contiguous())
    return occluded_forward


def _ceil_div(a, b): return -((-a) // b)


def _crop_plan(p, m_in, n, n_out, geometry):
    """Along one axis, for a changed patch of `m_in` starting at `p` (one per window) on a side of `n`, feeding a
    module whose output j reads inputs j*stride - lo .. j*stride + hi (`geometry`): the `AxisCrop` -- or None if
    the crop would span the side."""
    s, lo, hi = geometry
    m = min((m_in - 1 + lo + hi) // s + 1, n_out)
    j0 = _ceil_div(p - hi, s).clamp(0, n_out - m)
    before, after = _ceil_div(lo, s), _ceil_div(hi + 1, s) - 1  # strides of margin each side
    length = (m + before + after) * s + n % s  # n % s: a crop ending at the map's edge still starts on the stride grid
    if length >= n: return None
    c0 = ((j0 - before) * s).clamp(0, n - length)
    reads_inside = (c0 <= j0 * s - lo) | (c0 == 0)
    ends_inside = (c0 + length >= (j0 + m - 1) * s + hi + 1) | (c0 + length == n)
    holds_patch = (c0 <= p) & (p + m_in <= c0 + length)
    exact = reads_inside & ends_inside & holds_patch
    return AxisCrop(count=m, first=j0, length=length, start=c0) if bool(exact.all()) else None


class _Precomputed(nn.Module):
    "Stands in for the last module run on crops: returns the activations set before the forward pass."
    def __init__(self): super().__init__(); self.out = None
    def forward(self, x): return self.out


def _arange(n, device): return torch.arange(n, device=device)


class _CropStep:
    """One module of the chain, run on a crop around each window's changed patch (or on the patch, if pointwise).
    The patch fed in starts at `patch_at` (rows, columns: a tensor over windows each) and has `patch_size` (h, w)."""
    def __init__(self, module, act, geometry, patch_at, patch_size, crop_y, crop_x, fmt):
        dev = act.device
        self.module, self.fmt, self.act = module, fmt, act.permute(0, 2, 3, 1)[0].contiguous()  # (H, W, C)
        self.pointwise = geometry == ((1, 0, 0), (1, 0, 0))
        self.patch_at, self.stride = patch_at, (geometry[0][0], geometry[1][0])
        self.y, self.x = crop_y, crop_x
        self.crop_ry, self.crop_rx = _arange(crop_y.length, dev), _arange(crop_x.length, dev)
        self.patch_ry, self.patch_rx = _arange(patch_size[0], dev), _arange(patch_size[1], dev)
        self.out_ry, self.out_rx = _arange(crop_y.count, dev), _arange(crop_x.count, dev)

    def __call__(self, patch, iy, ix, b):  # patch (B, h, w, C) at patch_at[..][iy / ix]; b: arange(B)[:, None, None]
        if self.pointwise: return self.module(patch.permute(0, 3, 1, 2).contiguous(memory_format=self.fmt)
                                              ).permute(0, 2, 3, 1)
        c0y, c0x = self.y.start[iy], self.x.start[ix]
        # (B, Ly, Lx, C): the image's activations around the window, then its changed patch pasted in
        crop = self.act[(c0y[:, None] + self.crop_ry)[:, :, None], (c0x[:, None] + self.crop_rx)[:, None, :]]
        crop[b, (self.patch_at[0][iy] - c0y)[:, None, None] + self.patch_ry[:, None],
             (self.patch_at[1][ix] - c0x)[:, None, None] + self.patch_rx] = patch
        out = self.module(crop.permute(0, 3, 1, 2).contiguous(memory_format=self.fmt)).permute(0, 2, 3, 1)
        return out[b, (self.y.first[iy] - c0y // self.stride[0])[:, None, None] + self.out_ry[:, None],
                   (self.x.first[ix] - c0x // self.stride[1])[:, None, None] + self.out_rx]  # the next patch


class _PlanStep(NamedTuple):
    name: str  # the module's name in the model
    step: _CropStep
    out: torch.Tensor  # the module's output on the image itself


def _plan(model, xm, grid, fmt, max_crop):
    "[_PlanStep] for the opening chain of `model` on `xm`, as far as crops pay."
    _, _, h, w = xm.shape
    window = grid.window
    patch_at = (grid.ys.clamp(max=h - window[0]), grid.xs.clamp(max=w - window[1]))  # border windows shifted in
    patch_size, plan, a = window, [], xm
    with torch.no_grad():
        for name, module in forward_chain(model, xm):
            out = module(a.clone())  # a clone: the module may work in place
            if not (isinstance(out, torch.Tensor) and out.dim() == 4): break
            g = local_geometry(module, a)
            if g is None: break
            py = _crop_plan(patch_at[0], patch_size[0], n=a.shape[2], n_out=out.shape[2], geometry=g[0])
            px = _crop_plan(patch_at[1], patch_size[1], n=a.shape[3], n_out=out.shape[3], geometry=g[1])
            if py is None or px is None or py.length * px.length > max_crop * a.shape[2] * a.shape[3]: break
            step = _CropStep(module, a, geometry=g, patch_at=patch_at, patch_size=patch_size, crop_y=py, crop_x=px,
                             fmt=fmt)
            plan.append(_PlanStep(name, step, out))
            patch_at, patch_size, a = (py.first, px.first), (py.count, px.count), out
    return plan


def _incremental_forward(model, x, base, grid, fmt, plan):
    "(iy, ix) -> logits, running `plan`'s modules on crops; it expects them swapped for the stand-ins it names."
    names, steps, last = [p.name for p in plan], [p.step for p in plan], plan[-1].out
    stand_ins = [nn.Identity() for _ in names[:-1]] + [_Precomputed()]
    x_hwc, base_hwc = x.permute(0, 2, 3, 1)[0], base.expand_as(x).permute(0, 2, 3, 1)[0]
    window, ys, xs = grid
    ar_y, ar_x = _arange(window[0], x.device), _arange(window[1], x.device)
    nan = torch.full_like(x, float('nan')).contiguous(memory_format=fmt)  # the model must not read the image itself

    def incremental(iy, ix):
        first = steps[0]
        rows, cols = first.patch_at[0][iy][:, None] + ar_y, first.patch_at[1][ix][:, None] + ar_x  # (B, window)
        in_rows = (rows >= ys[iy][:, None]) & (rows < ys[iy][:, None] + window[0])
        in_cols = (cols >= xs[ix][:, None]) & (cols < xs[ix][:, None] + window[1])
        inside = in_rows[:, :, None, None] & in_cols[:, None, :, None]
        patch = torch.where(inside, base_hwc[rows[:, :, None], cols[:, None, :]],
                            x_hwc[rows[:, :, None], cols[:, None, :]])  # (B, wy, wx, C): the occluded pixels
        b, s = len(iy), steps[-1]
        bi = _arange(b, x.device)[:, None, None]
        for step in steps: patch = step(patch, iy, ix, bi)
        out = last.expand(b, -1, -1, -1).contiguous(memory_format=fmt)
        out.permute(0, 2, 3, 1)[bi, (s.y.first[iy][:, None] + s.out_ry)[:, :, None],
                                (s.x.first[ix][:, None] + s.out_rx)[:, None, :]] = patch  # the changed patch pasted in
        stand_ins[-1].out = out
        try: return model(nan.expand(b, -1, -1, -1))
        finally: stand_ins[-1].out = None
    incremental.units, incremental.stand_ins = names, stand_ins
    return incremental


def _swap(model, names, modules):
    for n, m in zip(names, modules): set_module(model, n, m)


def _with_originals(full, model, units, originals, stand_ins):
    "`full`, run with the original modules swapped back in for the duration of each call."
    def run(iy, ix):
        _swap(model, units, originals)
        try: return full(iy, ix)
        finally: _swap(model, units, stand_ins)
    return run


def _close(got, ref):
    return (isinstance(got, torch.Tensor) and got.shape == ref.shape
            and bool((got - ref).abs().max() <= 1e-4 * ref.abs().max().clamp_min(1e-6)))


@contextmanager
def window_forward(model, x, base, window, ys, xs, *, channels_last=True, incremental=True, max_crop=0.5):
    """A context giving a function (iy, ix) -> logits of the image `x` (1, C, H, W) occluded by `base` in the
    windows of `window` px starting at (ys[iy], xs[ix]), for index tensors iy, ix (B,); its `units` attribute names
    the modules computed incrementally, its `paths` the forwards to choose from (name -> function: 'incremental',
    when it is exact, then 'full'). `model` must be a throw-away `inference_copy`: with `incremental`, the
    modules of its opening chain are swapped, until exit, for stand-ins."""
    grid = WindowGrid(tuple(window), ys, xs)
    full = _full_forward(model, x, base, grid, channels_last)
    full.units = []
    fmt = memory_format_for(channels_last)
    plan = _plan(model, x.contiguous(memory_format=fmt), grid, fmt, max_crop) if incremental else []
    # Check the first, a middle and the last window against full passes, with the original modules in place. If a
    # later layer reads a chain module's output too, handing over after the first module may still be exact.
    iy = torch.tensor([0, len(ys) // 2, len(ys) - 1], device=x.device)
    ix = torch.tensor([0, len(xs) // 2, len(xs) - 1], device=x.device)
    ref = full(iy, ix) if plan else None

    def exact(k):  # the incremental forward over plan[:k], if it matches the full passes
        fwd = _incremental_forward(model, x, base, grid=grid, fmt=fmt, plan=plan[:k])
        originals = [model.get_submodule(n) for n in fwd.units]
        _swap(model, fwd.units, fwd.stand_ins)
        try: got = fwd(iy, ix)
        except Exception: got = None  # e.g. a later layer expecting a chain module's output of another shape
        finally: _swap(model, fwd.units, originals)
        return (fwd, originals) if _close(got, ref) else None
    # The longest exact prefix, by bisection: a module whose geometry was mis-measured (its local change too small to
    # see, as in a ConvNeXt block whose layer scale starts at 1e-6) spoils every prefix that holds it.
    found = exact(len(plan)) if plan else None  # the common case: one check
    lo, hi = 0, len(plan) - 1  # otherwise plan[:lo] is exact (or empty) and plan[:hi + 1] is not
    while found is None and lo < hi:
        k = (lo + hi + 1) // 2
        res = exact(k)
        if res is None: hi = k - 1
        else: lo, best = k, res
        if lo == hi: found = best if lo else None
    if found is not None:
        fwd, originals = found
        fwd.paths = dict(incremental=fwd, full=_with_originals(full, model, fwd.units, originals, fwd.stand_ins))
        _swap(model, fwd.units, fwd.stand_ins)
        try: yield fwd
        finally: _swap(model, fwd.units, originals)
        return
    full.paths = dict(full=full)
    yield full
