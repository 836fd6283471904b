"""Shear, shift, anisotropic zoom and vertical flip as fastai `AffineCoordTfm`s, plus Keras' fill modes.

Every transform here only *draws a matrix*; the resampling happens once per batch in `AffineFill`, the
`AffineCoordTfm` that multiplies all matrices (fastai's own `Rotate`, `Zoom`, `Flip`, `Warp` included) and
calls `grid_sample` a single time. Put them in `aug_transforms(xtra_tfms=[...])` or pass a whole list to
`fuse_tfms` to get that single pass; the fill mode (constant with `cval`, nearest, reflect, wrap, or fastai's
reflection/border/zeros) applies to the whole pass.

Matrices map *output* coordinates to *input* coordinates in fastai's convention: the linear part in pixel
proportions (fastai's `_prepare_mat` makes it square-aware), the translation in normalized units (-1..1 across
each axis). A plain product of such matrices is wrong on non-square images as soon as a rotation or shear meets a
translation (the translation would be turned in normalized, not pixel, units), so `compose_mats` multiplies them
in the true normalized frame; `AffineFill` and `apply_affine` compose that way.
"""
from __future__ import annotations
import math
from functools import partial

import torch
import torch.nn.functional as F
from fastai.vision.augment import (AffineCoordTfm, LightingTfm, affine_mat, _draw_mask, _init_mat,
                                   _prepare_mat)
from fastai.torch_core import TensorImage, TensorMask
from fastai.vision.core import TensorPoint, TensorBBox
from fastcore.foundation import L

from ..core import CnnTricksError, check_bool, check_choice, check_number
from ._checks import check_common, check_draw, check_size, check_transforms
from .pixel import PixelTfm, PixelChain, _uniform

__all__ = ['FILL_MODES', 'MODES', 'affine_grid_fast', 'fill_sample', 'compose_mats', 'apply_affine', 'shear_mat', 'shift_mat', 'zoomxy_mat', 'vflip_mat',
           'AffineFill', 'Shear', 'Shift', 'ZoomXY', 'FlipVertical', 'fuse_tfms']

# Keras names (constant, nearest, reflect, wrap) and fastai's PadMode names (zeros, border, reflection).
FILL_MODES = ('constant', 'nearest', 'reflect', 'wrap', 'zeros', 'border', 'reflection')
_NATIVE = dict(constant='zeros', zeros='zeros', nearest='border', border='border', reflection='reflection',
               reflect='border', wrap='border')
MODES = ('bilinear', 'nearest', 'bicubic')  # `F.grid_sample`'s interpolation modes


def affine_grid_fast(theta, size, align_corners=False):
    """`F.affine_grid(theta, size, align_corners)` for 2D (N,2,3) `theta`, as two broadcast multiply-adds: one pass
    over the (N,H,W,2) grid instead of a batched matmul against a base grid (about 5x faster on CPU)."""
    n, h, w = size[0], size[-2], size[-1]
    def base(k):
        if align_corners: return torch.linspace(-1, 1, k, dtype=theta.dtype, device=theta.device)
        return (torch.arange(k, dtype=theta.dtype, device=theta.device) * 2 + 1) / k - 1
    t = theta.transpose(1, 2).reshape(n, 1, 3, 1, 2)  # coefficients of x, of y, and the constant
    ybc = torch.addcmul(t[:, :, 2], base(h).reshape(1, h, 1, 1), t[:, :, 1])  # (n,h,1,2): small
    return torch.addcmul(ybc, base(w).reshape(1, 1, w, 1), t[:, :, 0])


def _to_pixels(g, n, align_corners):
    "Normalized grid coordinate -> pixel coordinate along an axis of `n` pixels."
    return (g + 1) * (n - 1) / 2 if align_corners else ((g + 1) * n - 1) / 2


def _to_grid(u, n, align_corners):
    return 2 * u / (n - 1) - 1 if align_corners else (2 * u + 1) / n - 1


