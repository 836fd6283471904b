"""The robustness check of one model: how much do *this model's* predictions change under each transform?

Which function answers which question:
  * `learn.invariance_check()` (here): robustness of the given model. With a model trained without augmentation
    it flags transforms the model never saw (a shifted 3, a mirrored shirt), not transforms that change labels.
  * `label_invariance_check(dls)` (`label.py`): does the *label* survive the transform, per class? References
    allowed to learn the invariance answer it; its report shows both axes (`kind='label'`).
  * `assert_label_invariant(learn, ...)`: a test-suite guard on the robustness axis (at most `max_flip_rate` of
    this model's predictions change).

`learn.invariance_check()` sweeps each transform over fixed magnitudes on the validation set and measures, per
(transform, magnitude): accuracy and **affinity** (augmented - clean accuracy, Gontijo-Lopes et al. 2020), the
**flip rate** (items whose prediction changes), the mean Jensen-Shannon divergence between clean and augmented
predictions (label-free, as in AugMix) and the **class transitions** of the flipped items (`6 → 9 (38%)`).
How the sweep reads the data and what it costs: `sweep.py`. The transforms and how to add one: `catalogue.py`.

The model runs in its own dtype (a half or bf16 model gets its batches cast after the float32 transforms) and in
eval mode; it is left exactly as found, and so are the DataLoader and its transforms (the sweep reads a copy).
"""
from __future__ import annotations

import torch
from fastai.learner import Learner
from fastai.data.load import DataLoader
from fastcore.basics import patch

from ..core import (CnnTricksError, preserve_model, model_device, check_type, check_count, check_seed, check_bool,
                    check_choice, check_fraction)
from ..augment import FILL_MODES
from .catalogue import fixed_tfm, QUICK_SWEEP
from .sweep import image_space_dl, resolve_sweep, run_sweep, FlipRedraw
from .report import InvarianceReport

__all__ = ['invariance_check', 'assert_label_invariant', 'quick_invariance_check']


def _check_dl(dl):
    check_type('dl', dl, DataLoader, 'a fastai DataLoader (e.g. learn.dls.valid)')
    if not hasattr(dl, 'after_batch'):
        raise CnnTricksError(f"dl={type(dl).__name__} is not valid; pass a fastai TfmdDL with batch transforms "
                             "(e.g. learn.dls.valid)")
    if len(dl.dataset) == 0: raise CnnTricksError("the DataLoader is empty; the invariance check needs items")
    return dl


@patch
def invariance_check(self: Learner,
                     tfms=None,  # names from the catalogue (default `DEFAULT_SWEEP`), transforms with apply_fixed, functions f(x, m)
                     magnitudes=None,  # None: each transform's default sweep; a list for all; or a dict name -> list
                     dl=None,  # DataLoader to measure on (default: the validation set)
                     n_items=None,  # use only the first `n_items` items of `dl`
                     fill_mode='reflection',  # fill mode of the geometric transforms (fastai's default)
                     progress=True,  # show a fastprogress bar
                     seed=0,  # seed of the random transforms (noise), per batch
                     keep_flips=32):  # flipped items remembered per (transform, magnitude) for `show_flips`
    """Robustness of this model: sweep each transform over fixed magnitudes on `dl` and measure accuracy, affinity,
    flip rate, JS divergence and class transitions (whether labels survive: `label_invariance_check`)."""
    # every argument is checked before the data is read or the model touched
    dl = _check_dl(self.dls.valid if dl is None else dl)
    check_count('n_items', n_items, allow_none=True)
    check_choice('fill_mode', fill_mode, FILL_MODES)
    check_bool('progress', progress)
    check_seed('seed', seed, allow_none=False)
    check_count('keep_flips', keep_flips, allow_zero=True)
    sweep = resolve_sweep(tfms, magnitudes, fill_mode)
    img_dl, post = image_space_dl(dl)
    device = model_device(self.model)
    with preserve_model(self.model), torch.no_grad():
        self.model.eval()
        keys, stats, ys, clean_preds, flips = run_sweep(self.model, img_dl, post, sweep, n_items=n_items,
                                                        progress=progress, seed=seed, keep_flips=keep_flips,
                                                        device=device)
    redraw = FlipRedraw(img_dl, keys, n_items=n_items, seed=seed, device=device)
    return InvarianceReport(sweep, keys, stats, ys, clean_preds, flips, vocab=getattr(self.dls, 'vocab', None),
                            redraw=redraw)


def assert_label_invariant(learn, tfm, magnitude, max_flip_rate=0.02, dl=None, n_items=None):
    "Raise `AssertionError` (listing the top class transitions) unless at most `max_flip_rate` of this model's predictions change under `tfm` at `magnitude` (robustness, not label survival)."
    check_type('learn', learn, Learner, 'a fastai Learner')
    check_fraction('max_flip_rate', max_flip_rate, allow_one=True)
    ft = fixed_tfm(tfm)
    rep = learn.invariance_check([ft], {ft.name: [magnitude]}, dl=dl, n_items=n_items, progress=False)
    row = rep.row(ft.name, magnitude)
    if row['flip_rate'] > max_flip_rate:
        raise AssertionError(
            f"{ft.name} at {magnitude}{ft.unit and ' ' + ft.unit} changes {row['flip_rate']:.1%} of the predictions "
            f"(max {max_flip_rate:.1%}); accuracy {row['clean_acc']:.1%} -> {row['acc']:.1%}; top transitions: "
            f"{row['top_transitions'] or 'none'}")
    return rep


def quick_invariance_check(learn, n_items=256, progress=False, **kwargs):
    "`learn.invariance_check` over `QUICK_SWEEP` on the first `n_items` validation items: the demo's check."
    check_type('learn', learn, Learner, 'a fastai Learner')
    return learn.invariance_check(list(QUICK_SWEEP), QUICK_SWEEP, n_items=n_items, progress=progress, **kwargs)
