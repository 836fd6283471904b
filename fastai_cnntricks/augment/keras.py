"""`keras_tfms`: paste an `ImageDataGenerator(...)`'s keyword arguments, get fastai transforms.

How each argument maps (fastai's `IntToFloatTensor` has already scaled images to 0..1 when these run):

| Keras argument | fastai_cnntricks |
|---|---|
| rotation_range=r | fastai `Rotate(max_deg=r, p=1)` |
| width_shift_range, height_shift_range | `Shift(width, height, p=1)` (fraction if < 1, pixels otherwise, int/list as Keras) |
| shear_range=s | `Shear(s, p=1, keras=True)` (Keras' own shear matrix, degrees) |
| zoom_range=z or [lo, hi] | `ZoomXY(lo, hi, p=1, keras=True)` (x and y drawn independently; z -> [1-z, 1+z]) |
| horizontal_flip / vertical_flip | fastai `Flip(p=0.5)` / `FlipVertical(p=0.5)` |
| fill_mode, cval | the fill of the single affine pass; cval in Keras' 0..255 units, divided by 255 |
| all geometric ones | fused by `fuse_tfms` into one `AffineFill`: one `grid_sample` per batch |
| channel_shift_range=c | `ChannelShift(c / 255, p=1)` (Keras' range is in 0..255 units) |
| brightness_range=(lo, hi) | `BrightnessFactor(lo, hi, p=1)` |
| preprocessing_function=f | `Preprocess(f, per_image=True, scale=255)`: called on each image as HWC float32 in 0..255 |
| rescale=r | `Rescale(r)` after a preprocessing function; otherwise `Rescale(255 * r)` (so 1/255 is a no-op) |
| samplewise_center / samplewise_std_normalization | `SamplewiseNormalize(center, std)` |
| featurewise_center / featurewise_std_normalization | `FeaturewiseNormalize(center, std)`, fitted on the training set |
| zca_whitening, zca_epsilon | `ZCAWhiten(eps=zca_epsilon)`, fitted on the training set (centres per pixel) |
| validation_split=v | `splitter=KerasSplitter(v)`: the first fraction v of the items validates, as Keras |
| data_format, dtype | accepted and ignored (fastai batches are channels-first float) |

Augmentations apply to the training set only; the standardization steps to both sets, as Keras does.
"""
from __future__ import annotations

from fastai.vision.augment import Rotate, Flip
from fastcore.basics import AttrDict

from ..core import CnnTricksError, check_choice
from .geometric import Shear, Shift, ZoomXY, FlipVertical, fuse_tfms
from .pixel import ChannelShift, BrightnessFactor
from .stats import Preprocess, Rescale, SamplewiseNormalize, FeaturewiseNormalize, ZCAWhiten

__all__ = ['KERAS_DEFAULTS', 'keras_tfms', 'KerasSplitter']

KERAS_DEFAULTS = dict(featurewise_center=False, samplewise_center=False, featurewise_std_normalization=False,
                      samplewise_std_normalization=False, zca_whitening=False, zca_epsilon=1e-6, rotation_range=0,
                      width_shift_range=0., height_shift_range=0., brightness_range=None, shear_range=0.,
                      zoom_range=0., channel_shift_range=0., fill_mode='nearest', cval=0., horizontal_flip=False,
                      vertical_flip=False, rescale=None, preprocessing_function=None, validation_split=0.0)
_IGNORED = ('data_format', 'dtype')


class KerasSplitter:
    "Keras' `validation_split`: the first `valid_pct` of the items are the validation set, the rest train."
    def __init__(self, valid_pct):
        if not isinstance(valid_pct, (int, float)) or not 0 < valid_pct < 1:
            raise CnnTricksError(f"validation_split={valid_pct!r} is not valid; it must lie strictly between 0 and 1")
        self.valid_pct = valid_pct

    def __call__(self, items):
        n_valid = int(len(items) * self.valid_pct)
        return list(range(n_valid, len(items))), list(range(n_valid))


def _nonneg(name, v):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
        raise CnnTricksError(f"{name}={v!r} is not valid; it must be a number >= 0")
    return v


def _shift_range(name, v):
    if isinstance(v, (list, tuple)):
        if not v or not all(isinstance(o, (int, float)) for o in v):
            raise CnnTricksError(f"{name}={v!r} is not valid; a list of shifts must hold numbers")
        return list(v)
    return _nonneg(name, v)


