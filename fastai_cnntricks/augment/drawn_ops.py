"""Operations drawn per image and applied in fastai's batch pipeline: the machinery of the label-preservation policies.

A policy (class-conditional augmentation, the bounded TrivialAugment) is three fastai batch transforms that share one
draw per batch:

- `OpDraws` (order 1, before everything else): in `before_call` it sees the whole `(x, y)` batch -- the labels too,
  which an `AffineCoordTfm` never does -- and draws one magnitude per (operation, image) as an (n_ops, N) tensor;
- `OpsAffine`: the geometric operations' matrices composed (`compose_mats`) into one `AffineFill` pass; only the
  images that move are resampled, the others are copied bit for bit. Its matrix function reads the draws, so
  `fuse_tfms` can merge it with other geometric transforms into one `grid_sample`;
- `OpsPixel`: the pixel operations (`pixel.py`'s batched functions), each applied to the images it was drawn for
  (one call per operation on the subset, never a Python loop over images); a `PixelTfm`, so it chains too.

Operations carry the invariance catalogue's names (`'rotate'`, `'shift'`, `'darken'`, ...) so that a safe-magnitude
dict or per-class table maps onto them; `'shift'` is two operations, `shift_x` and `shift_y`.
"""
from __future__ import annotations
from functools import partial
from typing import Callable, NamedTuple

import torch
from fastai.torch_core import TensorImage
from fastai.vision.augment import RandTransform, flip_mat, rotate_mat

from ..core import CnnTricksError, check_choice, check_number
from .geometric import (AffineFill, FILL_MODES, affine_grid_fast, compose_mats, fill_sample, shear_mat, shift_mat,
                        vflip_mat, zoomxy_mat)
from .pixel import (PixelTfm, brightness_factor, channel_shift, cutout, gaussian_blur, gaussian_noise, salt_pepper)

__all__ = ['PolicyOp', 'POLICY_OPS', 'policy_ops', 'draw_magnitudes', 'OpDraws', 'OpsAffine',
           'OpsPixel', 'drawn_tfms']


class PolicyOp(NamedTuple):
    "One operation a policy can draw: how to apply it at per-image magnitudes, and its range."
    name: str  # the operation's own name ('shift_x')
    source: str  # the invariance catalogue's transform it realizes ('shift')
    kind: str  # 'affine' (a matrix, joins the one resampling pass) or 'pixel'
    fn: Callable  # affine: fn(x, m) -> (N,3,3) output->input matrices; pixel: fn(x, m) -> x; m: (N,) magnitudes
    neutral: float = 0.  # the magnitude that leaves an image unchanged
    valid: tuple = (None, None)  # inclusive range of limits (the catalogue's)
    signed: bool = False  # symmetric: magnitudes drawn in [-|limit|, |limit|] (rotations, shifts, shears)
    continuous: bool = True  # False for on/off operations (flips): the limit itself is applied


def _contrast(x, m):
    "fastai's `Contrast` at per-image logit scales `m` (the catalogue's `contrast_fixed`, batched)."
    return torch.sigmoid(torch.logit(x.clamp(1e-7, 1 - 1e-7)) * m.reshape(-1, 1, 1, 1))


def _shift(axis, x, m):
    "Translation by `m` (fraction of the size, per image) along one axis, content moving right/down for m > 0."
    h, w = x.shape[-2:]
    px = (lambda _: m * w, lambda _: m.new_zeros(m.shape)) if axis == 'x' else (lambda _: m.new_zeros(m.shape), lambda _: m * h)
    return shift_mat(x, width=1, height=1, p=1., draw_x=px[0], draw_y=px[1])