def _remap_axis(g, n, fill_mode, align_corners):
    "Fold coordinates along one axis into the image (wrap: period n; reflect: half-sample symmetric, as Keras)."
    u = _to_pixels(g, n, align_corners)
    if fill_mode == 'wrap':
        # Into [-0.5, n-0.5); one circular pad pixel on each side (added by the caller) makes the seam exact.
        u = torch.remainder(u + 0.5, n) - 0.5 + 1
        return _to_grid(u, n + 2, align_corners)
    u = torch.remainder(u + 0.5, 2 * n)
    return _to_grid(torch.where(u >= n, 2 * n - u, u) - 0.5, n, align_corners)


def fill_sample(x: torch.Tensor, coords: torch.Tensor, mode='bilinear', fill_mode='reflection', cval=0.,
                align_corners=False):
    """`F.grid_sample` of `x` at `coords` with any of `FILL_MODES`, still one sampling pass: 'wrap' folds the
    coordinates modulo the size, 'constant' samples `x - cval` with zero padding and adds `cval` back."""
    check_choice('fill_mode', fill_mode, FILL_MODES)
    # plain tensors: fastai's tensor subclasses would send every op through __torch_function__
    x, coords = x.as_subclass(torch.Tensor), coords.as_subclass(torch.Tensor)
    if fill_mode == 'wrap' or (fill_mode == 'reflect' and align_corners):
        h, w = x.shape[-2:]
        coords = torch.stack([_remap_axis(coords[..., 0], w, fill_mode, align_corners),
                              _remap_axis(coords[..., 1], h, fill_mode, align_corners)], -1)
        if fill_mode == 'wrap': x = F.pad(x, (1, 1, 1, 1), mode='circular')
    elif fill_mode == 'reflect': return F.grid_sample(x, coords, mode, 'reflection', align_corners)
    if fill_mode in ('constant', 'zeros') and cval != 0:
        return F.grid_sample(x - cval, coords, mode, 'zeros', align_corners).add_(cval)
    return F.grid_sample(x, coords, mode, _NATIVE[fill_mode], align_corners)


def _square_aware(m, h, w, inverse=False):
    "fastai-convention (N,3,3) matrices <-> matrices in the true normalized frame (what `_prepare_mat` does)."
    m = m.clone()
    m[:, 0, 1] *= w / h if inverse else h / w
    m[:, 1, 0] *= h / w if inverse else w / h
    return m


def compose_mats(x, mats):
    """The product of fastai-convention output->input matrices `mats` (first applied to the output coordinates
    first), multiplied in the true normalized frame of `x`'s size so that translations meet rotations and shears in
    pixel units on non-square images too; returned in fastai's convention."""
    h, w = getattr(x, 'img_size', None) or x.shape[-2:]
    res = _init_mat(x)
    for m in mats:
        if m is not None: res = res @ _square_aware(m, h, w)
    return _square_aware(res, h, w, inverse=True)


def apply_affine(x, mat, size=None, mode=None, fill_mode='reflection', cval=0., align_corners=False):
    """Resample the batch `x` (`TensorImage` or `TensorMask`) once by the (N,3,3) output->input matrices `mat` (as
    drawn by `shear_mat`, fastai's `rotate_mat`, ...), or by a list of them composed with `compose_mats`: the
    deterministic entry point."""
    check_size('size', size)
    if mode is not None: check_choice('mode', mode, MODES)
    check_choice('fill_mode', fill_mode, FILL_MODES)
    check_number('cval', cval)
    check_bool('align_corners', align_corners)
    if isinstance(mat, (list, tuple)): mat = compose_mats(x, mat)
    is_mask = isinstance(x, TensorMask)
    mode = mode or ('nearest' if is_mask else 'bilinear')
    xf = (x[:, None] if x.ndim == 3 else x).float() if is_mask else x
    size = tuple(xf.shape[-2:]) if size is None else (size, size) if isinstance(size, int) else tuple(size)
    theta = _prepare_mat(xf, mat.clone())
    coords = affine_grid_fast(theta.to(xf.dtype), xf.shape[:2] + size, align_corners=align_corners)
    res = fill_sample(torch.Tensor(xf).as_subclass(torch.Tensor), coords, mode, fill_mode, cval, align_corners)
    if is_mask:
        res = res.round().long()
        return TensorMask(res[:, 0] if x.ndim == 3 else res)
    return TensorImage(res)


