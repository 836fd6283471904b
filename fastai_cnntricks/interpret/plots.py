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


def _rgb_tile(a, cmap, side):
    "A tile as an RGB array of `side` x `side` px (grayscale through `cmap`, nearest-neighbour resize)."
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 2: a = plt.get_cmap(cmap)(np.clip(a, 0, 1))[..., :3]
    h, w = a.shape[:2]
    ys, xs = (np.arange(side) * h // side), (np.arange(side) * w // side)
    return a[ys][:, xs]


def image_grid(imgs, titles=None, ncols=None, size=1.4, cmap='gray', suptitle=None):
    """Show a list/batch of images (values in [0, 1]) on a grid; returns the Figure. One mosaic on one Axes (grayscale
    tiles through `cmap`) -- drawing dozens of subplots costs seconds, one image costs milliseconds."""
    n = len(imgs)
    ncols = max(1, min(ncols or 8, n))
    nrows = max(1, math.ceil(n / ncols))
    tiles = [to_hwc(im) for im in imgs]
    side = max(max(t.shape[:2]) for t in tiles)
    side = side * max(1, 48 // side)  # small kernels (3x3) are blown up so the mosaic stays crisp
    gap = max(1, side // (4 if titles is not None else 16))  # room for the titles between rows
    mosaic = np.ones((nrows * (side + gap) - gap, ncols * (side + gap) - gap, 3), dtype=np.float32)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        mosaic[r * (side + gap): r * (side + gap) + side, c * (side + gap): c * (side + gap) + side] = \
            _rgb_tile(t, cmap, side)
    height = nrows * size * (1.15 if titles is not None else 1) + (0.4 if suptitle else 0)
    fig, ax = plt.subplots(figsize=(ncols * size, height))
    ax.imshow(mosaic, interpolation='nearest')
    ax.axis('off')
    if titles is not None:
        for i, t in enumerate(titles[:n]):
            r, c = divmod(i, ncols)
            ax.text(c * (side + gap) + side / 2, r * (side + gap) - gap / 2, str(t), ha='center', va='bottom',
                    fontsize=7)
    if suptitle: ax.set_title(suptitle, fontsize=9, pad=16 if titles is not None else 4)
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
