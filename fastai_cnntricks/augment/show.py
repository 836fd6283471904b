"`show_augmented`: what a list of transforms does to an image or a batch, as a grid."
from __future__ import annotations

import numpy as np
import torch
import matplotlib.pyplot as plt
from PIL import Image
from fastai.data.core import DataLoaders, TfmdDL
from fastai.torch_core import TensorImage
from fastai.vision.augment import RandTransform
from fasttransform import Pipeline

from ..core import CnnTricksError, check_bool, check_count, check_number, check_seed
from ._checks import check_transforms

__all__ = ['show_augmented']


def _as_batch(x, n):
    "A float (N,3,H,W) TensorImage in 0..1 from an image, a batch, a PIL image, an array or DataLoaders."
    if isinstance(x, (DataLoaders, TfmdDL)):
        dl = x.train if isinstance(x, DataLoaders) else x
        clean = dl.new(shuffle=False, after_batch=[t for t in dl.after_batch.fs if not isinstance(t, RandTransform)
                                                  and t.order < 30])
        x = clean.one_batch()[0][:n]
    if isinstance(x, Image.Image): x = np.asarray(x.convert('RGB'))
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
        if x.ndim == 2: x = x[None]
        elif x.ndim == 3 and x.shape[-1] in (1, 3, 4) and x.shape[0] not in (1, 3): x = x.permute(2, 0, 1)[:3]
    if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4):
        raise CnnTricksError("x is not valid; pass an image (PIL, HWC array or CHW tensor), a batch (N,C,H,W) "
                             "or DataLoaders")
    if x.shape[-3] not in (1, 3):
        raise CnnTricksError(f"x is not valid: its images have {x.shape[-3]} channels; pass images with 1 or 3 channels")
    x = x.float() / 255 if not x.is_floating_point() else x.float()
    if x.ndim == 3: x = x[None].expand(n, *x.shape).clone()  # one image, n draws
    if x.shape[1] == 1: x = x.expand(-1, 3, -1, -1)
    return TensorImage(x)


def _displayable(x):
    "Images scaled per image into 0..1 when standardization moved them out of it."
    x = x.detach().float().cpu()
    lo, hi = x.flatten(1).amin(1), x.flatten(1).amax(1)
    out = (lo < -1e-3) | (hi > 1 + 1e-3)
    if out.any():
        span = (hi - lo).clamp_min(1e-8)
        x[out] = (x[out] - lo[out, None, None, None]) / span[out, None, None, None]
    return x.clamp(0, 1)


def show_augmented(x, tfms, n=8, ncols=8, seed=None, show_original=True, figsize=None, titles=True):
    """A grid of `x` under the batch transforms `tfms` (as in `batch_tfms`, training mode): one image -> `n`
    random draws; a batch or DataLoaders -> each image once. Returns the matplotlib Figure."""
    check_count('n', n); check_count('ncols', ncols); check_seed('seed', seed)
    check_bool('show_original', show_original); check_bool('titles', titles)
    if figsize is not None:
        if not isinstance(figsize, (list, tuple)) or len(figsize) != 2:
            raise CnnTricksError(f"figsize={figsize!r} is not valid; pass a pair (width, height) in inches")
        for v in figsize: check_number('figsize', v, lo=0, lo_open=True)
    tfms = check_transforms('tfms', tfms)
    xb = _as_batch(x, n)
    if seed is not None: torch.manual_seed(seed)
    pipe = Pipeline(tfms, split_idx=0)
    with torch.no_grad(): out = pipe(xb.clone())
    imgs = ([xb[0]] if show_original else []) + list(_displayable(out))
    ncols = min(ncols, len(imgs))
    nrows = -(-len(imgs) // ncols)
    figsize = figsize or (1.6 * ncols, 1.6 * nrows + (0.3 if titles else 0))
    fig, axs = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
    for i, ax in enumerate(axs.flat):
        ax.axis('off')
        if i >= len(imgs): continue
        ax.imshow(_displayable(imgs[i][None])[0].permute(1, 2, 0).numpy())
        if titles and show_original and i == 0: ax.set_title('original', fontsize=8)
    if titles: fig.suptitle(' + '.join(type(t).__name__ for t in pipe.fs), fontsize=9)
    fig.tight_layout()
    return fig