def shear_mat(x, max_deg=10., p=0.5, draw=None, keras=False, batch=False):
    """Random shear matrices, angle uniform in [-max_deg, max_deg] degrees (per image, with probability `p`).
    Default: a pure horizontal shear, content point (x, y) -> (x + tan(a)*y, y). `keras=True`: the matrix Keras 3's
    ImageDataGenerator applies (input x = x - sin(a)*y, input y = cos(a)*y: the same horizontal shear, content
    also stretched by 1/cos(a) vertically)."""
    a = _draw_mask(x, lambda x: _uniform(x, -max_deg, max_deg, batch), draw=draw, p=p, batch=batch)
    a = a * math.pi / 180
    z, o = torch.zeros_like(a), torch.ones_like(a)
    if keras: return affine_mat(o, -a.sin(), z, z, a.cos(), z)
    return affine_mat(o, -a.tan(), z, z, o, z)


def _is_whole(v): return isinstance(v, int) or (hasattr(v, 'dtype') and getattr(v.dtype, 'kind', '') in 'iu')


def _shift_draw(rng, batch):
    """Draw shifts as Keras' `get_random_transform` does: a float r uniformly from [-r, r]; an int r from 0..r-1
    (`np.random.choice(r)`) and a list from its values, each times a random sign (so 0 of an int range is drawn
    twice as often as any other value, and an int range 1 never shifts)."""
    def draw(x):
        k = 1 if batch else x.size(0)
        if not isinstance(rng, (list, tuple)) and not rng: return x.new_zeros(x.size(0))  # Keras: 0 is off
        if not (isinstance(rng, (list, tuple)) or _is_whole(rng)): return _uniform(x, -rng, rng, batch)
        vals = torch.tensor(list(rng) if isinstance(rng, (list, tuple)) else range(int(rng)), dtype=x.dtype,
                            device=x.device)
        sign = torch.randint(2, (k,), device=x.device).to(x.dtype) * 2 - 1
        return (vals[torch.randint(len(vals), (k,), device=x.device)] * sign).expand(x.size(0)).clone()
    return draw


def _px(rng, n):
    "Keras: a range whose largest value is below 1 is a fraction of the size; otherwise pixels."
    return n if (max(rng) if isinstance(rng, (list, tuple)) else rng) < 1 else 1


def shift_mat(x, width=0.1, height=0.1, p=0.5, draw_x=None, draw_y=None, align_corners=False, batch=False):
    """Random translations: content moves right by dx and down by dy (like `torch.roll`), dx drawn from `width`
    and dy from `height`, each a fraction of the size when < 1 and pixels from 1 on, drawn as Keras draws them
    (see `_shift_draw`)."""
    h, w = x.shape[-2:]
    dx = _draw_mask(x, _shift_draw(width, batch), draw=draw_x, p=p, batch=batch) * _px(width, w)
    dy = _draw_mask(x, _shift_draw(height, batch), draw=draw_y, p=p, batch=batch) * _px(height, h)
    # pixels -> normalized units; minus because the matrix maps output to input
    sx, sy = (2 / (w - 1), 2 / (h - 1)) if align_corners else (2 / w, 2 / h)
    z, o = torch.zeros_like(dx), torch.ones_like(dx)
    return affine_mat(o, z, -dx * sx, z, o, -dy * sy)


def zoomxy_mat(x, min_zoom=1., max_zoom=1.1, p=0.5, draw_x=None, draw_y=None, keras=False, batch=False):
    """Random anisotropic zoom about the centre: factors zx, zy drawn independently from [min_zoom, max_zoom]
    (> 1 enlarges the content, as fastai's `Zoom`). `keras=True`: the factors are Keras' grid scales
    (> 1 shrinks the content), drawn uniformly as ImageDataGenerator does."""
    d = lambda x: _uniform(x, min_zoom, max_zoom, batch)
    zx = _draw_mask(x, d, draw=draw_x, p=p, neutral=1., batch=batch)
    zy = _draw_mask(x, d, draw=draw_y, p=p, neutral=1., batch=batch)
    sx, sy = (zx, zy) if keras else (1 / zx, 1 / zy)
    z = torch.zeros_like(sx)
    return affine_mat(sx, z, z, z, sy, z)


