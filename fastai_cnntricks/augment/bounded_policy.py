"""An invariance-bounded TrivialAugment: one operation per image from the label-preserving set, its magnitude uniform
up to that operation's safe limit.

TrivialAugment (Müller & Hutter 2021) draws, per image, one operation uniformly from a fixed list and a magnitude
uniformly from its range. Here the list and the ranges come from the label-preservation answer in one call,

    batch_tfms = bounded_trivial_augment(report.safe_magnitudes())

(a {catalogue name: largest label-preserving magnitude} dict; transforms whose limit is their neutral value are left
out, `'shift'` becomes the two operations shift_x and shift_y). `trivial_augment()` is the unbounded policy at
TrivialAugment's standard ranges (`TRIVIAL_AUGMENT_RANGES`), for comparison. Both draw all choices and magnitudes
for a batch at once and apply the geometric operations in one `grid_sample` pass (see `drawn_ops`).
"""
from __future__ import annotations
import math

import torch

from ..core import CnnTricksError, check_bool, check_choice, check_type
from .geometric import FILL_MODES
from .drawn_ops import check_limit, draw_magnitudes, drawn_tfms, policy_ops

__all__ = ['TRIVIAL_AUGMENT_RANGES', 'TrivialSampler', 'trivial_augment', 'bounded_trivial_augment']

# TrivialAugment Wide's ranges (Müller & Hutter 2021, as torchvision's TrivialAugmentWide) in the catalogue's units:
# rotation 135 degrees, shear 0.99 (= 44.7 degrees), brightness and contrast factors 0.01..1.99 (contrast here is the
# catalogue's logit scale, which only lowers contrast). Translation: AutoAugment's 150 of 331 px as a fraction of the
# size (TA Wide's 32 px is a whole CIFAR image). Colour, sharpness, posterize, solarize, autocontrast and equalize
# have no counterpart in the catalogue and are left out; flips are not TrivialAugment operations.
TRIVIAL_AUGMENT_RANGES = {'rotate': 135., 'shear': math.degrees(math.atan(.99)), 'shift': 150 / 331,
                          'darken': .01, 'brighten': 1.99, 'contrast': .01}


class TrivialSampler:
    "Per image: one of `ops` (or the identity) uniformly, its magnitude uniform up to its limit; `choice` keeps the last draw."
    def __init__(self, ops, limits, identity=True):
        self.ops, self.identity, self.choice = ops, identity, None
        self.limits = torch.tensor(limits, dtype=torch.float32)  # (n_ops,)

    def __call__(self, x, y=None):
        n, k = x.shape[0], len(self.ops)
        # index k is the identity (when it is one of the choices)
        self.choice = torch.randint(k + int(self.identity), (n,), device=x.device)
        m = draw_magnitudes(self.ops, self.limits.to(x.device), n)  # float: x may still be uint8  # (n_ops, N)
        neutral = torch.tensor([op.neutral for op in self.ops], device=x.device)[:, None]
        picked = self.choice[None] == torch.arange(k, device=x.device)[:, None]
        return torch.where(picked, m, neutral)


def _ops_limits(limits):
    "(operations, their limits) for a {catalogue name: limit} dict; limits at the neutral value drop their transform."
    check_type('limits', limits, dict, "a {transform name: safe magnitude} dict (safe_magnitudes())")
    ops, lims = [], []
    for name, lim in limits.items():
        if lim is None: continue
        lim = check_limit(name, lim)  # an unknown name is refused here, naming the known ones
        for op in policy_ops(name):
            if lim != op.neutral: ops.append(op); lims.append(lim)
    return ops, lims


def trivial_augment(limits=None,  # {catalogue name: largest magnitude}; None: TrivialAugment's `TRIVIAL_AUGMENT_RANGES`
                    identity=True,  # the identity is one of the choices, as in TrivialAugment
                    fill_mode='reflection') -> list:  # fill mode of the one resampling pass
    """TrivialAugment as fastai batch transforms (training only): per image one operation from `limits`, magnitude
    uniform up to its limit (both signs for rotations, shears, shifts); unbounded at the default ranges."""
    check_bool('identity', identity)
    check_choice('fill_mode', fill_mode, FILL_MODES)
    ops, lims = _ops_limits(TRIVIAL_AUGMENT_RANGES if limits is None else limits)
    if not ops: return []  # nothing to draw from: no augmentation
    return drawn_tfms(ops, TrivialSampler(ops, lims, identity), fill_mode=fill_mode)


def bounded_trivial_augment(safe,  # {catalogue name: largest label-preserving magnitude}, as safe_magnitudes() returns
                            identity=True,  # the identity is one of the choices
                            fill_mode='reflection') -> list:  # fill mode of the one resampling pass
    """The invariance-bounded TrivialAugment: one label-preserving operation per image, magnitude uniform up to its
    safe limit; transforms with no safe magnitude are left out (an empty list when none is safe)."""
    if safe is None: raise CnnTricksError("safe=None is not valid; pass the {transform: magnitude} dict of "
                                          "safe_magnitudes(), or use trivial_augment() for the unbounded policy")
    return trivial_augment(safe, identity=identity, fill_mode=fill_mode)
