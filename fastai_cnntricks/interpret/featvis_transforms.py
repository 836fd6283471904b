"""Feature visualization, idea 2 of 4: robustness transforms. Lucid's standard set (pad 12, jitter 8, scale
0.9..1.1, rotate -10..10 deg, jitter 4) drawn per image and applied as ONE affine resampling pass (fastai's
affine composition) instead of one pass per transform; the output keeps the optimized image's size."""
from __future__ import annotations
import math

import torch
import torch.nn.functional as F
from fastcore.basics import store_attr

from ..core import CnnTricksError, check_count, check_number

__all__ = ['RobustTransforms', 'get_transforms']


def _sequence(name, vals):
    "`vals` (a sequence of numbers, or None for none) as a tuple."
    if vals is None: return ()
    if not isinstance(vals, (tuple, list, range)):
        raise CnnTricksError(f"{name}={vals!r} is not valid; pass a sequence of numbers or None")
    return tuple(vals)


class RobustTransforms:
    "Random pad + jitter + scale + rotate, one affine `grid_sample` per batch, parameters drawn per image."
    def __init__(self, pad: int = 12,  # constant padding (px) around the image, filled with `fill`
                 jitter=(8, 4),  # random crop offsets (px) before and after scale/rotate, as in Lucid
                 scales=tuple(1 + (i - 5) / 50 for i in range(11)),  # zoom factors drawn from
                 angles=tuple(range(-10, 11)) + (0,) * 5,  # rotations (degrees) drawn from
                 fill: float = 0.5):
        check_count('pad', pad, allow_zero=True); check_number('fill', fill)
        jitters = jitter if isinstance(jitter, (tuple, list)) else (jitter,)
        if len(jitters) not in (1, 2) or (len(jitters) == 1 and isinstance(jitter, (tuple, list))):
            raise CnnTricksError(f"jitter={jitter!r} is not valid; pass px >= 0, or a (before, after) pair of them")
        for j in jitters: check_count('jitter', j, allow_zero=True)
        for v in _sequence('scales', scales): check_number('scales', v, lo=0, lo_open=True)
        for v in _sequence('angles', angles): check_number('angles', v)
        store_attr()

    def __call__(self, img: torch.Tensor, generator=None) -> torch.Tensor:
        b, c, h, w = img.shape
        j1, j2 = (self.jitter, 0) if isinstance(self.jitter, (int, float)) else tuple(self.jitter)
        def pick(vals):
            return torch.tensor(vals, dtype=torch.float32)[torch.randint(len(vals), (b,), generator=generator)]
        s = pick(list(self.scales)) if self.scales else torch.ones(b)
        a = pick(list(self.angles)) * math.pi / 180 if self.angles else torch.zeros(b)
        # Crop of the padded image left after both jitters; its offset from the centre in px.
        crop_h, crop_w = h + 2 * self.pad - j1 - j2, w + 2 * self.pad - j1 - j2
        def offset(n):
            d = torch.zeros(b)
            for j in (j1, j2):
                if j > 0: d += torch.randint(int(j), (b,), generator=generator).float()
            return d - (j1 + j2) / 2
        dx, dy = offset(w), offset(h)
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        theta = torch.stack([torch.stack([cos * crop_w / w, -sin * crop_h / w, 2 * dx / w], 1),
                             torch.stack([sin * crop_w / h, cos * crop_h / h, 2 * dy / h], 1)], 1)
        grid = F.affine_grid(theta.to(img.device, img.dtype), [b, c, h, w], align_corners=False)
        # Sampling (img - fill) with zero padding == constant padding with `fill`.
        return F.grid_sample(img - self.fill, grid, mode='bilinear', padding_mode='zeros',
                             align_corners=False) + self.fill


def _identity(img, generator=None): return img


def get_transforms(transforms):
    "'standard' (Lucid's set), None/'none', a `RobustTransforms`, or any callable img -> img."
    if transforms is None or transforms == 'none': return _identity
    if isinstance(transforms, str):
        if transforms == 'standard': return RobustTransforms()
        raise CnnTricksError(f"transforms={transforms!r} is not valid; use 'standard', 'none', a RobustTransforms "
                             "or a callable")
    if isinstance(transforms, RobustTransforms): return transforms
    if callable(transforms): return lambda img, generator=None: transforms(img)
    raise CnnTricksError(f"transforms={transforms!r} is not valid; use 'standard', 'none', a RobustTransforms or a callable")