def vflip_mat(x, p=0.5, draw=None, batch=False):
    "Random vertical flip matrices (per image with probability `p`; `draw` 1 flips, 0 keeps)."
    f = _draw_mask(x, lambda x: x.new_ones(x.size(0)), draw=draw, p=p, batch=batch)
    s = 1 - 2 * f
    z, o = torch.zeros_like(s), torch.ones_like(s)
    return affine_mat(o, z, z, z, s, z)


class AffineFill(AffineCoordTfm):
    "fastai's fused affine/coord pass (one `grid_sample` for all composed transforms) with Keras' fill modes."
    def __init__(self,
                 aff_fs=None,  # functions x -> (N,3,3) matrices, multiplied in order
                 coord_fs=None,  # fastai coordinate transforms (e.g. `Warp`'s)
                 size=None,  # output size (int or (h, w)); None keeps the input size
                 mode='bilinear',  # `F.grid_sample` interpolation for images
                 fill_mode='reflection',  # one of `FILL_MODES`, for the whole pass
                 cval=0.,  # value outside the image when fill_mode='constant'
                 mode_mask='nearest',  # interpolation for `TensorMask`
                 align_corners=False,  # `F.grid_sample` align_corners
                 **kwargs):
        check_size('size', size)
        check_choice('mode', mode, MODES)
        check_choice('fill_mode', fill_mode, FILL_MODES)
        check_number('cval', cval)
        check_choice('mode_mask', mode_mask, ('nearest', 'bilinear'))
        check_bool('align_corners', align_corners)
        super().__init__(aff_fs, coord_fs, size=size, mode=mode, pad_mode=_NATIVE[fill_mode], mode_mask=mode_mask,
                         align_corners=align_corners, **kwargs)
        self.fill_mode, self.cval = fill_mode, cval

    def _get_affine_mat(self, x):
        # fastai's tensor subclasses send each of the ~150 tiny ops that draw the matrices through
        # __torch_function__ (about 4 ms a batch on CPU): draw them on plain tensors
        with torch._C.DisableTorchFunctionSubclass():
            mats = [] if self.split_idx else [f(x) for f in self.aff_fs]
            return _prepare_mat(x, compose_mats(x, mats)).as_subclass(torch.Tensor)

    def _sample(self, x, mode):
        h, w = x.shape[-2:]
        size = (h, w) if self.size is None else (self.size, self.size) if isinstance(self.size, int) else self.size
        if self.split_idx and tuple(size) == (h, w): return x  # validation: nothing to resample
        coords = affine_grid_fast(self.mat.as_subclass(torch.Tensor).to(x.dtype), x.shape[:2] + tuple(size), self.align_corners)
        if len(self.coord_fs) and not self.split_idx:
            from fasttransform import compose_tfms
            coords = compose_tfms(coords, tfms=self.coord_fs)
        return fill_sample(x.as_subclass(torch.Tensor), coords, mode, self.fill_mode, self.cval, self.align_corners)

    def encodes(self, x: TensorImage): return TensorImage(self._sample(x, self.mode))

    def encodes(self, x: TensorMask):
        xf = (x[:, None] if x.ndim == 3 else x).float()
        res = self._sample(xf, self.mode_mask).round().long()
        return TensorMask(res[:, 0] if x.ndim == 3 else res)

    def encodes(self, x: TensorPoint | TensorBBox): return self._encode(x, self.mode, reverse=True)

    def apply_fixed(self, x, magnitude):
        "`x` transformed by every image's matrix drawn at the fixed `magnitude` (see each transform's docs)."
        return apply_affine(x, self._fixed_mat(x, magnitude), self.size, None, self.fill_mode, self.cval,
                            self.align_corners)

    def _fixed_mat(self, x, magnitude): raise NotImplementedError


