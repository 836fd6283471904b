"""`keras_tfms`: paste an `ImageDataGenerator(...)`'s keyword arguments, get fastai transforms.

How each argument maps (fastai's `IntToFloatTensor` has already scaled images to 0..1 when these run):

| Keras argument | fastai_cnntricks |
|---|---|
| rotation_range=r | fastai `Rotate(max_deg=r, p=1)` |
| width_shift_range, height_shift_range | `Shift(width, height, p=1)`: a float < 1 a fraction of the size, from 1 on pixels; an int r draws 0..r-1 and a list its values, each with a random sign, as Keras |
| shear_range=s | `Shear(s, p=1, keras=True)` (Keras 3's own shear matrix, degrees) |
| zoom_range=z or [lo, hi] | `ZoomXY(lo, hi, p=1, keras=True)` (x and y drawn independently; z -> [1-z, 1+z]) |
| horizontal_flip / vertical_flip | fastai `Flip(p=0.5)` / `FlipVertical(p=0.5)`, after the other geometric steps as in Keras |
| fill_mode, cval | the fill of the single affine pass; cval in Keras' 0..255 units, divided by 255 |
| interpolation_order=0, 1 or 3 | `grid_sample` mode 'nearest', 'bilinear' or 'bicubic' (Keys' cubic convolution, close to scipy's cubic spline); orders 2, 4, 5 have no `grid_sample` mode |
| all geometric ones | fused by `fuse_tfms` into one `AffineFill`: one `grid_sample` per batch |
| channel_shift_range=c | `ChannelShift(c / 255, p=1)` (Keras' range is in 0..255 units) |
| brightness_range=(lo, hi) | `BrightnessFactor(lo, hi, p=1)` (Keras goes through 8-bit PIL: its result is rounded) |
| preprocessing_function=f | `Preprocess(f, per_image=True, scale=255)`: called on each image as HWC float32 in 0..255 |
| rescale=r | `Rescale(r)` after a preprocessing function; otherwise `Rescale(255 * r)` (so 1/255 is a no-op) |
| no rescale | **scale differs**: Keras' images stay in 0..255, fastai's in 0..1; only the centring-only standardisations (and no standardisation) show it. `rescale=1` gives Keras' 0..255 units |
| samplewise_center / samplewise_std_normalization | `SamplewiseNormalize(center, std)`; std implies centring, as in Keras |
| featurewise_center / featurewise_std_normalization | `FeaturewiseNormalize(center, std)`, fitted on the training set; std implies centring |
| zca_whitening, zca_epsilon | `ZCAWhiten(eps=zca_epsilon)` as Keras: per-channel centring, eps on the singular values in Keras' units, unseen directions dropped; it switches featurewise std normalisation off, as Keras |
| validation_split=v | `splitter=KerasSplitter(v)`: for files, the first fraction v of each class folder's sorted files validates; for other items the first fraction v of all, as Keras |
| data_format, dtype | accepted and ignored (fastai batches are channels-first float) |

Augmentations apply to the training set only; the standardization steps to both sets, as Keras does. The
statistics are fitted on the training images after the steps before them (Keras' `fit` applies only `rescale`).

**Conventions where Keras 3 is not what its documentation says** (checked against Keras 3's own
`ImageDataGenerator` in tests/test_keras_reference.py, on a non-square photo):

- *Axes* (keras-team/keras#17398): Keras 3 swaps rows and columns inside `apply_affine_transform`, so its
  `width_shift_range` moves the content vertically by a fraction of the width, and `height_shift_range`
  horizontally. The project does what the documentation says: width shifts move the content horizontally by a
  fraction of the width.
- *Turning point*: on non-square images Keras 3 rotates, shears and zooms about the point (h/2 - 0.5, w/2 - 0.5)
  taken as (x, y), off the centre. The project turns about the image centre.
- *wrap*: scipy's `wrap` repeats every n-1 pixels (the first and last columns meet); the project's `wrap` repeats
  every n pixels (`torch.roll`, scipy's `grid-wrap`).
- *Rotation sign*: Keras 3 turns by -theta what fastai's `Rotate` turns by theta (Keras 2 turned as fastai does).
  The draws are symmetric, so the distribution is the same.
- *Shift sign*: Keras moves the content by -tx; the project's `Shift` moves it by +dx. Symmetric draws again.
- *Shear*: the project shears as Keras 3 does (x moves with y: input x = x - sin(a)*y, input y = cos(a)*y),
  the direction torchvision and kornia call a horizontal shear; Keras 2 sheared the other axis.
- *Fill 'constant'*: scipy gives `cval` to output points that fall outside the input, grid_sample also blends the
  border pixel half a pixel further out: they differ on a one-pixel seam.
"""
from __future__ import annotations
from pathlib import PurePath

