"""`label_invariance_check(dls)`: does the *label* survive each transform at each magnitude, per class?

`learn.invariance_check()` asks how much one model's predictions move; with a model trained without augmentation
that is robustness, not label survival (a shifted 3 is still a 3, the model just never saw one). This check asks
the data instead, through references *allowed to learn the invariance* (`label_reference.py`): per transform, a
small CNN trained from scratch with that transform, one head per nested magnitude range. For (transform, magnitude
m, class c) the measure is the **label drop**: accuracy of the head trained up to m on class-c images transformed at
m, against the clean head on clean class-c images, every image answered out of fold. A label that survives costs
nothing once the reference may learn the invariance; a label that changes (a 6 turned by 180° is a 9) cannot be
learnt away, and the extra errors land on the colliding pair (`transitions`: `6 → 9 (…%)`).

A second signal catches the labels a reference *can* learn to keep apart but a reader would not: **swaps**. A vertical
flip turns a 2 into a shape a reader takes for a 5 and a 5 into a 2; a small CNN still tells a flipped 2 from a real
5, so the label drop stays near zero. A clean reference (trained without the transform, out of fold) reads the
flipped images: where it sends at least `SWAP_MIN` of class a's images to b *and* of b's to a, the transform swaps
the two classes, and both count as label-changing at that magnitude (`swaps`, column `label_swaps`). A model that
merely never saw a transform sends its images to one or two sink classes (a shifted digit reads as a 1), not both
ways; bench/label_invariance.py measures both cases.

The report also carries the robustness axis: the existing `invariance_check` columns for a clean model, either the
given `learn` (over its validation set) or a clean reference of the same kind (out of fold, same items).
"""
from __future__ import annotations

import numpy as np
import torch
from fastprogress.fastprogress import progress_bar

from ..core import (CnnTricksError, check_count, check_bool, check_seed, check_choice, check_type, check_int,
                    check_positive)
from ..augment import FILL_MODES
from .sweep import resolve_sweep, run_sweep, FlipRedraw
from .report import InvarianceReport
from .label_reference import image_tensors, fold_ids, train_reference, reference_predictions, OutOfFold

__all__ = ['label_invariance_check']


def _label_stats(C, y, clean, aug):
    """Per non-neutral magnitude k, per class: n, base (clean head on clean), acc (head k on transformed), ref_clean
    (head k on clean), dd (sum of squared paired differences base - acc), conf / base_conf (true x predicted)."""
    K = aug.shape[1]
    n = np.bincount(y, minlength=C).astype(float)
    out = {k: np.zeros((K, C)) for k in ('base', 'acc', 'ref_clean', 'dd')}
    out['conf'], out['base_conf'] = np.zeros((K, C, C)), np.zeros((K, C, C))
    b = (clean[:, 0] == y).astype(float)
    base_conf = np.bincount(y * C + clean[:, 0], minlength=C * C).reshape(C, C)
    for k in range(K):
        a = (aug[:, k] == y).astype(float)
        out['base'][k] = np.bincount(y, b, C)
        out['acc'][k] = np.bincount(y, a, C)
        out['ref_clean'][k] = np.bincount(y, (clean[:, k + 1] == y).astype(float), C)
        out['dd'][k] = np.bincount(y, (b - a) ** 2, C)
        out['conf'][k] = np.bincount(y * C + aug[:, k], minlength=C * C).reshape(C, C)
        out['base_conf'][k] = base_conf
    out['n'] = n
    return out


def _merge(parts):
    "Label statistics of several transforms, stacked in sweep-key order."
    return {k: parts[0][k] if k == 'n' else np.concatenate([p[k] for p in parts]) for k in parts[0]}


