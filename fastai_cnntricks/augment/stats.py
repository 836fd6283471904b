"""Keras' `standardize` step as fastai batch transforms: preprocessing function, rescale, samplewise and
featurewise centring / std-normalization and ZCA whitening.

They run on the training *and* validation sets (like Keras' `standardize` and fastai's `Normalize`), after the
augmentations and before a `Normalize`, in Keras' order. Featurewise statistics and the ZCA matrix are fitted on
the training set when the DataLoaders are built (fastai calls `setups` with the training DataLoader; the
equivalent of Keras' `datagen.fit(x)`), on the images as they are before any random transform, in float64.
`tfm.fit(source)` fits them by hand from DataLoaders, a DataLoader or a tensor of images.
"""
from __future__ import annotations

import numpy as np
import torch
from fastai.vision.augment import RandTransform
from fastai.data.core import DataLoaders
from fastai.torch_core import TensorImage
from fasttransform import DisplayedTransform, Transform
from fastprogress.fastprogress import progress_bar

from ..core import CnnTricksError, check_bool, check_count, check_number

__all__ = ['training_images', 'Preprocess', 'Rescale', 'SamplewiseNormalize', 'FeaturewiseNormalize', 'ZCAWhiten']


def training_images(source, before_order=None, max_batches=None, progress=False):
    """Yield float image batches from `source` (DataLoaders -> its training DataLoader, a DataLoader, a tensor)
    without random transforms and, for a DataLoader, with only the batch transforms ordered before `before_order`."""
    check_number('before_order', before_order, allow_none=True)
    check_count('max_batches', max_batches, allow_none=True)
    check_bool('progress', progress)
    if isinstance(source, torch.Tensor):
        yield source.float()
        return
    dl = source.train if isinstance(source, DataLoaders) else source
    if not hasattr(dl, 'after_batch'):
        raise CnnTricksError(f"cannot fit statistics from {type(source).__name__}; pass fastai DataLoaders, a "
                             "DataLoader or a tensor of images")
    tfms = [t for t in dl.after_batch.fs if not isinstance(t, RandTransform)
            and (before_order is None or t.order < before_order)]
    clean = dl.new(shuffle=False, drop_last=False, after_batch=tfms)
    it = progress_bar(clean, leave=False) if progress else clean
    for i, b in enumerate(it):
        if max_batches is not None and i >= max_batches: break
        yield (b[0] if isinstance(b, (tuple, list)) else b).float()


class _StatsTfm(DisplayedTransform):
    "A deterministic standardization step applied to both training and validation images."
    split_idx = None

    def _on(self, name, x):
        "Fitted tensor `name` on x's device and dtype (cached, so a GPU batch does not copy it every time)."
        t = getattr(self, name)
        if t is None:
            raise CnnTricksError(f"{type(self).__name__} is not fitted: put it in the batch_tfms of a DataLoaders "
                                 "(it is fitted on the training set when they are built) or call .fit(dls) first")
        cache = self.__dict__.setdefault('_cache', {})
        key = (name, x.device, x.dtype)
        if key not in cache: cache[key] = t.to(x.device, x.dtype)
        return cache[key]

    def _reset_cache(self): self._cache = {}


class Preprocess(Transform):
    "Keras' `preprocessing_function`: a user function run on each batch (or each image, as Keras does)."
    order, split_idx = 90, None

    def __init__(self,
                 func,  # the function: batch tensor -> batch tensor, or (per_image) HWC numpy image -> same shape
                 per_image=False,  # call it on each image as a float32 HWC numpy array, as Keras does (slow)
                 scale=1.):  # multiply the image by this before calling (255 gives Keras' 0..255 units)
        if not callable(func): raise CnnTricksError(f"func={func!r} is not valid; pass a callable")
        check_bool('per_image', per_image)
        _check_scale('scale', scale)
        super().__init__()
        self.func, self.per_image, self.scale = func, per_image, scale

    def encodes(self, x: TensorImage):
        xs = x.as_subclass(torch.Tensor) * self.scale if self.scale != 1 else x.as_subclass(torch.Tensor)
        if not self.per_image: return TensorImage(self.func(xs))
        imgs = xs.permute(0, 2, 3, 1).detach().cpu().numpy()
        out = np.stack([np.asarray(self.func(im.copy()), dtype=np.float32) for im in imgs])
        if out.shape != imgs.shape:
            raise CnnTricksError(f"preprocessing function returned shape {out.shape[1:]} for an image of shape "
                                 f"{imgs.shape[1:]}; it must keep the shape")
        return TensorImage(torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device))