_AFF = dict(kind='affine')
POLICY_OPS: dict[str, PolicyOp] = {op.name: op for op in [
    PolicyOp('rotate', 'rotate', fn=lambda x, m: rotate_mat(x, p=1., draw=lambda _: m), valid=(-360, 360), signed=True, **_AFF),
    PolicyOp('shear', 'shear', fn=lambda x, m: shear_mat(x, p=1., draw=lambda _: m), valid=(-80, 80), signed=True, **_AFF),
    PolicyOp('shift_x', 'shift', fn=partial(_shift, 'x'), valid=(-1, 1), signed=True, **_AFF),
    PolicyOp('shift_y', 'shift', fn=partial(_shift, 'y'), valid=(-1, 1), signed=True, **_AFF),
    PolicyOp('zoom_in', 'zoom_in', fn=lambda x, m: zoomxy_mat(x, p=1., draw_x=lambda _: m, draw_y=lambda _: m),
             neutral=1., valid=(1, 10), **_AFF),
    PolicyOp('zoom_out', 'zoom_out', fn=lambda x, m: zoomxy_mat(x, p=1., draw_x=lambda _: m, draw_y=lambda _: m),
             neutral=1., valid=(.05, 1), **_AFF),
    PolicyOp('hflip', 'hflip', fn=lambda x, m: flip_mat(x, p=1., draw=lambda _: m), valid=(0, 1), continuous=False, **_AFF),
    PolicyOp('vflip', 'vflip', fn=lambda x, m: vflip_mat(x, p=1., draw=lambda _: m), valid=(0, 1), continuous=False, **_AFF),
    PolicyOp('darken', 'darken', 'pixel', brightness_factor, neutral=1., valid=(0, 1)),
    PolicyOp('brighten', 'brighten', 'pixel', brightness_factor, neutral=1., valid=(1, 100)),
    PolicyOp('contrast', 'contrast', 'pixel', _contrast, neutral=1., valid=(1e-3, 1)),
    PolicyOp('noise', 'noise', 'pixel', gaussian_noise, valid=(0, 10)),
    PolicyOp('blur', 'blur', 'pixel', gaussian_blur, valid=(0, 50)),
    PolicyOp('salt_pepper', 'salt_pepper', 'pixel', salt_pepper, valid=(0, 1)),
    PolicyOp('cutout', 'cutout', 'pixel', cutout, valid=(0, 1)),
    PolicyOp('channel_shift', 'channel_shift', 'pixel', channel_shift, valid=(-1, 1), signed=True),
]}
SOURCES = tuple(dict.fromkeys(op.source for op in POLICY_OPS.values()))  # the catalogue names, in order


def policy_ops(name: str) -> list:
    "The operations that realize the catalogue transform `name` (`'shift'` -> shift_x, shift_y)."
    check_choice('transform name', name, SOURCES)
    return [op for op in POLICY_OPS.values() if op.source == name]


def check_limit(name, value):
    "A safe limit for the catalogue transform `name`: a number in its valid range (0 or 1 for an on/off one)."
    op = policy_ops(name)[0]
    lo, hi = op.valid
    v = check_number(f"limit of {name!r}", value, lo=lo, hi=hi)
    if not op.continuous: check_choice(f"limit of {name!r} (an on/off transform)", v, (lo, hi))
    return v


def draw_magnitudes(ops,  # the `PolicyOp`s, one per row of `limits`
                    limits,  # (n_ops, N) per-image limits, or (n_ops,) for every image
                    n=None):  # number of images when `limits` is (n_ops,)
    """Per-image magnitudes uniform up to per-image `limits` ((n_ops, N) or (n_ops,) tensor, broadcast to `n`
    images): neutral + U(0, 1) * (limit - neutral), with a random sign for signed operations; on/off operations get
    their limit. One batched draw for all operations and images."""
    limits = limits if limits.ndim == 2 else limits[:, None].expand(-1, n)
    col = lambda f: torch.tensor([float(f(op)) for op in ops], dtype=limits.dtype, device=limits.device)[:, None]
    neutral, signed, cont = col(lambda o: o.neutral), col(lambda o: o.signed), col(lambda o: o.continuous)
    u = torch.where(cont > 0, torch.rand_like(limits), torch.ones_like(limits))
    m = neutral + u * (limits - neutral)
    sign = torch.where(signed > 0, torch.randint_like(limits, 2) * 2 - 1, torch.ones_like(limits))
    return torch.where(signed > 0, sign * m.abs(), m)


class OpDraws(RandTransform):
    """Draws, once per training batch, one magnitude per (operation, image) with `sampler(x, y) -> (n_ops, N)`
    (`y`: the batch's labels, or None); `OpsAffine` and `OpsPixel` apply them. It changes nothing itself."""
    order, split_idx = 1, 0  # before IntToFloatTensor (10) and every augmentation; training only

    def __init__(self,
                 ops,  # the `PolicyOp`s drawn for, in the order of the sampler's rows
                 sampler):  # sampler(x, y) -> (n_ops, N) magnitudes (neutral where an op is not applied)
        super().__init__(p=1.)
        self.ops, self.sampler, self.params = list(ops), sampler, None

    def __repr__(self): return f"{type(self).__name__}({', '.join(op.name for op in self.ops)})"
    __str__ = __repr__  # fastai's Pipeline shows str()

    def before_call(self, b, split_idx):
        self.do, self.params = False, None  # do=False: the batch goes through untouched
        if split_idx is not None and split_idx != self.split_idx: return
        x, y = (b[0], b[1] if len(b) > 1 else None) if isinstance(b, (tuple, list)) else (b, None)
        while isinstance(x, (tuple, list)): x = x[0]
        with torch._C.DisableTorchFunctionSubclass():
            self.params = self.sampler(x, y)

    def rows(self, kind, x):
        "The (n, N) draws of the operations of `kind` for the batch `x`, with a clear error when none were drawn."
        if self.params is None or self.params.shape[1] != x.shape[0]:
            raise CnnTricksError("no draws for this batch: put the whole list of transforms (OpDraws included) in "
                                 "batch_tfms, as the builder returned it")
        return self.params[[i for i, op in enumerate(self.ops) if op.kind == kind]]


