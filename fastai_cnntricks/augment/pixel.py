"""Pixel transforms drawn per image and applied to the whole batch in one elementwise pass each.

Each is a fastai `RandTransform` (training set only, `p` per image, torch RNG so `set_seed` reproduces a batch).
Every transform has one *magnitude* per image (the shift, the factor, the noise std, ...): `draw=` fixes it as in
fastai's own transforms (a number, a list with one value per image, or a callable), and
`tfm.apply_fixed(x, magnitude)` applies it deterministically to a batch.
"""
from __future__ import annotations
import math

import torch
import torch.nn.functional as F
from fastai.vision.augment import RandTransform, _draw_mask
from fastai.torch_core import TensorImage

from ..core import CnnTricksError, check_count, check_number, check_range
from ._checks import check_common, check_draw

__all__ = ['PixelTfm', 'PixelChain', 'ChannelShift', 'BrightnessFactor', 'GaussianNoise', 'SaltPepper', 'GaussianBlur', 'Cutout',
           'channel_shift', 'brightness_factor', 'gaussian_noise', 'salt_pepper', 'gaussian_blur', 'cutout']


def _per_image(m, x):
    "A magnitude (number or (N,) tensor) as an (N,1,1,1) tensor on x's device."
    m = torch.as_tensor(m, dtype=x.dtype, device=x.device)
    return m.reshape(-1, 1, 1, 1) if m.ndim else m.expand(x.shape[0]).reshape(-1, 1, 1, 1)


# -- the functions: batched, deterministic given per-image magnitudes -----------------------------------------------

def channel_shift(x, shift, inplace=False):
    "Keras' channel shift: add `shift` (per image) to every channel, clipped to each image's own min and max."
    flat = x.flatten(1)
    lo, hi = flat.amin(1).reshape(-1, 1, 1, 1), flat.amax(1).reshape(-1, 1, 1, 1)
    s = _per_image(shift, x)
    return (x.add_(s) if inplace else x + s).clamp_(lo, hi)


def brightness_factor(x, factor, max_value=1., inplace=False):
    "Keras/PIL brightness: multiply by `factor` (per image; < 1 darkens), clipped to [0, max_value] unless None."
    f = _per_image(factor, x)
    res = x.mul_(f) if inplace else x * f
    return res.clamp_(0, max_value) if max_value is not None else res


def gaussian_noise(x, std, inplace=False):
    "Add zero-mean Gaussian noise with standard deviation `std` (per image)."
    noise, s = torch.randn_like(x), _per_image(std, x)
    return x.addcmul_(noise, s) if inplace else noise.mul_(s).add_(x)


def salt_pepper(x, amount, salt_vs_pepper=0.5, low=0., high=1.):
    "Set a fraction `amount` (per image) of pixel positions, all channels, to `high` (salt) or `low` (pepper)."
    u = torch.rand(x.shape[0], 1, *x.shape[-2:], device=x.device, dtype=x.dtype)
    a = _per_image(amount, x)
    res = torch.where(u < a * salt_vs_pepper, torch.full_like(x[:1, :1, :1, :1], high), x)
    return torch.where((u >= a * salt_vs_pepper) & (u < a), torch.full_like(x[:1, :1, :1, :1], low), res)


def _gauss_kernels(sigma, radius, x):
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = _per_image(sigma, x).reshape(-1, 1).clamp_min(1e-6)  # sigma 0 -> a delta: the identity
    k = torch.exp(-t ** 2 / (2 * s ** 2))
    return k / k.sum(1, keepdim=True)


def gaussian_blur(x, sigma):
    """Gaussian blur with per-image `sigma` (pixels), batched: two separable depthwise convolutions over the whole
    batch (one kernel per image), reflect padding, kernel radius ceil(3 * largest sigma)."""
    n, c, h, w = x.shape
    smax = float(torch.as_tensor(sigma).max()) if torch.as_tensor(sigma).numel() else 0.
    radius = min(max(int(math.ceil(3 * smax)), 0), min(h, w) - 1)
    if radius == 0: return x.clone()
    k = _gauss_kernels(sigma, radius, x).repeat_interleave(c, 0)  # (n*c, 2r+1)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode='reflect')
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def cutout(x, size, n_holes=1, fill=0.):
    """Coarse dropout: `n_holes` squares per image with side `size` (fraction of the shorter side, per image) set
    to `fill`, centres uniform over the image (holes may be clipped at the border), built as one broadcast mask."""
    n, _, h, w = x.shape
    side = _per_image(size, x).reshape(n, 1, 1) * min(h, w)
    rows = torch.arange(h, device=x.device, dtype=x.dtype).reshape(1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=x.dtype).reshape(1, 1, w)
    mask = torch.zeros(n, h, w, dtype=torch.bool, device=x.device)
    for _ in range(n_holes):  # a handful of holes, each for the whole batch at once
        cy = torch.rand(n, 1, 1, device=x.device, dtype=x.dtype) * h
        cx = torch.rand(n, 1, 1, device=x.device, dtype=x.dtype) * w
        mask |= ((rows - cy).abs() * 2 < side) & ((cols - cx).abs() * 2 < side)
    return x.masked_fill(mask[:, None], fill)


