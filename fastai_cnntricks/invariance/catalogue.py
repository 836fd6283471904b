"""Fixed-magnitude transforms for the label-invariance check: each applies one magnitude to a whole batch.

The check sweeps magnitudes deterministically, so it needs `f(x, magnitude)` rather than random draws. The augment
wing's transforms all have `apply_fixed(x, magnitude)`; this catalogue wraps them (and fastai's `rotate_mat` /
`flip_mat` through `apply_affine`, and fastai's logit-space contrast) with what the sweep needs besides: the neutral
magnitude, the valid range, a default sweep (fine at small magnitudes, where safe limits usually lie), the unit, on/off
or continuous, and the fastai transform to train with at a chosen magnitude (`suggest`).

**Adding a transform to the sweep is one `register_fixed(...)` call** at the end of this module, e.g.

    register_fixed('solarize', fn=solarize_fixed, magnitudes=(1, .9, .7, .5), neutral=1, valid=(0, 1),
                   unit='threshold', suggest=lambda m: Solarize(m))

`fn` is a function `f(x, magnitude)` (geometric ones also take `fill_mode=`), or `wing=` an augment-wing class with
`apply_fixed` (built with `fill_mode=` when it takes one). `default=False` keeps it out of `DEFAULT_SWEEP`; `quick=`
magnitudes put it in the demo's `QUICK_SWEEP`. The registration is all there is: `fixed_catalogue`, `fixed_tfm`,
`DEFAULT_SWEEP` and `QUICK_SWEEP` read it.

All functions take images in image space (floats in [0, 1], before `Normalize`) and return the same size.
"""
from __future__ import annotations
import inspect
from functools import partial
from typing import Callable, NamedTuple

import torch
from fastai.torch_core import TensorImage
from fastai.vision.augment import rotate_mat, flip_mat, Rotate, Flip, Zoom, Contrast

from ..core import CnnTricksError, check_number, check_choice
from ..augment import apply_affine, Shear, Shift, ZoomXY, FlipVertical
from ..augment import BrightnessFactor, GaussianNoise, GaussianBlur, SaltPepper, Cutout, ChannelShift

__all__ = ['FixedTfm', 'register_fixed', 'FIXED_TFMS', 'fixed_tfm', 'fixed_catalogue', 'DEFAULT_SWEEP',
           'QUICK_SWEEP', 'rotate_fixed', 'hflip_fixed', 'contrast_fixed', 'suggested_tfms']


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
        "`magnitude` as given, or a `CnnTricksError` unless it is a number in this transform's valid range."
        lo, hi = self.valid
        arg = f"magnitudes[{self.name!r}]"
        check_number(arg, magnitude, lo=lo, hi=hi)
        if not self.continuous: check_choice(arg + ' (an on/off transform)', magnitude, [lo, hi])
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


class _Registered(NamedTuple):
    "One catalogue entry: how to build its function for a fill mode, and the `FixedTfm` settings."
    make: Callable  # make(fill_mode) -> fn(x, magnitude)
    wing: type | None  # the augment-wing class it wraps (its instances get this entry's neutral)
    settings: dict  # FixedTfm keyword arguments besides name and fn
    default: bool  # part of DEFAULT_SWEEP
    quick: tuple | None  # magnitudes in QUICK_SWEEP

    def build(self, name, fill_mode):
        return FixedTfm(name, self.make(fill_mode), **self.settings)


FIXED_TFMS: dict[str, _Registered] = {}  # name -> registration, in sweep order


def _maker(fn, wing):
    "make(fill_mode) -> fn(x, magnitude), for a function or an augment-wing class; resampling ones get the fill mode."
    if wing is not None:
        if hasattr(wing(), 'fill_mode'): return lambda fill_mode: wing(fill_mode=fill_mode).apply_fixed
        return lambda fill_mode: wing().apply_fixed
    if 'fill_mode' in inspect.signature(fn).parameters: return lambda fill_mode: partial(fn, fill_mode=fill_mode)
    return lambda fill_mode: fn


def register_fixed(name: str,  # name in tables, plots and `magnitudes={name: [...]}`
                   fn=None,  # fn(x, magnitude[, fill_mode=...]) -> x of the same size ...
                   wing=None,  # ... or an augment-wing class with `apply_fixed`
                   magnitudes=(),  # default sweep (neutral included), fine at small magnitudes
                   neutral=0.,  # the magnitude that leaves images unchanged
                   valid=(None, None),  # inclusive (low, high) range of magnitudes; None: unbounded
                   unit='',  # unit shown in tables
                   suggest=None,  # suggest(magnitude) -> the fastai batch transform to train within it
                   random=False,  # draws random numbers (noise): the sweep seeds it per batch
                   continuous=True,  # False for on/off transforms (flips)
                   default=True,  # part of DEFAULT_SWEEP
                   quick=None):  # magnitudes for the demo's QUICK_SWEEP (None: left out of it)
    "Add a transform to the catalogue: the one place a new sweep transform is declared."
    if (fn is None) == (wing is None): raise CnnTricksError(f"register_fixed({name!r}): pass either fn or wing")
    settings = dict(magnitudes=magnitudes, neutral=neutral, valid=valid, unit=unit, suggest=suggest, random=random,
                    continuous=continuous)
    FIXED_TFMS[name] = _Registered(make=_maker(fn, wing), wing=wing, settings=settings, default=default,
                                   quick=None if quick is None else tuple(quick))