_TKW = dict(size=None, mode='bilinear', fill_mode='reflection', cval=0., align_corners=False)


class Shear(AffineFill):
    "Random shear of at most `max_deg` degrees per image with probability `p` (joins fastai's single affine pass)."
    def __init__(self,
                 max_deg=10.,  # largest shear angle in degrees (Keras' `shear_range`)
                 p=0.5,  # probability per image
                 draw=None,  # fixed angle(s) instead of random: a number, a list (one per image) or a callable
                 keras=False,  # use ImageDataGenerator's shear matrix instead of a pure horizontal shear
                 batch=False,  # one draw for the whole batch
                 **kwargs):  # size, mode, fill_mode, cval, align_corners (see `AffineFill`)
        check_number('max_deg', max_deg, lo=0, hi=90, hi_open=True)
        check_common(p, batch); check_draw('draw', draw); check_bool('keras', keras)
        self.max_deg, self.keras = max_deg, keras
        super().__init__(partial(shear_mat, max_deg=max_deg, p=p, draw=draw, keras=keras, batch=batch),
                         **{**_TKW, **kwargs})

    def _fixed_mat(self, x, magnitude):
        "magnitude: shear angle in degrees."
        return shear_mat(x, p=1., draw=magnitude, keras=self.keras)


def _check_shift_range(name, value):
    "A shift range as Keras takes it: a number >= 0, or a non-empty list of numbers."
    valid = "it must be a number >= 0 (a fraction of the size if < 1, pixels otherwise) or a list of shifts"
    if isinstance(value, (list, tuple)):
        if not value: raise CnnTricksError(f"{name}={value!r} is not valid; {valid}")
        for v in value: check_number(name, v)
        return list(value)
    check_number(name, value, lo=0)
    return value


class Shift(AffineFill):
    "Random translation per image (Keras' width/height_shift_range semantics), joining fastai's single affine pass."
    def __init__(self,
                 width=0.1,  # horizontal range: fraction of the width if < 1, pixels from 1 on (or a list of values)
                 height=0.1,  # vertical range, same rules
                 p=0.5,  # probability per image
                 draw_x=None,  # fixed horizontal shift(s) in the units of `width` instead of random
                 draw_y=None,  # fixed vertical shift(s) in the units of `height`
                 batch=False,  # one draw for the whole batch
                 **kwargs):  # size, mode, fill_mode, cval, align_corners
        for nm, v in (('width', width), ('height', height)): _check_shift_range(nm, v)
        check_common(p, batch); check_draw('draw_x', draw_x); check_draw('draw_y', draw_y)
        self.width, self.height = width, height
        kw = {**_TKW, **kwargs}
        super().__init__(partial(shift_mat, width=width, height=height, p=p, draw_x=draw_x, draw_y=draw_y,
                                 align_corners=kw['align_corners'], batch=batch), **kw)

    def _fixed_mat(self, x, magnitude):
        "magnitude: shift as a fraction of the size, along each axis whose range is non-zero."
        h, w = x.shape[-2:]
        dx = magnitude * w if self.width else 0.
        dy = magnitude * h if self.height else 0.
        return shift_mat(x, width=1, height=1, p=1., draw_x=dx, draw_y=dy, align_corners=self.align_corners)