def _fused_point_affine(x, tfms, inplace=False):
    """Transforms clamp(a*x + c, l, h) (a >= 0) applied in turn, as one multiply-add and one clamp: composing
    clamp(a*clamp(A*x + C, L, H) + c, l, h) = clamp(aA*x + aC + c, clamp(aL + c, l, h), clamp(aH + c, l, h)).
    Each transform's input range (for `ChannelShift`'s clipping) follows from the input's range by monotonicity."""
    per = lambda v: _per_image(v, x)
    flat = x.flatten(1)
    mn, mx = per(flat.amin(1)), per(flat.amax(1))
    A, C, L, H = per(1.), per(0.), per(-math.inf), per(math.inf)
    for t in tfms:
        lo, hi = (A * mn + C).clamp(L, H), (A * mx + C).clamp(L, H)
        a, c, l, h = (per(v) for v in t._point_affine(t.magnitude, lo, hi))
        # a * (+-inf) is nan when a == 0: then the bound is just c
        L, H = (torch.nan_to_num(a * L, nan=0.) + c).clamp(l, h), (torch.nan_to_num(a * H, nan=0.) + c).clamp(l, h)
        A, C = a * A, a * C + c
    y = x.mul_(A).add_(C) if inplace else torch.addcmul(C, x, A)
    return y.clamp_(L, H)


# -- the transforms -------------------------------------------------------------------------------------------------

class PixelTfm(RandTransform):
    "Base of the pixel transforms: per-image magnitudes drawn in `before_call` (neutral with probability 1-p)."
    order, split_idx, neutral = 45, 0, 0.

    def __init__(self, p=0.5, draw=None, batch=False):
        check_common(p, batch); check_draw('draw', draw)
        super().__init__(p=p)
        self.draw, self.batch = draw, batch

    def _def_draw(self, x): raise NotImplementedError
    def _apply(self, x, magnitude, inplace=False): raise NotImplementedError
    # A transform of the form clamp(a*x + c, l, h), with a >= 0 per image, returns (a, c, l, h) from its magnitude and
    # the per-image range [lo, hi] of its input; `PixelChain` then merges a run of them into one pass.
    _point_affine = None

    def before_call(self, b, split_idx):
        self.do = True  # p is applied per image inside the draw
        if split_idx is not None and split_idx != self.split_idx and self.split_idx is not None: return
        while isinstance(b, (tuple, list)): b = b[0]
        with torch._C.DisableTorchFunctionSubclass():  # plain tensors: no per-op subclass dispatch
            self.magnitude = _draw_mask(b, self._def_draw, draw=self.draw, p=self.p, neutral=self.neutral,
                                        batch=self.batch).as_subclass(torch.Tensor)

    def encodes(self, x: TensorImage): return TensorImage(self._apply(x.as_subclass(torch.Tensor), self.magnitude))

    def apply_fixed(self, x, magnitude):
        "`x` with every image transformed at `magnitude` (a number or one value per image)."
        return TensorImage(self._apply(torch.as_tensor(x).as_subclass(torch.Tensor),
                                       torch.as_tensor(magnitude, dtype=x.dtype, device=x.device)
                                       .expand(x.shape[0])))


def _uniform(x, lo, hi, batch=False):
    "One uniform draw in [lo, hi] per image of `x` (one for the whole batch with `batch`)."
    if batch: return x.new_zeros(x.size(0)) + float(torch.empty(()).uniform_(lo, hi))
    return x.new_empty(x.size(0)).uniform_(lo, hi)


class ChannelShift(PixelTfm):
    "Keras' `channel_shift_range`: one uniform shift in [-max_shift, max_shift] added to all channels, clipped."
    def __init__(self,
                 max_shift=0.1,  # largest shift, in the image's units (0..1 for fastai images; Keras' range / 255)
                 p=0.5, draw=None, batch=False):
        self.max_shift = check_number('max_shift', max_shift, lo=0)
        super().__init__(p, draw, batch)

    def _def_draw(self, x): return _uniform(x, -self.max_shift, self.max_shift, self.batch)
    def _apply(self, x, m, inplace=False): return channel_shift(x, m, inplace)
    def _point_affine(self, m, lo, hi): return 1., m, lo, hi  # clipped to the input's own range


