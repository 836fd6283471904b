"""Fixed-magnitude transforms for the label-invariance check: each applies one magnitude to a whole batch.

The check sweeps magnitudes deterministically, so it needs `f(x, magnitude)` rather than random draws. The augment
wing's transforms all have `apply_fixed(x, magnitude)`; this catalogue wraps them (and fastai's `rotate_mat` /
`flip_mat` through `apply_affine`, and fastai's logit-space contrast) with what the sweep needs besides: the neutral
magnitude, the valid range, a default sweep (fine at small magnitudes, where safe limits usually lie) and the fastai
transform to train with at a chosen magnitude (`suggest`).

All functions take images in image space (floats in [0, 1], before `Normalize`) and return the same size.
"""
from __future__ import annotations

import torch
from fastai.torch_core import TensorImage
from fastai.vision.augment import rotate_mat, flip_mat, Rotate, Flip, Zoom, Contrast

from ..core import CnnTricksError
from .geometric import apply_affine, Shear, Shift, ZoomXY, FlipVertical
from .pixel import BrightnessFactor, GaussianNoise, GaussianBlur, SaltPepper, Cutout, ChannelShift

__all__ = ['FixedTfm', 'fixed_tfm', 'fixed_catalogue', 'DEFAULT_SWEEP', 'rotate_fixed', 'hflip_fixed', 'contrast_fixed',
           'suggested_tfms']


def rotate_fixed(x, degrees, fill_mode='reflection'):
    "Rotate every image of the batch by `degrees` (counter-clockwise, fastai's `rotate_mat`) in one resampling pass."
    return apply_affine(x, rotate_mat(x, p=1., draw=float(degrees)), fill_mode=fill_mode)


def hflip_fixed(x, flip=1, fill_mode='reflection'):
    "Mirror every image left-right (`flip`=1) or keep it (0), as fastai's `Flip` does (one resampling pass)."
    return apply_affine(x, flip_mat(x, p=1., draw=int(flip)), fill_mode=fill_mode)


def contrast_fixed(x, scale):
    "fastai's `Contrast` at a fixed `scale` (< 1 lowers contrast): the logit of each pixel multiplied by `scale`."
    x = torch.as_tensor(x)
    return type(x)(torch.sigmoid(torch.logit(x.as_subclass(torch.Tensor).clamp(1e-7, 1 - 1e-7)) * scale))


class FixedTfm:
    "A transform applied to a whole batch at one fixed magnitude, with what the invariance sweep needs to know."
    def __init__(self,
                 name: str,  # short name used in tables and plots
                 fn,  # fn(x, magnitude) -> x of the same size; x: image-space batch (N,C,H,W)
                 magnitudes=(),  # default sweep (neutral included)
                 neutral=0.,  # the magnitude that leaves images unchanged
                 valid=(None, None),  # inclusive (low, high) range of magnitudes; None: unbounded
                 unit='',  # unit shown in tables ('°', '× size', 'σ px', ...)
                 suggest=None,  # suggest(magnitude) -> a fastai batch transform that trains within this magnitude
                 random=False,  # the function draws random numbers (noise): the sweep seeds it per batch
                 continuous=True):  # False for on/off transforms (flips): no interpolation between magnitudes
        self.name, self.fn, self.magnitudes, self.neutral = name, fn, tuple(magnitudes), neutral
        self.valid, self.unit, self._suggest, self.random, self.continuous = valid, unit, suggest, random, continuous

    def check(self, magnitude):
        "Raise a `CnnTricksError` unless `magnitude` is a number in this transform's valid range."
        lo, hi = self.valid
        ok = isinstance(magnitude, (int, float)) and not isinstance(magnitude, bool) and (
            lo is None or magnitude >= lo) and (hi is None or magnitude <= hi)
        if ok and not self.continuous and magnitude not in (lo, hi):
            raise CnnTricksError(f"magnitude {magnitude!r} is not valid for transform {self.name!r}; it is on/off: "
                                 f"{lo} or {hi}")
        if not ok:
            rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            raise CnnTricksError(f"magnitude {magnitude!r} is not valid for transform {self.name!r}; "
                                 f"valid magnitudes lie in {rng} {self.unit}".rstrip())
        return magnitude

    def __call__(self, x, magnitude):
        y = self.fn(x, magnitude)
        if tuple(y.shape) != tuple(x.shape):
            raise CnnTricksError(f"transform {self.name!r} changed the batch shape from {tuple(x.shape)} to "
                                 f"{tuple(y.shape)}; the invariance check needs size-preserving transforms")
        return y if isinstance(y, TensorImage) else TensorImage(y)  # Normalize & co. dispatch on TensorImage

    def severity(self, magnitude): return abs(magnitude - self.neutral)

    def suggest(self, magnitude):
        "A fastai transform for training within `magnitude`, or None when there is none (or it is the neutral one)."
        if self._suggest is None or self.severity(magnitude) == 0: return None
        return self._suggest(magnitude)

    def __repr__(self): return f"FixedTfm({self.name!r}, neutral={self.neutral}, unit={self.unit!r})"