def label_invariance_check(dls,  # fastai DataLoaders (all items of train and valid are used) or one DataLoader
                           tfms=None,  # as `invariance_check`: catalogue names (default `DEFAULT_SWEEP`), transforms, f(x, m)
                           magnitudes=None,  # as `invariance_check`: None (defaults), a list for all, or a dict name -> list
                           learn=None,  # a Learner for the robustness axis; None: the clean reference (trained either way, for swaps)
                           n_items=None,  # use only the first `n_items` items
                           size=16,  # px: the references see the images resized to this (transforms apply at it)
                           epochs=12,  # training epochs of each reference
                           width=32,  # channels of the references' first stage
                           bs=64,  # training batch size
                           lr=4e-3,  # peak learning rate (one-cycle AdamW)
                           n_folds=2,  # cross-validation folds: every image is answered by references that did not train on it
                           fill_mode='reflection',  # fill mode of the geometric transforms
                           seed=0,  # seed of the folds, initialization, training draws and random transforms
                           progress=True,  # show a fastprogress bar (one step per transform)
                           keep_flips=32):  # robustness axis: flipped items remembered per key for `show_flips`
    """Per (transform, magnitude) and per class, whether the label survives: references trained with the transform,
    one head per nested magnitude range, against their clean head, out of fold; and the class pairs the transform
    swaps, read by a clean reference (trained here even with `learn`). Returns an `InvarianceReport` of
    kind 'label' (`safe_magnitudes`, `transitions` and `summary` use the label measure; robustness columns beside)."""
    check_count('n_items', n_items, allow_none=True)
    check_int('size', size, lo=8, hi=256)
    check_count('epochs', epochs)
    check_count('width', width)
    check_count('bs', bs)
    check_positive('lr', lr)
    check_int('n_folds', n_folds, lo=2, hi=10)
    check_choice('fill_mode', fill_mode, FILL_MODES)
    check_seed('seed', seed, allow_none=False)
    check_bool('progress', progress)
    check_count('keep_flips', keep_flips, allow_zero=True)
    if learn is not None:
        from fastai.learner import Learner
        check_type('learn', learn, Learner, 'a fastai Learner (or None: a clean reference is trained)')
    sweep = resolve_sweep(tfms, magnitudes, fill_mode)
    x, y = image_tensors(dls, size, n_items)
    vocab = getattr(dls, 'vocab', None)
    C = len(vocab) if vocab is not None else int(y.max()) + 1
    if y.min() < 0 or y.max() >= C: raise CnnTricksError(f"labels must lie in 0..{C - 1}; got {int(y.min())}..{int(y.max())}")
    counts = np.bincount(y.numpy(), minlength=C)
    if (counts[counts > 0] < n_folds).any():
        raise CnnTricksError(f"every class needs at least n_folds={n_folds} items; the smallest has "
                             f"{counts[counts > 0].min()} (pass more items or fewer folds)")
    if len(y) // n_folds * (n_folds - 1) < bs:
        raise CnnTricksError(f"bs={bs} is not valid; it is larger than a fold's training set "
                             f"({len(y) // n_folds * (n_folds - 1)} items); use a smaller bs or more items")
    folds = fold_ids(y.numpy(), n_folds, seed)
    yn = y.numpy()
    kw = dict(epochs=epochs, bs=bs, lr=lr, width=width, seed=seed)
    todo = [(ft, ms) for ft, ms in sweep] + [None]  # None: the clean reference (swaps; robustness without `learn`)
    parts, clean_nets = [], []
    for job in (progress_bar(todo, leave=False) if progress else todo):  # fastprogress prints even with display=False
        if job is None:  # the clean reference of the robustness axis: one per fold
            clean_nets = [train_reference(x[torch.as_tensor(folds != f)], y[torch.as_tensor(folds != f)], C,
                                          **{**kw, 'seed': seed + f}) for f in range(n_folds)]
            continue
        ft, ms = job
        K = sum(ft.severity(m) > 0 for m in ms)
        clean, aug = np.zeros((len(y), K + 1), np.int64), np.zeros((len(y), K), np.int64)
        for f in range(n_folds):
            tr = torch.as_tensor(folds != f)
            net = train_reference(x[tr], y[tr], C, ft, ms, **{**kw, 'seed': seed + f})
            c, a = reference_predictions(net, x[~tr], ft, ms, seed=seed + f)
            clean[~tr.numpy()], aug[~tr.numpy()] = c, a
        parts.append(_label_stats(C, yn, clean, aug))
    label = _merge(parts)
    model = OutOfFold(clean_nets)
    dl = model.loader(x, y, folds)
    with torch.no_grad():
        keys, stats, ys, preds, flips = run_sweep(model, dl, lambda b: b, sweep, seed=seed, keep_flips=keep_flips,
                                                  device=torch.device('cpu'))
    # share of class a's items the clean reference moves to b, per key: the swap signal (see the module docstring)
    label['swap'] = stats['trans'].reshape(len(keys), C, C) / np.maximum(stats['n_y'], 1)[None, :, None]
    if learn is not None:
        rob = learn.invariance_check([ft for ft, _ in sweep], {ft.name: ms for ft, ms in sweep}, fill_mode=fill_mode,
                                     progress=False, seed=seed, keep_flips=keep_flips)
        keys, stats, ys, preds, flips, redraw = rob.keys, rob.stats, rob.ys, rob.clean_preds, rob.flips, rob.redraw
        robust = f'the given learner ({type(learn.model).__name__}) on its validation set'
    else:
        redraw = FlipRedraw(dl, keys, seed=seed)
        robust = 'a clean reference of the same kind (out of fold, same items)'
    return InvarianceReport(sweep, keys, stats, ys, preds, flips, vocab=vocab, redraw=redraw, label=label,
                            robustness_model=robust)
