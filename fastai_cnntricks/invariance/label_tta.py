"""Label-safe test-time augmentation: `learn.tta` with label-preserving transforms only.

fastai's `learn.tta` averages predictions over the *training* augmentations (it runs the DataLoader with the
training split's transforms), so a 180-degree rotation or a vertical flip the user trained with for robustness
also averages a 6 with a 9. `learn.label_safe_tta(safe=report.safe_magnitudes())` runs the same `tta` with the
DataLoader's own transforms held at their validation behaviour (resizing, normalization: no training augmentation)
plus transforms built from the label-preserving magnitudes: the catalogue's suggestions fused into one resampling
pass (`policy='suggest'`), or the bounded TrivialAugment (`policy='trivial'`), or `tfms=` of your own. The
Learner's DataLoaders are left exactly as found (their pipelines and every transform's state), also when it raises.
"""
from __future__ import annotations
from contextlib import contextmanager

from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastcore.basics import patch
from fastcore.foundation import L
from fasttransform import Pipeline, Transform

from ..augment import bounded_trivial_augment, fuse_tfms
from ..core import (CnnTricksError, check_bool, check_choice, check_count, check_int, check_number, check_type,
                    preserve_model)
from .catalogue import FIXED_TFMS, fixed_catalogue, suggested_tfms

__all__ = ['TTA_POLICIES', 'label_safe_tfms']

TTA_POLICIES = ('suggest', 'trivial')  # the catalogue's suggested transforms, or the bounded TrivialAugment
_PIPES = ('after_item', 'before_batch', 'after_batch')


class _AsValidation(Transform):
    "Runs the wrapped transform as on the validation set whatever the split: the DataLoader's augmentations stay off."
    split_idx = None

    def __init__(self, tfm):
        super().__init__()
        self.tfm, self.order = tfm, getattr(tfm, 'order', 0)

    def __call__(self, b, split_idx=None, **kwargs): return self.tfm(b, split_idx=1, **kwargs)
    def decode(self, b, **kwargs): return self.tfm.decode(b, **kwargs)
    def __repr__(self): return f"AsValidation({self.tfm!r})"


def _check_safe(safe):
    "A {catalogue name: magnitude} dict, each magnitude within its transform's valid range."
    check_type('safe', safe, dict, "a {transform name: safe magnitude} dict (safe_magnitudes())")
    for name, m in safe.items():
        check_choice('safe key', name, tuple(FIXED_TFMS))
        if m is not None: fixed_catalogue()[name].check(m)
    return safe


def label_safe_tfms(safe,  # {catalogue name: largest label-preserving magnitude}, as safe_magnitudes() returns
                    policy='suggest') -> list:  # 'suggest': the catalogue's fastai transforms; 'trivial': bounded TrivialAugment
    "The label-preserving batch transforms for TTA: the geometric ones fused into one resampling pass."
    _check_safe(safe)
    check_choice('policy', policy, TTA_POLICIES)
    if policy == 'trivial': return bounded_trivial_augment({k: v for k, v in safe.items() if v is not None})
    return fuse_tfms(suggested_tfms(safe, fixed_catalogue())) if safe else []


def _check_tfms(tfms):
    "A list of fastai transforms (the label-preserving ones to add)."
    items = list(tfms) if isinstance(tfms, (list, tuple, L)) else [tfms]
    for t in items: check_type('tfms', t, Transform, "a list of fastai batch transforms (e.g. bounded_trivial_augment(safe))")
    return items


@contextmanager
def _loaders_as_found(loaders):
    "Put every pipeline of `loaders` back as found on exit, its transforms' state included -- also when the body raises."
    state = []
    for dl in dict.fromkeys(loaders):  # distinct, in order
        for nm in _PIPES:
            pipe = getattr(dl, nm, None)
            if isinstance(pipe, Pipeline):
                state.append((dl, nm, pipe, L(pipe.fs), pipe.split_idx, [(t, dict(t.__dict__)) for t in pipe.fs]))
    try: yield
    finally:
        for dl, nm, pipe, fs, split_idx, dicts in state:
            setattr(dl, nm, pipe)
            pipe.fs, pipe.split_idx = fs, split_idx
            for t, d in dicts:
                t.__dict__.clear(); t.__dict__.update(d)


@patch
def label_safe_tta(self: Learner,
                   ds_idx=1,  # which of learn.dls to predict (1: validation) when `dl` is None
                   dl=None,  # a DataLoader to predict instead (e.g. learn.dls.test_dl(items))
                   safe=None,  # {transform name: largest label-preserving magnitude} (safe_magnitudes()) ...
                   tfms=None,  # ... or your own label-preserving batch transforms
                   n=4,  # augmented passes
                   beta=0.25,  # weight of the clean prediction (fastai's `tta`); None returns (augmented, clean)
                   use_max=False,  # the maximum over passes instead of the mean
                   policy='suggest'):  # how `safe` becomes transforms: 'suggest' or 'trivial' (see `label_safe_tfms`)
    """fastai's `tta` with label-preserving transforms only: the DataLoader's own transforms at their validation
    behaviour plus `tfms` (or those built from `safe`); returns (predictions, targets) as `tta` does."""
    if (safe is None) == (tfms is None):
        raise CnnTricksError("pass exactly one of safe= (a {transform: magnitude} dict) or tfms= (batch transforms)")
    check_int('ds_idx', ds_idx, lo=0, hi=len(self.dls.loaders) - 1)
    if dl is not None:
        check_type('dl', dl, DataLoader, 'a fastai DataLoader (e.g. learn.dls.test_dl(items))')
        if not hasattr(dl, 'after_batch'): raise CnnTricksError("dl is not valid; pass a fastai TfmdDL (learn.dls.test_dl(...))")
    check_count('n', n)
    check_number('beta', beta, lo=0, hi=1, allow_none=True)
    check_bool('use_max', use_max)
    check_choice('policy', policy, TTA_POLICIES)
    extra = label_safe_tfms(safe, policy) if safe is not None else _check_tfms(tfms)
    base = dl if dl is not None else self.dls[ds_idx]
    with _loaders_as_found([*self.dls.loaders, base]), preserve_model(self.model):
        epoch = getattr(self, 'epoch', None)
        tdl = base.new(shuffle=False, drop_last=False,
                       after_item=[_AsValidation(t) for t in base.after_item.fs],
                       before_batch=[_AsValidation(t) for t in base.before_batch.fs],
                       after_batch=[*(_AsValidation(t) for t in base.after_batch.fs), *extra])
        try: return self.tta(dl=tdl, n=n, beta=beta, use_max=use_max)
        finally:
            if epoch is not None: self.epoch = epoch