def _ops_mats(x, draws):
    "The composed (N,3,3) matrices of the geometric operations at this batch's draws (identity for neutral ones)."
    ops = [op for op in draws.ops if op.kind == 'affine']
    m = draws.rows('affine', x).to(x.dtype)
    return compose_mats(x, [op.fn(x, m[k]) for k, op in enumerate(ops)])


class OpsAffine(AffineFill):
    """The geometric operations of an `OpDraws` in one `AffineFill` pass; with nothing else fused in, only the images
    that move are resampled (the others are copied exactly)."""
    def __init__(self,
                 draws,  # the `OpDraws` whose geometric rows to apply
                 fill_mode='reflection',  # one of `FILL_MODES`
                 **kwargs):  # size, mode, cval, align_corners (see `AffineFill`)
        check_choice('fill_mode', fill_mode, FILL_MODES)
        super().__init__(aff_fs=partial(_ops_mats, draws=draws), fill_mode=fill_mode, **kwargs)
        self.names = [op.name for op in draws.ops if op.kind == 'affine']

    def __repr__(self): return f"{type(self).__name__}({', '.join(self.names)}; fill_mode={self.fill_mode!r})"
    __str__ = __repr__

    def _sample(self, x, mode):
        h, w = x.shape[-2:]
        size = (h, w) if self.size is None else (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
        if self.split_idx or len(self.coord_fs) or tuple(size) != (h, w): return super()._sample(x, mode)
        theta = self.mat.as_subclass(torch.Tensor)
        eye = torch.eye(2, 3, dtype=theta.dtype, device=theta.device)
        moved = (theta != eye).flatten(1).any(1)
        if bool(moved.all()): return super()._sample(x, mode)
        xs = x.as_subclass(torch.Tensor)
        out = xs.clone()
        if bool(moved.any()):  # one grid_sample for the images that move
            coords = affine_grid_fast(theta[moved].to(xs.dtype), (int(moved.sum()), xs.shape[1], h, w), self.align_corners)
            out[moved] = fill_sample(xs[moved], coords, mode, self.fill_mode, self.cval, self.align_corners)
        return out


class OpsPixel(PixelTfm):
    "The pixel operations of an `OpDraws`, each applied in one batched call to the images drawn for it."
    def __init__(self, draws):  # the `OpDraws` whose pixel rows to apply
        super().__init__(p=1.)
        self.draws = draws
        self.ops = [op for op in draws.ops if op.kind == 'pixel']

    def __repr__(self): return f"{type(self).__name__}({', '.join(op.name for op in self.ops)})"
    __str__ = __repr__  # fastai's Pipeline shows str()

    def before_call(self, b, split_idx):
        self.do, self.magnitude = True, None
        if split_idx is not None and split_idx != self.split_idx: return
        x = b
        while isinstance(x, (tuple, list)): x = x[0]
        self.magnitude = self.draws.rows('pixel', x)

    def _apply(self, x, m, inplace=False):
        y = x
        for op, mk in zip(self.ops, m.to(x.dtype)):
            rows = mk != op.neutral
            if not bool(rows.any()): continue
            if y is x and not inplace: y = x.clone()
            y[rows] = op.fn(y[rows], mk[rows])
        return y

    def apply_fixed(self, x, magnitude):
        raise CnnTricksError("OpsPixel applies drawn magnitudes; use the augment wing's transforms for fixed ones")


def drawn_tfms(ops,  # the `PolicyOp`s to apply
               sampler,  # sampler(x, y) -> (n_ops, N) per-image magnitudes, neutral where an op is not applied
               fill_mode='reflection') -> list:  # fill mode of the one resampling pass
    """fastai batch transforms applying `ops` at the magnitudes `sampler(x, y) -> (n_ops, N)` draws per batch: an
    `OpDraws`, then an `OpsAffine` (if any op is geometric) and an `OpsPixel` (if any is a pixel op)."""
    draws = OpDraws(ops, sampler)
    kinds = {op.kind for op in ops}
    return ([draws] + ([OpsAffine(draws, fill_mode=fill_mode)] if 'affine' in kinds else [])
            + ([OpsPixel(draws)] if 'pixel' in kinds else []))