def _check_scale(name, value):
    if check_number(name, value) == 0: raise CnnTricksError(f"{name}={value!r} is not valid; it must be a non-zero number")
    return value


def _check_fit_options(max_batches, progress):
    check_count('max_batches', max_batches, allow_none=True)
    check_bool('progress', progress)


class Rescale(DisplayedTransform):
    "Keras' `rescale`: multiply the images by `scale`."
    order, split_idx = 91, None

    def __init__(self, scale):
        _check_scale('scale', scale)
        super().__init__()
        self.scale = scale

    def encodes(self, x: TensorImage): return x * self.scale
    def decodes(self, x: TensorImage): return x / self.scale


class SamplewiseNormalize(DisplayedTransform):
    "Keras' samplewise_center / samplewise_std_normalization: each image to mean 0 and/or std 1 over all its values."
    order, split_idx = 92, None

    def __init__(self, center=True, std=True, eps=1e-6):
        check_bool('center', center); check_bool('std', std); check_number('eps', eps, lo=0)
        super().__init__()
        self.center, self.std, self.eps = center, std, eps

    def encodes(self, x: TensorImage):
        flat = x.flatten(1)
        if self.center: x = x - flat.mean(1).reshape(-1, 1, 1, 1)
        if self.std: x = x / (flat.std(1, correction=0).reshape(-1, 1, 1, 1) + self.eps)
        return x


class FeaturewiseNormalize(_StatsTfm):
    """Keras' featurewise_center / featurewise_std_normalization: per-channel mean and std of the whole training
    set (not one batch, as fastai's `Normalize` does when it fits itself)."""
    order = 93

    def __init__(self, center=True, std=True, eps=1e-6, mean=None, stdev=None, max_batches=None, progress=False):
        check_bool('center', center); check_bool('std', std); check_number('eps', eps, lo=0)
        _check_fit_options(max_batches, progress)
        for name, v in (('mean', mean), ('stdev', stdev)):
            if v is not None and not torch.isfinite(torch.as_tensor(v, dtype=torch.float64)).all():
                raise CnnTricksError(f"{name}={v!r} is not valid; pass finite per-channel values")
        super().__init__()
        self.center, self.std, self.eps, self.max_batches, self.progress = center, std, eps, max_batches, progress
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1, 1, 1)
        self.stdev = None if stdev is None else torch.as_tensor(stdev, dtype=torch.float64).reshape(1, -1, 1, 1)

    def setups(self, dl):
        if self.mean is None and dl is not None and hasattr(dl, 'after_batch'): self.fit(dl)

    def fit(self, source):
        "Fit the per-channel mean and std on the training images of `source`."
        n, s, s2 = 0, 0., 0.
        for x in training_images(source, self.order, self.max_batches, self.progress):
            xd = x.double().transpose(0, 1).flatten(1)
            n, s, s2 = n + xd.shape[1], s + xd.sum(1), s2 + (xd * xd).sum(1)
        if n == 0: raise CnnTricksError("no training images to fit on")
        mean = s / n
        self.mean = mean.reshape(1, -1, 1, 1).cpu()
        self.stdev = (s2 / n - mean ** 2).clamp_min(0).sqrt().reshape(1, -1, 1, 1).cpu()
        self._reset_cache()
        return self

    def encodes(self, x: TensorImage):
        if self.center: x = x - self._on('mean', x)
        if self.std: x = x / (self._on('stdev', x) + self.eps)
        return x

    def decodes(self, x: TensorImage):
        if self.std: x = x * (self._on('stdev', x) + self.eps)
        if self.center: x = x + self._on('mean', x)
        return x


