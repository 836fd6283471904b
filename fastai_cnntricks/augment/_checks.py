"Argument checks shared by the augment wing's transforms, built on core's validators."
from __future__ import annotations

from fastcore.foundation import L
from fasttransform import Transform

from ..core import CnnTricksError, check_bool, check_count, check_number, check_type

__all__ = []


def check_draw(name, value):
    "fastai's `draw=`: None, a finite number, a list with one number per image, or a callable x -> magnitudes."
    if value is None or callable(value): return value
    if isinstance(value, (list, tuple)):
        if not value: raise CnnTricksError(f"{name}={value!r} is not valid; a list of draws needs one number per image")
        for v in value: check_number(name, v)
        return value
    return check_number(name, value)


def check_size(name, value):
    "An output size: None, a whole number >= 1, or a pair (height, width) of them."
    if value is None: return None
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise CnnTricksError(f"{name}={value!r} is not valid; pass a whole number or a pair (height, width)")
        return tuple(check_count(name, v) for v in value)
    return check_count(name, value)


def check_common(p=0.5, batch=False):
    "The probability `p` in [0, 1] and the `batch` flag every random transform takes."
    check_number('p', p, lo=0, hi=1)
    check_bool('batch', batch)


def check_transforms(name, tfms):
    "A list of transforms (fastai `Transform`s or callables); strings, numbers and dicts are mistakes."
    if isinstance(tfms, (list, tuple, L)): items = list(tfms)
    else: items = [tfms]
    for t in items:
        if not (isinstance(t, Transform) or callable(t)):
            check_type(name, t, Transform, "a list of fastai transforms (e.g. Shear(10), Rotate(), ChannelShift())")
    return items