def keras_tfms(**kwargs) -> AttrDict:
    """fastai transforms for `ImageDataGenerator(**kwargs)`: a dict with `item_tfms`, `batch_tfms` and, when
    `validation_split` is set, `splitter`; pass it on as `DataBlock(..., **keras_tfms(...))` (see the module doc
    for each mapping). Unknown arguments raise a TypeError naming the valid ones."""
    unknown = [k for k in kwargs if k not in KERAS_DEFAULTS and k not in _IGNORED]
    if unknown:
        raise TypeError(f"keras_tfms() got unknown argument(s) {', '.join(unknown)}; valid ImageDataGenerator "
                        f"arguments: {', '.join(list(KERAS_DEFAULTS) + list(_IGNORED))}")
    a = AttrDict({**KERAS_DEFAULTS, **{k: v for k, v in kwargs.items() if k not in _IGNORED}})
    fill = dict(fill_mode=check_choice('fill_mode', a.fill_mode, ('constant', 'nearest', 'reflect', 'wrap')),
                cval=_nonneg('cval', a.cval) / 255 if a.fill_mode == 'constant' else 0.)
    tfms = []
    if _nonneg('rotation_range', a.rotation_range): tfms.append(Rotate(max_deg=a.rotation_range, p=1.))
    w, h = _shift_range('width_shift_range', a.width_shift_range), _shift_range('height_shift_range',
                                                                                a.height_shift_range)
    if w or h: tfms.append(Shift(w or 0., h or 0., p=1., **fill))
    if _nonneg('shear_range', a.shear_range): tfms.append(Shear(a.shear_range, p=1., keras=True, **fill))
    z = a.zoom_range
    if isinstance(z, (int, float)) and not isinstance(z, bool): z = (1 - _nonneg('zoom_range', z), 1 + z)
    if not (isinstance(z, (list, tuple)) and len(z) == 2 and all(isinstance(o, (int, float)) for o in z)
            and 0 < z[0] <= z[1]) and z != (1, 1):
        raise CnnTricksError(f"zoom_range={a.zoom_range!r} is not valid; pass a float < 1 or a pair [lower, upper] "
                             "with 0 < lower <= upper")
    if tuple(z) != (1, 1): tfms.append(ZoomXY(z[0], z[1], p=1., keras=True, **fill))
    if a.horizontal_flip: tfms.append(Flip(p=0.5))
    if a.vertical_flip: tfms.append(FlipVertical(p=0.5, **fill))
    if _nonneg('channel_shift_range', a.channel_shift_range): tfms.append(ChannelShift(a.channel_shift_range / 255, p=1.))
    if a.brightness_range is not None:
        br = a.brightness_range
        if not (isinstance(br, (list, tuple)) and len(br) == 2):
            raise CnnTricksError(f"brightness_range={br!r} is not valid; it must be a pair (low, high), e.g. (0.8, 1.2)")
        tfms.append(BrightnessFactor(br[0], br[1], p=1.))
    pf = a.preprocessing_function
    if pf is not None: tfms.append(Preprocess(pf, per_image=True, scale=255.))
    if a.rescale:
        scale = a.rescale if pf is not None else a.rescale * 255
        if abs(scale - 1) > 1e-9: tfms.append(Rescale(scale))
    if a.samplewise_center or a.samplewise_std_normalization:
        tfms.append(SamplewiseNormalize(bool(a.samplewise_center), bool(a.samplewise_std_normalization)))
    if a.zca_whitening:  # Keras forces featurewise centring with ZCA; ZCAWhiten centres per pixel itself
        if a.featurewise_std_normalization: tfms.append(FeaturewiseNormalize(center=True, std=True))
        tfms.append(ZCAWhiten(eps=_nonneg('zca_epsilon', a.zca_epsilon)))
    elif a.featurewise_center or a.featurewise_std_normalization:
        tfms.append(FeaturewiseNormalize(bool(a.featurewise_center), bool(a.featurewise_std_normalization)))
    res = AttrDict(item_tfms=[], batch_tfms=fuse_tfms(tfms, align_corners=False, **fill))
    if a.validation_split: res['splitter'] = KerasSplitter(a.validation_split)
    return res