def fixed_catalogue(fill_mode='reflection') -> dict:
    """The registered fixed-magnitude transforms by name, geometric ones resampled with `fill_mode` (fastai's
    default 'reflection' matches the suggested fastai transforms)."""
    return {name: entry.build(name, fill_mode) for name, entry in FIXED_TFMS.items()}


def _wing_neutral(tfm):
    "The neutral magnitude of an augment-wing transform: its own `neutral`, else its class's registration's."
    if hasattr(tfm, 'neutral'): return tfm.neutral
    return next((e.settings['neutral'] for e in FIXED_TFMS.values() if e.wing is not None and isinstance(tfm, e.wing)),
                0.)


def fixed_tfm(tfm, fill_mode='reflection') -> FixedTfm:
    """A `FixedTfm` from a catalogue name ('rotate', ...), a `FixedTfm`, a transform with `apply_fixed` (the augment
    wing's), or a function `f(x, magnitude)`; the last two take their magnitudes from the caller."""
    if isinstance(tfm, FixedTfm): return tfm
    if isinstance(tfm, str):
        if tfm not in FIXED_TFMS:
            raise CnnTricksError(f"tfm={tfm!r} is not a known transform; choose one of "
                                 f"{', '.join(map(repr, FIXED_TFMS))}, a transform with apply_fixed, "
                                 "or a function f(x, magnitude)")
        return FIXED_TFMS[tfm].build(tfm, fill_mode)
    if hasattr(tfm, 'apply_fixed'): return FixedTfm(type(tfm).__name__, tfm.apply_fixed, (), _wing_neutral(tfm))
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


# ---- The catalogue, in sweep order: one registration per transform. ----------------------------------------------
register_fixed('rotate', fn=rotate_fixed, magnitudes=(0, 2, 4, 6, 8, 10, 12, 15, 20, 30, 45, 90, 135, 180),
               valid=(-360, 360), unit='°', suggest=lambda m: Rotate(abs(m)), quick=(0, 5, 10, 15, 30, 90, 180))
register_fixed('shear', wing=Shear, magnitudes=(0, 5, 10, 15, 20, 30, 45), valid=(-80, 80), unit='°',
               suggest=lambda m: Shear(abs(m)))
register_fixed('shift', wing=Shift, magnitudes=(0, .05, .1, .15, .2, .3), valid=(-1, 1), unit='× size',
               suggest=lambda m: Shift(abs(m), abs(m)), quick=(0, .1, .2))
register_fixed('zoom_in', wing=ZoomXY, magnitudes=(1, 1.1, 1.2, 1.35, 1.5, 1.75, 2), neutral=1, valid=(1, 10),
               unit='×', suggest=lambda m: Zoom(1., m), quick=(1, 1.25, 1.5))
register_fixed('zoom_out', wing=ZoomXY, magnitudes=(1, .9, .8, .7, .6, .5), neutral=1, valid=(.05, 1), unit='×',
               suggest=lambda m: Zoom(m, 1.))
register_fixed('darken', wing=BrightnessFactor, magnitudes=(1, .8, .6, .4, .3, .2, .1), neutral=1, valid=(0, 1),
               unit='× brightness', suggest=lambda m: BrightnessFactor(m, 1.), quick=(1, .6, .3))
register_fixed('brighten', wing=BrightnessFactor, magnitudes=(1, 1.25, 1.5, 2, 3), neutral=1, valid=(1, 100),
               unit='× brightness', suggest=lambda m: BrightnessFactor(1., m))
register_fixed('contrast', fn=contrast_fixed, magnitudes=(1, .8, .6, .4, .2, .1), neutral=1, valid=(1e-3, 1),
               unit='× logit', suggest=lambda m: Contrast(max_lighting=1 - m), quick=(1, .5, .2))
register_fixed('noise', wing=GaussianNoise, magnitudes=(0, .02, .05, .1, .2, .3), valid=(0, 10), unit='σ',
               suggest=lambda m: GaussianNoise(m), random=True, quick=(0, .05, .15))
register_fixed('blur', wing=GaussianBlur, magnitudes=(0, .5, 1, 1.5, 2, 3), valid=(0, 50), unit='σ px',
               suggest=lambda m: GaussianBlur((0., m)))
register_fixed('hflip', fn=hflip_fixed, magnitudes=(0, 1), valid=(0, 1), suggest=lambda m: Flip(p=0.5),
               continuous=False, quick=(0, 1))
register_fixed('vflip', wing=FlipVertical, magnitudes=(0, 1), valid=(0, 1), suggest=lambda m: FlipVertical(p=0.5),
               continuous=False, quick=(0, 1))
register_fixed('salt_pepper', wing=SaltPepper, magnitudes=(0, .01, .02, .05, .1, .2), valid=(0, 1),
               unit='fraction', suggest=lambda m: SaltPepper(m), random=True, default=False)
register_fixed('cutout', wing=Cutout, magnitudes=(0, .1, .2, .3, .4, .5), valid=(0, 1), unit='× side',
               suggest=lambda m: Cutout((0., m)), random=True, default=False)
register_fixed('channel_shift', wing=ChannelShift, magnitudes=(0, .05, .1, .2, .3), valid=(-1, 1),
               suggest=lambda m: ChannelShift(abs(m)), default=False)

# The default sweep: what a user would try in `aug_transforms` / Keras' ImageDataGenerator, plus flips.
DEFAULT_SWEEP = tuple(name for name, entry in FIXED_TFMS.items() if entry.default)
# A sweep small enough for the demo (about 20 model passes over a few hundred items), still fine at small rotations.
QUICK_SWEEP = {name: list(entry.quick) for name, entry in FIXED_TFMS.items() if entry.quick is not None}