class ZCAWhiten(_StatsTfm):
    """ZCA whitening fitted on the training images as Keras' `zca_whitening` does it: the images minus their
    per-channel mean, times W = U diag(sqrt(n) / (s + eps)) U^T from the SVD of the n centred training images
    (singular values s, at most min(n, c*h*w) directions: directions no training image spans are dropped, not
    amplified). `eps` applies to the singular values of the data times `data_scale` (255 on fastai's 0..1 images
    gives Keras' 0..255 units). The whitened training images have an identity second moment on the directions
    with s well above eps. The (c*h*w)^2 matrix is meant for small images (c*h*w <= `max_dim`), as in Keras."""
    order = 94

    def __init__(self,
                 eps=1e-6,  # Keras' `zca_epsilon`, added to the singular values
                 data_scale=1.,  # the units eps is in: singular values of (images * data_scale)
                 max_dim=4096,  # largest c*h*w to fit on
                 max_batches=None, progress=False):
        check_number('eps', eps, lo=0)
        check_number('data_scale', data_scale, lo=0, lo_open=True)
        check_count('max_dim', max_dim)
        _check_fit_options(max_batches, progress)
        super().__init__()
        self.eps, self.data_scale, self.max_dim = eps, data_scale, max_dim
        self.max_batches, self.progress = max_batches, progress
        self.mean = self.matrix = self.inverse = None

    def setups(self, dl):
        if self.matrix is None and dl is not None and hasattr(dl, 'after_batch'): self.fit(dl)

    def _check_dim(self, x):
        d = x[0].numel()
        if d > self.max_dim:
            raise CnnTricksError(f"ZCAWhiten on {tuple(x.shape[1:])} images needs a {d}x{d} matrix; resize the images "
                                 f"so that channels*height*width <= max_dim={self.max_dim} (or raise max_dim)")

    def fit(self, source):
        "Fit the per-channel mean and the whitening matrix on the training images of `source`."
        n, s, ss = 0, None, None
        for x in training_images(source, self.order, self.max_batches, self.progress):
            self._check_dim(x)
            flat = x.double().flatten(1)
            s = flat.sum(0) if s is None else s + flat.sum(0)
            ss = flat.T @ flat if ss is None else ss + flat.T @ flat
            n += flat.shape[0]
            self._shape = tuple(x.shape[1:])
        if n < 2: raise CnnTricksError("ZCAWhiten needs at least 2 training images to fit on")
        c = self._shape[0]
        pix = s / n  # per-pixel mean; Keras centres on the per-channel mean
        mean = pix.reshape(c, -1).mean(1, keepdim=True).expand(c, pix.numel() // c).flatten()
        # second moment about the per-channel mean, from the sums: E[xx'] - E[x]m' - mE[x]' + mm'
        second = ss / n - torch.outer(pix, mean) - torch.outer(mean, pix) + torch.outer(mean, mean)
        evals, evecs = torch.linalg.eigh(second)
        k = min(n, len(evals))  # Keras' reduced SVD keeps min(n, d) directions
        root, u = evals[-k:].clamp_min(0).sqrt(), evecs[:, -k:]
        # sqrt(n) / (s + eps) with s = data_scale * sqrt(n * eigenvalue), in the images' own units
        gain = root + self.eps / (self.data_scale * n ** 0.5)
        self.mean = mean.float()
        self.matrix = ((u / gain) @ u.T).float()
        self.inverse = ((u * gain) @ u.T).float()  # the pseudo-inverse: dropped directions stay dropped
        self._reset_cache()
        return self

    def encodes(self, x: TensorImage):
        m, w = self._on('mean', x), self._on('matrix', x)
        if x[0].numel() != m.numel():
            raise CnnTricksError(f"ZCAWhiten was fitted on images of shape {self._shape}, got {tuple(x.shape[1:])}")
        return ((x.flatten(1) - m) @ w).reshape(x.shape)

    def decodes(self, x: TensorImage):
        return (x.flatten(1) @ self._on('inverse', x) + self._on('mean', x)).reshape(x.shape)
