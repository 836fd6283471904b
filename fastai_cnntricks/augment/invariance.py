"""The label-invariance check: how much may an augmentation change an example before its label changes?

`learn.invariance_check()` sweeps each transform over fixed magnitudes on the validation set and measures, per
(transform, magnitude): accuracy and **affinity** (augmented - clean accuracy, Gontijo-Lopes et al. 2020), the
**flip rate** (items whose prediction changes), the mean Jensen-Shannon divergence between clean and augmented
predictions (label-free, as in AugMix) and the **class transitions** of the flipped items (`6 → 9 (38%)`).

Where the transforms apply: in image space. The batches are taken from the DataLoader's `after_batch` pipeline *up
to* its first standardizing step (the first non-random transform after `IntToFloatTensor`, e.g. `Normalize`),
i.e. floats in [0, 1]; each transform resamples that batch once, and the rest of the pipeline (`Normalize`, ...)
is applied before the model. Nothing is decoded, so non-invertible standardization (sample-wise, ZCA) works too.

Cost: the DataLoader is read once; each batch goes through the model once clean and once per (transform,
magnitude); the statistics are accumulated on the device as small tensors. No per-item Python loop.
"""
from __future__ import annotations
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from fastai.learner import Learner
from fastai.data.load import DataLoader
from fastai.vision.augment import RandTransform
from fastai.data.transforms import IntToFloatTensor
from fastai.torch_core import TensorImage
from fastcore.basics import patch
from fastprogress.fastprogress import progress_bar
from fasttransform import Pipeline

from ..core import CnnTricksError, preserve_model, model_device
from .invariance_catalogue import FixedTfm, fixed_tfm, DEFAULT_SWEEP
from .invariance_report import InvarianceReport

__all__ = ['invariance_check', 'image_space_dl', 'resolve_sweep', 'assert_label_invariant']


def image_space_dl(dl):
    """(`dl` without shuffling whose batches stop before the first standardizing transform, the rest of the
    pipeline as a `Pipeline`): model input = rest(f(image-space batch))."""
    fs = list(dl.after_batch.fs)
    cut = next((i for i, t in enumerate(fs) if t.order > IntToFloatTensor.order and not isinstance(t, RandTransform)),
               len(fs))
    pre, post = Pipeline(fs[:cut], split_idx=1), Pipeline(fs[cut:], split_idx=1)
    return dl.new(shuffle=False, drop_last=False, after_batch=pre), post


def resolve_sweep(tfms=None, magnitudes=None, fill_mode='reflection'):
    """[(FixedTfm, magnitudes)] from `tfms` (None: `DEFAULT_SWEEP`; a name, transform or function, or a list of
    them) and `magnitudes` (None: the defaults; a list for every transform; or a dict name -> list)."""
    if tfms is None: tfms = DEFAULT_SWEEP
    if isinstance(tfms, (str, FixedTfm)) or callable(tfms) or hasattr(tfms, 'apply_fixed'): tfms = [tfms]
    res = []
    for t in tfms:
        ft = fixed_tfm(t, fill_mode)
        if isinstance(magnitudes, dict): ms = magnitudes.get(ft.name, magnitudes.get(t if isinstance(t, str) else None))
        else: ms = magnitudes
        if ms is None: ms = ft.magnitudes
        if isinstance(ms, (int, float)): ms = [ms]
        ms = [ft.check(m) for m in ms]
        if not ms:
            raise CnnTricksError(f"no magnitudes for transform {ft.name!r}; pass magnitudes={{{ft.name!r}: [...]}}")
        # the neutral magnitude is the clean pass itself: keep it in the table, never recompute it
        ms = sorted(set(ms) | {ft.neutral}, key=lambda m: (ft.severity(m), m))
        res.append((ft, ms))
    names = [ft.name for ft, _ in res]
    if len(set(names)) != len(names):
        raise CnnTricksError(f"transform names must be unique, got {names}; wrap one in FixedTfm(name=...)")
    return res


def _check_batch(b, out, n_classes):
    if len(b) != 2:
        raise CnnTricksError(f"the invariance check needs batches (images, labels); got {len(b)} elements per batch")
    y = b[1]
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point():
        raise CnnTricksError("the invariance check needs a single-label classification learner (integer class "
                             f"targets of shape (N,)); got targets of shape {tuple(getattr(y, 'shape', ()))}")
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < 2:
        raise CnnTricksError("the invariance check needs a classifier whose output is (N, n_classes) logits; got "
                             f"output of shape {tuple(getattr(out, 'shape', ()))}")
    if n_classes and out.shape[1] != n_classes:
        raise CnnTricksError(f"the model outputs {out.shape[1]} classes but the data has {n_classes}")


def _logits(model, x):
    # a plain tensor into the model: fastai's TensorImage would route every layer's op through __torch_function__
    out = model(x.as_subclass(torch.Tensor))
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out


def _js_bits(lp, lq):
    "Jensen-Shannon divergence (bits, in [0, 1]) between rows of log-probabilities `lp`, `lq`."
    lm = torch.logaddexp(lp, lq) - math.log(2)
    return 0.5 * ((lp.exp() * (lp - lm)).sum(1) + (lq.exp() * (lq - lm)).sum(1)) / math.log(2)


def _batches(dl, n_items):
    "The image-space batches of `dl`, truncated to `n_items` items."
    seen = 0
    for b in dl:
        if n_items is not None and seen >= n_items: break
        if n_items is not None and seen + len(b[0]) > n_items: b = tuple(o[:n_items - seen] for o in b)
        seen += len(b[0])
        yield b