class ZoomXY(AffineFill):
    "Random anisotropic zoom: x and y factors drawn independently (Keras' `zoom_range`), in fastai's single pass."
    def __init__(self,
                 min_zoom=0.9,  # smallest factor (> 1 enlarges the content, as fastai's `Zoom`)
                 max_zoom=1.1,  # largest factor
                 p=0.5,  # probability per image
                 draw_x=None,  # fixed horizontal factor(s) instead of random
                 draw_y=None,  # fixed vertical factor(s)
                 keras=False,  # factors are Keras grid scales (> 1 shrinks the content)
                 batch=False,
                 **kwargs):  # size, mode, fill_mode, cval, align_corners
        for nm, v in (('min_zoom', min_zoom), ('max_zoom', max_zoom)): check_number(nm, v, lo=0, lo_open=True)
        if min_zoom > max_zoom:
            raise CnnTricksError(f"min_zoom={min_zoom!r} is larger than max_zoom={max_zoom!r}; min_zoom <= max_zoom")
        check_common(p, batch); check_draw('draw_x', draw_x); check_draw('draw_y', draw_y); check_bool('keras', keras)
        self.keras = keras
        super().__init__(partial(zoomxy_mat, min_zoom=min_zoom, max_zoom=max_zoom, p=p, draw_x=draw_x, draw_y=draw_y,
                                 keras=keras, batch=batch), **{**_TKW, **kwargs})

    def _fixed_mat(self, x, magnitude):
        "magnitude: zoom factor applied to both axes (in this transform's convention)."
        return zoomxy_mat(x, p=1., draw_x=magnitude, draw_y=magnitude, keras=self.keras)


class FlipVertical(AffineFill):
    "Random vertical flip per image with probability `p` (Keras' `vertical_flip`), in fastai's single pass."
    def __init__(self, p=0.5, draw=None, batch=False, **kwargs):
        check_common(p, batch); check_draw('draw', draw)
        super().__init__(partial(vflip_mat, p=p, draw=draw, batch=batch), **{**_TKW, **kwargs})

    def _fixed_mat(self, x, magnitude):
        "magnitude: 1 flips, 0 keeps."
        return vflip_mat(x, p=1., draw=magnitude)


def fuse_tfms(tfms, fill_mode=None, cval=None, size=None, align_corners=None, mode=None):
    """Batch transforms with every `AffineCoordTfm` in `tfms` (fastai's `Flip`, `Rotate`, `Zoom`, `Warp`, the ones
    in `aug_transforms`, and ours) multiplied into one `AffineFill`: one `grid_sample` per batch. fastai's
    lighting transforms are composed as in `setup_aug_tfms`, our pixel transforms into one `PixelChain` (one
    allocation); the rest are kept. The fill mode, `cval`, size and
    align_corners and interpolation `mode` come from the arguments, else from the first of our transforms, else
    from the first affine one. The transforms passed in are left unchanged."""
    tfms = check_transforms('tfms', tfms)
    if fill_mode is not None: check_choice('fill_mode', fill_mode, FILL_MODES)
    if cval is not None: check_number('cval', cval)
    check_size('size', size)
    if align_corners is not None: check_bool('align_corners', align_corners)
    if mode is not None: check_choice('mode', mode, MODES)
    aff = [t for t in tfms if isinstance(t, AffineCoordTfm)]
    lig = [t for t in tfms if isinstance(t, LightingTfm)]
    rest = [t for t in tfms if t not in aff and t not in lig]
    res = []
    if aff:
        ours = [t for t in aff if isinstance(t, AffineFill)]
        ref = ours[0] if ours else aff[0]
        fm = fill_mode or getattr(ref, 'fill_mode', None) or {'zeros': 'zeros', 'border': 'border'}.get(
            str(ref.pad_mode), 'reflection')
        res.append(AffineFill(
            aff_fs=[f for t in aff for f in t.aff_fs], coord_fs=[f for t in aff for f in t.coord_fs],
            size=size if size is not None else next((t.size for t in aff if t.size is not None), None),
            mode=mode or ref.mode, fill_mode=fm, cval=cval if cval is not None else getattr(ref, 'cval', 0.),
            align_corners=ref.align_corners if align_corners is None else align_corners))
    pix = [t for t in rest if isinstance(t, PixelTfm)]
    if len(pix) > 1:  # one allocation for the whole chain of pixel transforms
        chain = PixelChain([o for t in pix for o in (t.tfms if isinstance(t, PixelChain) else [t])])
        rest = [chain if t is pix[0] else t for t in rest if t is pix[0] or t not in pix]
    if lig:
        import copy
        host = copy.copy(lig[0])
        host.fs = L(f for t in lig for f in t.fs)
        res.append(host)
    return res + rest