import numpy as np
from fastai.vision.augment import Rotate, Flip
from fastcore.basics import AttrDict

from ..core import CnnTricksError, check_bool, check_choice, check_int, check_number, check_range
from .geometric import Shear, Shift, ZoomXY, FlipVertical, fuse_tfms, _check_shift_range
from .pixel import ChannelShift, BrightnessFactor
from .stats import Preprocess, Rescale, SamplewiseNormalize, FeaturewiseNormalize, ZCAWhiten

__all__ = ['KERAS_DEFAULTS', 'keras_tfms', 'KerasSplitter']

KERAS_DEFAULTS = dict(featurewise_center=False, samplewise_center=False, featurewise_std_normalization=False,
                      samplewise_std_normalization=False, zca_whitening=False, zca_epsilon=1e-6, rotation_range=0,
                      width_shift_range=0., height_shift_range=0., brightness_range=None, shear_range=0.,
                      zoom_range=0., channel_shift_range=0., fill_mode='nearest', cval=0., horizontal_flip=False,
                      vertical_flip=False, rescale=None, preprocessing_function=None, data_format=None,
                      validation_split=0.0, interpolation_order=1, dtype=None)
_KERAS_FILLS = ('constant', 'nearest', 'reflect', 'wrap')
# scipy spline order -> grid_sample mode; bicubic is Keys' cubic convolution, not scipy's prefiltered cubic spline
_ORDER_MODES = {0: 'nearest', 1: 'bilinear', 3: 'bicubic'}


class KerasSplitter:
    """Keras' `validation_split`: files (paths) split per class folder, the first `valid_pct` of each folder's files
    in sorted order validating (as `flow_from_directory(subset=...)`); other items split as `flow(x, y, subset=...)`
    does, the first `valid_pct` of all validating. Returns (train indices, valid indices)."""
    def __init__(self, valid_pct):
        self.valid_pct = check_number('validation_split', valid_pct, lo=0, hi=1, lo_open=True, hi_open=True)

    def __call__(self, items):
        items = list(items)
        if not items or not isinstance(items[0], (str, PurePath)):
            n_valid = int(len(items) * self.valid_pct)
            return list(range(n_valid, len(items))), list(range(n_valid))
        folders = {}
        for i, o in enumerate(items): folders.setdefault(str(PurePath(o).parent), []).append(i)
        valid = set()
        for idxs in folders.values():
            idxs = sorted(idxs, key=lambda i: PurePath(items[i]).name)
            valid.update(idxs[:int(len(idxs) * self.valid_pct)])
        return [i for i in range(len(items)) if i not in valid], sorted(valid)


def _zoom_range(z):
    "Keras' zoom_range: a number z -> [1 - z, 1 + z], or a pair [lower, upper]."
    if isinstance(z, (list, tuple)): return check_range('zoom_range', z, lo=0)
    z = check_number('zoom_range', z, lo=0, hi=1, hi_open=True)
    return 1 - z, 1 + z


def _interpolation_mode(order):
    check_int('interpolation_order', order, lo=0, hi=5)
    if order not in _ORDER_MODES:
        raise CnnTricksError(f"interpolation_order={order!r} is not valid here; grid_sample resamples with order 0 "
                             "(nearest), 1 (bilinear) or 3 (bicubic); scipy's spline orders 2, 4 and 5 have no "
                             "grid_sample equivalent")
    return _ORDER_MODES[order]