@contextmanager
def _seeded(ft, seed, device):
    "Random transforms (noise) draw from a seed of their own, so `show_flips` can redraw the same images."
    if not ft.random:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        torch.manual_seed(seed)
        yield


def _sweep(model, dl, post, sweep, n_items, progress, seed, keep_flips):
    device = model_device(model)
    n_classes = getattr(getattr(dl, 'dataset', None), 'c', None) or getattr(dl, 'c', None)
    keys = [(ft, m) for ft, ms in sweep for m in ms if ft.severity(m) > 0]
    K = len(keys)
    stats = None
    ys, clean_preds, flips = [], [], [[] for _ in keys]
    n_seen = 0
    n_batches = len(dl) if n_items is None else min(len(dl), math.ceil(n_items / dl.bs))
    for bi, b in enumerate(progress_bar(_batches(dl, n_items), total=n_batches, display=progress, leave=False)):
        x, y = TensorImage(b[0].to(device)), b[1].to(device).as_subclass(torch.Tensor)
        if len(x) == 0: continue
        lc = _logits(model, post(x))
        if stats is None:
            _check_batch(b, lc, n_classes)
            C = lc.shape[1]
            stats = dict(correct=torch.zeros(K, device=device), flips=torch.zeros(K, device=device),
                         js=torch.zeros(K, device=device), trans=torch.zeros(K, C * C, device=device),
                         n_y=torch.zeros(C, device=device))
        C = lc.shape[1]
        lpc = F.log_softmax(lc.float(), 1)
        pc = lpc.argmax(1)
        stats['n_y'] += torch.bincount(y, minlength=C)[:C].float()
        ys.append(y); clean_preds.append(pc)
        for k, (ft, m) in enumerate(keys):
            with _seeded(ft, seed + 7919 * bi + k, device):
                xa = ft(x, m)
            lpa = F.log_softmax(_logits(model, post(xa)).float(), 1)
            pa = lpa.argmax(1)
            changed = pa != pc
            stats['correct'][k] += (pa == y).sum()
            stats['flips'][k] += changed.sum()
            stats['js'][k] += _js_bits(lpc, lpa).sum()
            moved = changed & (pa != y)  # a change that corrects a mistake is not a label transition
            stats['trans'][k] += torch.bincount((y * C + pa)[moved], minlength=C * C)[:C * C].float()
            if len(flips[k]) < keep_flips:  # indices only; show_flips redraws the images
                idx = changed.nonzero()[:, 0]
                flips[k].extend(zip((idx + n_seen).tolist(), pa[idx].tolist()))
        n_seen += len(x)
    if stats is None: raise CnnTricksError("the DataLoader is empty; pass a dl (or n_items) with at least one item")
    stats = {k: v.cpu().numpy() for k, v in stats.items()}
    return keys, stats, torch.cat(ys).cpu().numpy(), torch.cat(clean_preds).cpu().numpy(), \
        [f[:keep_flips] for f in flips]


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
    "Sweep each transform over fixed magnitudes on `dl` and measure accuracy, affinity, flip rate, JS divergence and class transitions."
    dl = self.dls.valid if dl is None else dl
    if not isinstance(dl, DataLoader) or not hasattr(dl, 'after_batch'):
        raise CnnTricksError(f"dl={type(dl).__name__} is not valid; pass a fastai DataLoader (e.g. learn.dls.valid)")
    if len(dl.dataset) == 0: raise CnnTricksError("the DataLoader is empty; the invariance check needs items")
    if n_items is not None and (not isinstance(n_items, int) or n_items < 1):
        raise CnnTricksError(f"n_items={n_items!r} is not valid; it must be a whole number >= 1 (or None for all)")
    sweep = resolve_sweep(tfms, magnitudes, fill_mode)
    img_dl, post = image_space_dl(dl)
    with preserve_model(self.model), torch.no_grad():
        self.model.eval()
        keys, stats, ys, clean_preds, flips = _sweep(self.model, img_dl, post, sweep, n_items, progress, seed,
                                                      keep_flips)
    vocab = getattr(self.dls, 'vocab', None)
    return InvarianceReport(sweep, keys, stats, ys, clean_preds, flips, vocab=vocab,
                            source=dict(dl=img_dl, post=post, seed=seed, n_items=n_items, learn=self))


def assert_label_invariant(learn, tfm, magnitude, max_flip_rate=0.02, dl=None, n_items=None):
    "Raise `AssertionError` (listing the top class transitions) unless at most `max_flip_rate` of the predictions change under `tfm` at `magnitude`."
    if not isinstance(max_flip_rate, (int, float)) or not 0 <= max_flip_rate <= 1:
        raise CnnTricksError(f"max_flip_rate={max_flip_rate!r} is not valid; it must be a fraction in [0, 1]")
    ft = fixed_tfm(tfm)
    rep = learn.invariance_check([ft], {ft.name: [magnitude]}, dl=dl, n_items=n_items, progress=False)
    row = rep.row(ft.name, magnitude)
    if row['flip_rate'] > max_flip_rate:
        raise AssertionError(
            f"{ft.name} at {magnitude}{ft.unit and ' ' + ft.unit} changes {row['flip_rate']:.1%} of the predictions "
            f"(max {max_flip_rate:.1%}); accuracy {row['clean_acc']:.1%} -> {row['acc']:.1%}; top transitions: "
            f"{row['top_transitions'] or 'none'}")
    return rep