def fixed_catalogue(fill_mode='reflection') -> dict:
    """The built-in fixed-magnitude transforms by name, geometric ones resampled with `fill_mode` (fastai's
    default 'reflection' matches the suggested fastai transforms)."""
    shear, shift = Shear(fill_mode=fill_mode), Shift(fill_mode=fill_mode)
    zoom, vflip = ZoomXY(fill_mode=fill_mode), FlipVertical(fill_mode=fill_mode)
    bright, noise, blur = BrightnessFactor(), GaussianNoise(), GaussianBlur()
    sp, cut, cshift = SaltPepper(), Cutout(), ChannelShift()
    F = FixedTfm
    cat = [
        F('rotate', lambda x, m: rotate_fixed(x, m, fill_mode),
          (0, 2, 4, 6, 8, 10, 12, 15, 20, 30, 45, 90, 135, 180), 0, (-360, 360), '°', lambda m: Rotate(abs(m))),
        F('shear', shear.apply_fixed, (0, 5, 10, 15, 20, 30, 45), 0, (-80, 80), '°', lambda m: Shear(abs(m))),
        F('shift', shift.apply_fixed, (0, .05, .1, .15, .2, .3), 0, (-1, 1), '× size',
          lambda m: Shift(abs(m), abs(m))),
        F('zoom_in', zoom.apply_fixed, (1, 1.1, 1.2, 1.35, 1.5, 1.75, 2), 1, (1, 10), '×', lambda m: Zoom(1., m)),
        F('zoom_out', zoom.apply_fixed, (1, .9, .8, .7, .6, .5), 1, (.05, 1), '×', lambda m: Zoom(m, 1.)),
        F('darken', bright.apply_fixed, (1, .8, .6, .4, .3, .2, .1), 1, (0, 1), '× brightness',
          lambda m: BrightnessFactor(m, 1.)),
        F('brighten', bright.apply_fixed, (1, 1.25, 1.5, 2, 3), 1, (1, 100), '× brightness',
          lambda m: BrightnessFactor(1., m)),
        F('contrast', contrast_fixed, (1, .8, .6, .4, .2, .1), 1, (1e-3, 1), '× logit',
          lambda m: Contrast(max_lighting=1 - m)),
        F('noise', noise.apply_fixed, (0, .02, .05, .1, .2, .3), 0, (0, 10), 'σ', lambda m: GaussianNoise(m),
          random=True),
        F('blur', blur.apply_fixed, (0, .5, 1, 1.5, 2, 3), 0, (0, 50), 'σ px', lambda m: GaussianBlur((0., m))),
        F('hflip', lambda x, m: hflip_fixed(x, m, fill_mode), (0, 1), 0, (0, 1), '', lambda m: Flip(p=0.5), continuous=False),
        F('vflip', vflip.apply_fixed, (0, 1), 0, (0, 1), '', lambda m: FlipVertical(p=0.5), continuous=False),
        F('salt_pepper', sp.apply_fixed, (0, .01, .02, .05, .1, .2), 0, (0, 1), 'fraction',
          lambda m: SaltPepper(m), random=True),
        F('cutout', cut.apply_fixed, (0, .1, .2, .3, .4, .5), 0, (0, 1), '× side', lambda m: Cutout((0., m)),
          random=True),
        F('channel_shift', cshift.apply_fixed, (0, .05, .1, .2, .3), 0, (-1, 1), '', lambda m: ChannelShift(abs(m))),
    ]
    return {t.name: t for t in cat}


# The default sweep: what a user would try in `aug_transforms` / Keras' ImageDataGenerator, plus flips.
DEFAULT_SWEEP = ('rotate', 'shear', 'shift', 'zoom_in', 'zoom_out', 'darken', 'brighten', 'contrast', 'noise', 'blur',
                 'hflip', 'vflip')


def fixed_tfm(tfm, fill_mode='reflection') -> FixedTfm:
    """A `FixedTfm` from a catalogue name ('rotate', ...), a `FixedTfm`, a transform with `apply_fixed` (the augment
    wing's), or a function `f(x, magnitude)`; the last two take their magnitudes from the caller."""
    if isinstance(tfm, FixedTfm): return tfm
    if isinstance(tfm, str):
        cat = fixed_catalogue(fill_mode)
        if tfm not in cat:
            raise CnnTricksError(f"tfm={tfm!r} is not a known transform; choose one of {', '.join(map(repr, cat))}, "
                                 "a transform with apply_fixed, or a function f(x, magnitude)")
        return cat[tfm]
    if hasattr(tfm, 'apply_fixed'):
        neutral = getattr(tfm, 'neutral', 1. if type(tfm).__name__ == 'ZoomXY' else 0.)
        return FixedTfm(type(tfm).__name__, tfm.apply_fixed, (), neutral)
    if callable(tfm): return FixedTfm(getattr(tfm, '__name__', 'custom'), tfm)
    raise CnnTricksError(f"tfm={tfm!r} is not valid; pass a name ({', '.join(DEFAULT_SWEEP)}, ...), a transform with "
                         "apply_fixed, or a function f(x, magnitude)")


def suggested_tfms(safe: dict, tfms: dict) -> list:
    """fastai batch transforms that train within the `safe` magnitudes ({name: magnitude}) of the `tfms`
    ({name: FixedTfm}); zoom in/out and darken/brighten pairs merge into one `Zoom` / `BrightnessFactor`."""
    safe = {k: v for k, v in safe.items() if v is not None and tfms[k].severity(v) > 0}
    res = []
    if 'zoom_in' in safe and 'zoom_out' in safe: res.append(Zoom(safe.pop('zoom_out'), safe.pop('zoom_in')))
    if 'darken' in safe and 'brighten' in safe:
        res.append(BrightnessFactor(safe.pop('darken'), safe.pop('brighten')))
    for k, m in safe.items():
        t = tfms[k].suggest(m)
        if t is not None: res.append(t)
    return res