def keras_tfms(
        featurewise_center=False,  # subtract the training set's per-channel mean
        samplewise_center=False,  # subtract each image's mean
        featurewise_std_normalization=False,  # divide by the training set's per-channel std (implies centring)
        samplewise_std_normalization=False,  # divide each image by its std (implies centring)
        zca_whitening=False,  # ZCA whitening fitted on the training set
        zca_epsilon=1e-6,  # added to the singular values, in Keras' units
        rotation_range=0,  # degrees: uniform in [-r, r]
        width_shift_range=0.,  # fraction of the width if < 1, pixels otherwise, or a list of shifts
        height_shift_range=0.,  # the same for the height
        brightness_range=None,  # (low, high) brightness factor
        shear_range=0.,  # degrees: uniform in [-s, s]
        zoom_range=0.,  # z -> [1 - z, 1 + z], or [lower, upper]: Keras grid scales (> 1 shrinks the content)
        channel_shift_range=0.,  # in 0..255 units: one uniform shift added to all channels, clipped
        fill_mode='nearest',  # constant, nearest, reflect or wrap
        cval=0.,  # the value outside the image for fill_mode='constant', in 0..255 units
        horizontal_flip=False,  # mirror left-right with probability 0.5
        vertical_flip=False,  # mirror top-bottom with probability 0.5
        rescale=None,  # multiply by this (Keras' units: 1/255 keeps fastai's 0..1)
        preprocessing_function=None,  # called on each image as HWC float32 in 0..255
        data_format=None,  # accepted and ignored: fastai batches are channels first
        validation_split=0.0,  # the first fraction of each class folder validates (a `splitter`)
        interpolation_order=1,  # 0 (nearest), 1 (bilinear) or 3 (bicubic)
        dtype=None,  # accepted and ignored: fastai batches are float
) -> AttrDict:
    """fastai transforms for `ImageDataGenerator(...)` with the same arguments: a dict with `item_tfms`,
    `batch_tfms` and, when `validation_split` is set, `splitter`; pass it on as `DataBlock(..., **keras_tfms(...))`
    (the module doc gives each mapping and the conventions where Keras 3 departs from its documentation)."""
    flags = dict(featurewise_center=featurewise_center, samplewise_center=samplewise_center,
                 featurewise_std_normalization=featurewise_std_normalization,
                 samplewise_std_normalization=samplewise_std_normalization, zca_whitening=zca_whitening,
                 horizontal_flip=horizontal_flip, vertical_flip=vertical_flip)
    for name, v in flags.items(): check_bool(name, v)
    check_number('zca_epsilon', zca_epsilon, lo=0)
    check_number('rotation_range', rotation_range, lo=0)
    width, height = (_check_shift_range(n, v) for n, v in (('width_shift_range', width_shift_range),
                                                              ('height_shift_range', height_shift_range)))
    if brightness_range is not None: check_range('brightness_range', brightness_range, lo=0)
    check_number('shear_range', shear_range, lo=0, hi=90, hi_open=True)
    zoom = _zoom_range(zoom_range)
    check_number('channel_shift_range', channel_shift_range, lo=0)
    check_choice('fill_mode', fill_mode, _KERAS_FILLS)
    check_number('cval', cval)
    if rescale is not None and check_number('rescale', rescale) == 0: rescale = None  # Keras: a falsy rescale is off
    if preprocessing_function is not None and not callable(preprocessing_function):
        raise CnnTricksError(f"preprocessing_function={preprocessing_function!r} is not valid; pass a callable or None")
    if data_format is not None: check_choice('data_format', data_format, ('channels_last', 'channels_first'))
    check_number('validation_split', validation_split, lo=0, hi=1, hi_open=True)
    mode = _interpolation_mode(interpolation_order)
    if dtype is not None:
        try: np.dtype(dtype)
        except TypeError: raise CnnTricksError(f"dtype={dtype!r} is not valid; pass a numpy dtype name such as 'float32'")

    fill = dict(fill_mode=fill_mode, cval=cval / 255 if fill_mode == 'constant' else 0., mode=mode)
    tfms = []
    if rotation_range: tfms.append(Rotate(max_deg=rotation_range, p=1.))
    if width or height: tfms.append(Shift(width or 0., height or 0., p=1., **fill))
    if shear_range: tfms.append(Shear(shear_range, p=1., keras=True, **fill))
    if tuple(zoom) != (1, 1): tfms.append(ZoomXY(zoom[0], zoom[1], p=1., keras=True, **fill))
    if horizontal_flip: tfms.append(Flip(p=0.5))
    if vertical_flip: tfms.append(FlipVertical(p=0.5, **fill))
    if channel_shift_range: tfms.append(ChannelShift(channel_shift_range / 255, p=1.))
    if brightness_range is not None: tfms.append(BrightnessFactor(*brightness_range, p=1.))
    if preprocessing_function is not None: tfms.append(Preprocess(preprocessing_function, per_image=True, scale=255.))
    if rescale:
        scale = rescale if preprocessing_function is not None else rescale * 255
        if abs(scale - 1) > 1e-9: tfms.append(Rescale(scale))
    if samplewise_center or samplewise_std_normalization:
        tfms.append(SamplewiseNormalize(center=True, std=samplewise_std_normalization))
    if zca_whitening:  # Keras: ZCA forces featurewise centring (ZCAWhiten does it) and switches the std off
        in_keras_units = rescale or preprocessing_function is not None
        tfms.append(ZCAWhiten(eps=zca_epsilon, data_scale=1. if in_keras_units else 255.))
    elif featurewise_center or featurewise_std_normalization:
        tfms.append(FeaturewiseNormalize(center=True, std=featurewise_std_normalization))
    res = AttrDict(item_tfms=[], batch_tfms=fuse_tfms(tfms, align_corners=False, **fill))
    if validation_split: res['splitter'] = KerasSplitter(validation_split)
    return res
