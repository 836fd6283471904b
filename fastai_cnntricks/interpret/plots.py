"Figure helpers shared by the interpretation methods: image grids, heat-map overlays, show-or-close."
from __future__ import annotations
import math

import numpy as np
import torch
import matplotlib.pyplot as plt

__all__ = ['image_grid', 'overlay', 'finish', 'to_hwc', 'scale_each']


def to_hwc(img) -> np.ndarray:
    "A (C, H, W) or (H, W) tensor/array as a numpy array matplotlib can show (H, W[, 3])."
    a = img.detach().float().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img, dtype=np.float32)
    if a.ndim == 3: a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    return a


def scale_each(x: torch.Tensor) -> torch.Tensor:
    "Min-max scale every item of the first dimension to [0, 1] on its own (so weak filters stay visible)."
    flat = x.reshape(len(x), -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(x.shape)


def image_grid(imgs, titles=None, ncols=None, size=1.4, cmap='gray', suptitle=None, fig=None, axs=None):
    "Show a list/batch of images on a grid; returns the Figure (grayscale for 1-channel or 2-D items)."
    n = len(imgs)
    ncols = ncols or min(n, 8)
    nrows = max(1, math.ceil(n / ncols))
    if axs is None:
        fig, axs = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size + (0.4 if suptitle else 0)),
                                squeeze=False)
    axs = np.asarray(axs).reshape(-1)
    for i, ax in enumerate(axs):
        ax.axis('off')
        if i >= n: continue
        a = to_hwc(imgs[i])
        ax.imshow(a, cmap=cmap if a.ndim == 2 else None, interpolation='nearest')
        if titles is not None: ax.set_title(str(titles[i]), fontsize=7)
    if suptitle: fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def overlay(ax, img, heat, alpha=0.5, cmap='RdBu_r', title=None):
    "Draw `img` with the attribution map `heat` on top (diverging colours centred at zero)."
    ax.imshow(to_hwc(img), interpolation='bilinear')
    h = to_hwc(heat)
    lim = float(np.abs(h).max()) or 1.0
    im = ax.imshow(h, cmap=cmap, alpha=alpha, vmin=-lim, vmax=lim, interpolation='bilinear')
    ax.axis('off')
    if title: ax.set_title(title, fontsize=8)
    return im


def finish(fig, show=True):
    "Leave `fig` to be displayed (notebook) when `show`, else close it so it is only returned."
    if not show: plt.close(fig)
    return fig