class BrightnessFactor(PixelTfm):
    "Keras' `brightness_range`: multiply each image by a factor drawn from [min_factor, max_factor] (< 1 darkens)."
    neutral = 1.

    def __init__(self,
                 min_factor=0.8,  # smallest factor
                 max_factor=1.2,  # largest factor
                 max_value=1.,  # clip to [0, max_value] as PIL does (None: no clipping)
                 p=0.5, draw=None, batch=False):
        self.min_factor, self.max_factor = check_range('(min_factor, max_factor)', (min_factor, max_factor), lo=0)
        self.max_value = check_number('max_value', max_value, lo=0, lo_open=True, allow_none=True)
        super().__init__(p, draw, batch)

    def _def_draw(self, x): return _uniform(x, self.min_factor, self.max_factor, self.batch)
    def _apply(self, x, m, inplace=False): return brightness_factor(x, m, self.max_value, inplace)
    def _point_affine(self, m, lo, hi):
        return m, 0., (0. if self.max_value is not None else -math.inf), (self.max_value or math.inf)


class GaussianNoise(PixelTfm):
    "Add Gaussian noise of standard deviation `std` to each selected image."
    def __init__(self, std=0.05, p=0.5, draw=None, batch=False):
        self.std = check_number('std', std, lo=0)
        super().__init__(p, draw, batch)

    def _def_draw(self, x): return x.new_full((x.size(0),), float(self.std))
    def _apply(self, x, m, inplace=False): return gaussian_noise(x, m, inplace)


class SaltPepper(PixelTfm):
    "Salt-and-pepper noise: a fraction `amount` of the pixel positions set to `high` or `low`."
    def __init__(self, amount=0.02, salt_vs_pepper=0.5, low=0., high=1., p=0.5, draw=None, batch=False):
        self.amount = check_number('amount', amount, lo=0, hi=1)
        self.salt_vs_pepper = check_number('salt_vs_pepper', salt_vs_pepper, lo=0, hi=1)
        self.low, self.high = check_number('low', low), check_number('high', high)
        super().__init__(p, draw, batch)

    def _def_draw(self, x): return x.new_full((x.size(0),), float(self.amount))
    def _apply(self, x, m, inplace=False): return salt_pepper(x, m, self.salt_vs_pepper, self.low, self.high)


class GaussianBlur(PixelTfm):
    "Gaussian blur with a sigma (pixels) drawn per image from `sigma` = (low, high); batched separable convolution."
    def __init__(self, sigma=(0.1, 2.), p=0.5, draw=None, batch=False):
        self.sigma = check_range('sigma', sigma, lo=0)
        super().__init__(p, draw, batch)

    def _def_draw(self, x): return _uniform(x, *self.sigma, self.batch)
    def _apply(self, x, m, inplace=False): return gaussian_blur(x, m)


class Cutout(PixelTfm):
    "Cutout / coarse dropout: `n_holes` squares per image, side drawn from `size` (fraction of the shorter side)."
    def __init__(self, size=(0.1, 0.3), n_holes=1, fill=0., p=0.5, draw=None, batch=False):
        self.size = check_range('size', size, lo=0, hi=1)  # fractions of the shorter side
        self.n_holes, self.fill = check_count('n_holes', n_holes), check_number('fill', fill)
        super().__init__(p, draw, batch)

    def _def_draw(self, x): return _uniform(x, *self.size, self.batch)
    def _apply(self, x, m, inplace=False): return cutout(x, m, self.n_holes, self.fill)


class PixelChain(PixelTfm):
    """Several pixel transforms applied one after the other in one transform: the first allocates the output and
    the rest work on it in place (the batch passed in is never modified). Each keeps its own `p` and draws;
    `fuse_tfms` builds it."""
    def __init__(self, tfms):
        self.tfms = list(tfms) if isinstance(tfms, (list, tuple)) else [tfms]
        bad = [t for t in self.tfms if not isinstance(t, PixelTfm)]
        if bad or not self.tfms:
            raise CnnTricksError(f"tfms={bad[0] if bad else tfms!r} is not valid; PixelChain takes a non-empty list of "
                                 "pixel transforms (ChannelShift, BrightnessFactor, ...)")
        super().__init__(p=1.)
        self.order = self.tfms[0].order

    def before_call(self, b, split_idx):
        self.do = True
        for t in self.tfms: t.before_call(b, split_idx)

    def encodes(self, x: TensorImage):
        y, i, tfms = x.as_subclass(torch.Tensor), 0, self.tfms
        while i < len(tfms):
            j = i
            while j < len(tfms) and tfms[j]._point_affine is not None: j += 1
            if j - i > 1: y, i = _fused_point_affine(y, tfms[i:j], inplace=i > 0), j
            else: y, i = tfms[i]._apply(y, tfms[i].magnitude, inplace=i > 0), i + 1
        return TensorImage(y)

    def apply_fixed(self, x, magnitude):
        raise CnnTricksError("PixelChain has no single magnitude; call apply_fixed on one of its .tfms")
