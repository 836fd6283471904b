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

import torch
from torch import nn

from .call_chain import forward_chain
from .inference_copy import _set_module
from .receptive_field import local_geometry

__all__ = ['window_forward']


def _fmt(channels_last): return torch.channels_last if channels_last else torch.contiguous_format


def _full_forward(model, x, base, window, ys, xs, channels_last):
    "Occluded images built in one vectorized `where` (no per-window loop), in the model's memory format."
    _, _, h, w = x.shape
    hh, ww = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    x_hwc, base_hwc = x.permute(0, 2, 3, 1), base.expand_as(x).permute(0, 2, 3, 1)

    def occluded_images(iy, ix):  # window indices (B,) each
        y0, x0 = ys[iy], xs[ix]
        rows = (hh >= y0[:, None]) & (hh < y0[:, None] + window[0])
        cols = (ww >= x0[:, None]) & (ww < x0[:, None] + window[1])
        mask = (rows[:, :, None] & cols[:, None, :])[..., None]  # (B, H, W, 1)
        xb = torch.where(mask, base_hwc, x_hwc).permute(0, 3, 1, 2)  # NCHW view of NHWC (channels-last) memory
        return model(xb if channels_last else xb.contiguous())
    return occluded_images


def _ceil_div(a, b): return -((-a) // b)


def _crop_plan(p, m_in, n, n_out, s, lo, hi):
    """Along one axis, for a changed patch of `m_in` starting at `p` (one per window) on a side of `n`, feeding a
    module of stride `s` whose output j reads inputs j*s - lo .. j*s + hi: (changed outputs' count m, their first
    index, crop length L, crop start) -- or None if the crop would span the side."""
    m = min((m_in - 1 + lo + hi) // s + 1, n_out)
    j0 = _ceil_div(p - hi, s).clamp(0, n_out - m)
    before, after = _ceil_div(lo, s), _ceil_div(hi + 1, s) - 1  # strides of margin each side
    L = (m + before + after) * s + n % s  # n % s: a crop ending at the map's edge still starts on the stride grid
    if L >= n: return None
    c0 = ((j0 - before) * s).clamp(0, n - L)
    exact = (((c0 <= j0 * s - lo) | (c0 == 0)) & ((c0 + L >= (j0 + m - 1) * s + hi + 1) | (c0 + L == n))
             & (c0 <= p) & (p + m_in <= c0 + L))
    return (m, j0, L, c0) if bool(exact.all()) else None


class _Precomputed(nn.Module):
    "Stands in for the last module run on crops: returns the activations set before the forward pass."
    def __init__(self): super().__init__(); self.out = None
    def forward(self, x): return self.out


class _CropStep:
    "One module of the chain, run on a crop around each window's changed patch (or on the patch, if pointwise)."
    def __init__(self, module, act, geometry, p_in, m_in, plan_y, plan_x, fmt):
        self.module, self.fmt, self.act = module, fmt, act.permute(0, 2, 3, 1)[0].contiguous()  # (H, W, C)
        self.pointwise = geometry == ((1, 0, 0), (1, 0, 0))
        self.p_in, self.m_in, self.stride = p_in, m_in, (geometry[0][0], geometry[1][0])
        (self.my, self.j0y, self.ly, self.c0y), (self.mx, self.j0x, self.lx, self.c0x) = plan_y, plan_x
        ar = lambda k: torch.arange(k, device=act.device)
        self.ar_ly, self.ar_lx, self.ar_hy, self.ar_hx = ar(self.ly), ar(self.lx), ar(m_in[0]), ar(m_in[1])
        self.ar_my, self.ar_mx = ar(self.my), ar(self.mx)

    def __call__(self, patch, iy, ix, b):  # patch (B, h, w, C) at self.p_in[...][iy / ix]; b: arange(B)[:, None, None]
        if self.pointwise: return self.module(patch.permute(0, 3, 1, 2).contiguous(memory_format=self.fmt)
                                              ).permute(0, 2, 3, 1)
        c0y, c0x = self.c0y[iy], self.c0x[ix]
        # (B, Ly, Lx, C): the image's activations around the window, then its changed patch pasted in
        crop = self.act[(c0y[:, None] + self.ar_ly)[:, :, None], (c0x[:, None] + self.ar_lx)[:, None, :]]
        crop[b, (self.p_in[0][iy] - c0y)[:, None, None] + self.ar_hy[:, None],
             (self.p_in[1][ix] - c0x)[:, None, None] + self.ar_hx] = patch
        out = self.module(crop.permute(0, 3, 1, 2).contiguous(memory_format=self.fmt)).permute(0, 2, 3, 1)
        return out[b, (self.j0y[iy] - c0y // self.stride[0])[:, None, None] + self.ar_my[:, None],
                   (self.j0x[ix] - c0x // self.stride[1])[:, None, None] + self.ar_mx]  # the next patch


def _plan(model, xm, window, ys, xs, fmt, max_crop):
    "[(name, step, activations after it)] for the opening chain of `model` on `xm`, as far as crops pay."
    _, _, h, w = xm.shape
    p, m = (ys.clamp(max=h - window[0]), xs.clamp(max=w - window[1])), window  # windows cut at the border, shifted in
    plan, a = [], xm
    with torch.no_grad():
        for name, module in forward_chain(model, xm):
            out = module(a.clone())  # a clone: the module may work in place
            if not (isinstance(out, torch.Tensor) and out.dim() == 4): break
            g = local_geometry(module, a)
            if g is None: break
            py = _crop_plan(p[0], m[0], a.shape[2], out.shape[2], *g[0])
            px = _crop_plan(p[1], m[1], a.shape[3], out.shape[3], *g[1])
            if py is None or px is None or py[2] * px[2] > max_crop * a.shape[2] * a.shape[3]: break
            plan.append((name, _CropStep(module, a, g, p, m, py, px, fmt), out))
            p, m, a = (py[1], px[1]), (py[0], px[0]), out
    return plan


def _incremental_forward(model, x, base, window, ys, xs, fmt, plan):
    "(iy, ix) -> logits, running `plan`'s modules on crops; it expects them swapped for the stand-ins it names."
    names, steps, last = [n for n, _, _ in plan], [s for _, s, _ in plan], plan[-1][2]
    stand_ins = [nn.Identity() for _ in names[:-1]] + [_Precomputed()]
    x_hwc, base_hwc = x.permute(0, 2, 3, 1)[0], base.expand_as(x).permute(0, 2, 3, 1)[0]
    ar_y, ar_x = torch.arange(window[0], device=x.device), torch.arange(window[1], device=x.device)
    nan = torch.full_like(x, float('nan')).contiguous(memory_format=fmt)  # the model must not read the image itself

    def incremental(iy, ix):
        rows, cols = steps[0].p_in[0][iy][:, None] + ar_y, steps[0].p_in[1][ix][:, None] + ar_x  # (B, window)
        inside = (((rows >= ys[iy][:, None]) & (rows < ys[iy][:, None] + window[0]))[:, :, None, None]
                  & ((cols >= xs[ix][:, None]) & (cols < xs[ix][:, None] + window[1]))[:, None, :, None])
        patch = torch.where(inside, base_hwc[rows[:, :, None], cols[:, None, :]],
                            x_hwc[rows[:, :, None], cols[:, None, :]])  # (B, wy, wx, C): the occluded pixels
        b, s = len(iy), steps[-1]
        bi = torch.arange(b, device=x.device)[:, None, None]
        for step in steps: patch = step(patch, iy, ix, bi)
        out = last.expand(b, -1, -1, -1).contiguous(memory_format=fmt)
        out.permute(0, 2, 3, 1)[bi, (s.j0y[iy][:, None] + s.ar_my)[:, :, None],
                                (s.j0x[ix][:, None] + s.ar_mx)[:, None, :]] = patch  # the changed patch pasted in
        stand_ins[-1].out = out
        try: return model(nan.expand(b, -1, -1, -1))
        finally: stand_ins[-1].out = None
    incremental.units, incremental.stand_ins = names, stand_ins
    return incremental


def _swap(model, names, modules):
    for n, m in zip(names, modules): _set_module(model, n, m)


@contextmanager
def window_forward(model, x, base, window, ys, xs, channels_last=True, incremental=True, max_crop=0.5):
    """A context giving a function (iy, ix) -> logits of the image `x` (1, C, H, W) occluded by `base` in the
    windows of `window` px starting at (ys[iy], xs[ix]), for index tensors iy, ix (B,); its `units` attribute names
    the modules computed incrementally. `model` must be a throw-away `inference_copy`: with `incremental`, the
    modules of its opening chain are swapped, until exit, for stand-ins."""
    full = _full_forward(model, x, base, window, ys, xs, channels_last)
    full.units = []
    fmt = _fmt(channels_last)
    plan = _plan(model, x.contiguous(memory_format=fmt), window, ys, xs, fmt, max_crop) if incremental else []
    # Check the first, a middle and the last window against full passes, with the original modules in place. If a
    # later layer reads a chain module's output too, handing over after the first module may still be exact.
    iy = torch.tensor([0, len(ys) // 2, len(ys) - 1], device=x.device)
    ix = torch.tensor([0, len(xs) // 2, len(xs) - 1], device=x.device)
    ref = full(iy, ix) if plan else None
    for k in (sorted({len(plan), 1}, reverse=True) if plan else []):
        fwd = _incremental_forward(model, x, base, window, ys, xs, fmt, plan[:k])
        originals = [model.get_submodule(n) for n in fwd.units]
        _swap(model, fwd.units, fwd.stand_ins)
        try: got = fwd(iy, ix)
        except Exception: got = None  # e.g. a later layer expecting a chain module's output of another shape
        finally: _swap(model, fwd.units, originals)
        if (isinstance(got, torch.Tensor) and got.shape == ref.shape
                and bool((got - ref).abs().max() <= 1e-4 * ref.abs().max().clamp_min(1e-6))):
            _swap(model, fwd.units, fwd.stand_ins)
            try: yield fwd
            finally: _swap(model, fwd.units, originals)
            return
    yield full
