"""The sweep behind the label-invariance check: image-space batches, each transform at each fixed magnitude, and the
statistics accumulated on the device.

Where the transforms apply: in image space. The batches are taken from the DataLoader's `after_batch` pipeline *up
to* its first standardizing step (the first non-random transform after `IntToFloatTensor`, e.g. `Normalize`),
i.e. floats in [0, 1]; each transform resamples that batch once, and the rest of the pipeline (`Normalize`, ...)
is applied before the model. Nothing is decoded, so non-invertible standardization (sample-wise, ZCA) works too.

Cost: the DataLoader is read once; each batch goes through the model once clean and once per (transform,
magnitude); the statistics are accumulated on the device as small tensors. No per-item Python loop.
"""
from __future__ import annotations
import math, numbers
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from fastai.vision.augment import RandTransform
from fastai.data.transforms import IntToFloatTensor
from fastai.torch_core import TensorImage
from fastprogress.fastprogress import progress_bar
from fasttransform import Pipeline

from ..core import CnnTricksError, check_int
from .catalogue import FixedTfm, fixed_tfm, DEFAULT_SWEEP

__all__ = ['image_space_dl', 'resolve_sweep', 'image_space_batches', 'seeded', 'model_dtype', 'run_sweep',
           'FlipRedraw']


def image_space_dl(dl):
    """(`dl` without shuffling whose batches stop before the first standardizing transform, the rest of the
    pipeline as a `Pipeline`): model input = rest(f(image-space batch))."""
    fs = list(dl.after_batch.fs)
    cut = next((i for i, t in enumerate(fs) if t.order > IntToFloatTensor.order and not isinstance(t, RandTransform)),
               len(fs))
    pre, post = Pipeline(fs[:cut], split_idx=1), Pipeline(fs[cut:], split_idx=1)
    return dl.new(shuffle=False, drop_last=False, after_batch=pre), post


_SEQUENCES = (list, tuple, range, np.ndarray)  # what a list of magnitudes may be


def _as_list(tfms):
    if isinstance(tfms, (str, FixedTfm)) or callable(tfms) or hasattr(tfms, 'apply_fixed'): return [tfms]
    if isinstance(tfms, (list, tuple)): return list(tfms)
    raise CnnTricksError(f"tfms={tfms!r} is not valid; pass a transform name, a transform or a function, or a list "
                         "of them")


def _magnitudes_for(ft, t, magnitudes):
    "The magnitudes asked for transform `ft` (given as `t`): from a dict by name, one list for all, or the defaults."
    if isinstance(magnitudes, dict): ms = magnitudes.get(ft.name, magnitudes.get(t if isinstance(t, str) else None))
    else: ms = magnitudes
    if ms is None: ms = ft.magnitudes
    if isinstance(ms, (int, float)): ms = [ms]
    if not isinstance(ms, _SEQUENCES):
        raise CnnTricksError(f"magnitudes[{ft.name!r}]={ms!r} is not valid; pass a list of numbers (or one number)")
    return [ft.check(m) for m in ms]


def resolve_sweep(tfms=None, magnitudes=None, fill_mode='reflection'):
    """[(FixedTfm, magnitudes)] from `tfms` (None: `DEFAULT_SWEEP`; a name, transform or function, or a list of
    them) and `magnitudes` (None: the defaults; a list for every transform; or a dict name -> list)."""
    if magnitudes is not None and not isinstance(magnitudes, (dict, numbers.Real, *_SEQUENCES)):
        raise CnnTricksError(f"magnitudes={magnitudes!r} is not valid; pass None, a list of numbers, or a dict "
                             "name -> list")
    res = []
    for t in _as_list(DEFAULT_SWEEP if tfms is None else tfms):
        ft = fixed_tfm(t, fill_mode)
        ms = _magnitudes_for(ft, t, magnitudes)
        if not ms:
            raise CnnTricksError(f"no magnitudes for transform {ft.name!r}; pass magnitudes={{{ft.name!r}: [...]}}")
        # the neutral magnitude is the clean pass itself: keep it in the table, never recompute it
        ms = sorted(set(ms) | {ft.neutral}, key=lambda m: (ft.severity(m), m))
        res.append((ft, ms))
    if not res: raise CnnTricksError("tfms=[] is not valid; name at least one transform")
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


def model_dtype(model) -> torch.dtype:
    "The dtype of the model's first floating-point parameter (float32 for a model without one)."
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _logits(model, x, dtype):
    # a plain tensor into the model: fastai's TensorImage would route every layer's op through __torch_function__;
    # cast to the model's dtype (half, bf16) here, after the transforms, which run in float32
    out = model(x.as_subclass(torch.Tensor).to(dtype))
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out


def _js_bits(lp, lq):
    "Jensen-Shannon divergence (bits, in [0, 1]) between rows of log-probabilities `lp`, `lq`."
    lm = torch.logaddexp(lp, lq) - math.log(2)
    return 0.5 * ((lp.exp() * (lp - lm)).sum(1) + (lq.exp() * (lq - lm)).sum(1)) / math.log(2)


def image_space_batches(dl, n_items):
    "The image-space batches of `dl`, truncated to `n_items` items."
    seen = 0
    for b in dl:
        if n_items is not None and seen >= n_items: break
        if n_items is not None and seen + len(b[0]) > n_items: b = tuple(o[:n_items - seen] for o in b)
        seen += len(b[0])
        yield b


def _draw_seed(seed, batch_index, key_index):
    "The seed of one (batch, transform-magnitude) draw: the sweep and the redraw of flipped items share it."
    return seed + 7919 * batch_index + key_index


@contextmanager
def seeded(ft, seed, device):
    "Random transforms (noise) draw from a seed of their own, so flipped items can be redrawn exactly."
    if not ft.random:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        torch.manual_seed(seed)
        yield


class _Stats:
    "The sweep's per-(transform, magnitude) counters, on the device."
    def __init__(self, n_keys, n_classes, device):
        zeros = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
        self.correct, self.flips, self.js = zeros(n_keys), zeros(n_keys), zeros(n_keys)
        self.trans, self.n_y = zeros(n_keys, n_classes * n_classes), zeros(n_classes)

    def as_numpy(self): return {k: v.cpu().numpy() for k, v in vars(self).items()}


def run_sweep(model, dl, post, sweep, n_items=None, progress=False, seed=0, keep_flips=32, device=None):
    """Every (transform, magnitude) of `sweep` on the image-space batches of `dl` (model input: `post(batch)`):
    (keys, stats, labels, clean predictions, flipped (index, prediction) pairs per key). The model runs as it is:
    put it in eval mode and under `torch.no_grad()` first."""
    dtype = model_dtype(model)
    n_classes = getattr(getattr(dl, 'dataset', None), 'c', None) or getattr(dl, 'c', None)
    keys = [(ft, m) for ft, ms in sweep for m in ms if ft.severity(m) > 0]
    stats = None
    ys, clean_preds, flips = [], [], [[] for _ in keys]
    n_seen = 0
    n_batches = len(dl) if n_items is None else min(len(dl), math.ceil(n_items / dl.bs))
    batches = image_space_batches(dl, n_items)
    for bi, b in enumerate(progress_bar(batches, total=n_batches, display=progress, leave=False)):
        x, y = TensorImage(b[0].to(device)), b[1].to(device).as_subclass(torch.Tensor)
        if len(x) == 0: continue
        lc = _logits(model, post(x), dtype)
        if stats is None:
            _check_batch(b, lc, n_classes)
            stats = _Stats(len(keys), lc.shape[1], device)
        C = lc.shape[1]
        lpc = F.log_softmax(lc.float(), 1)
        pc = lpc.argmax(1)
        stats.n_y += torch.bincount(y, minlength=C)[:C].float()
        ys.append(y)
        clean_preds.append(pc)
        for k, (ft, m) in enumerate(keys):
            with seeded(ft, _draw_seed(seed, bi, k), device):
                xa = ft(x, m)
            lpa = F.log_softmax(_logits(model, post(xa), dtype).float(), 1)
            pa = lpa.argmax(1)
            changed = pa != pc
            stats.correct[k] += (pa == y).sum()
            stats.flips[k] += changed.sum()
            stats.js[k] += _js_bits(lpc, lpa).sum()
            moved = changed & (pa != y)  # a change that corrects a mistake is not a label transition
            stats.trans[k] += torch.bincount((y * C + pa)[moved], minlength=C * C)[:C * C].float()
            if len(flips[k]) < keep_flips:  # indices only; the report redraws the images
                idx = changed.nonzero()[:, 0]
                flips[k].extend(zip((idx + n_seen).tolist(), pa[idx].tolist()))
        n_seen += len(x)
    if stats is None: raise CnnTricksError("the DataLoader is empty; pass a dl (or n_items) with at least one item")
    labels, preds = torch.cat(ys).cpu().numpy(), torch.cat(clean_preds).cpu().numpy()
    return keys, stats.as_numpy(), labels, preds, [f[:keep_flips] for f in flips]


class FlipRedraw:
    "Redraws swept items clean and augmented, exactly as the sweep drew them (what a report needs to show flips)."
    def __init__(self, dl, keys, n_items=None, seed=0, device=None):
        self.dl, self.keys, self.n_items, self.seed = dl, keys, n_items, seed
        self.device = torch.device('cpu') if device is None else device

    def __call__(self, key_index, idxs):
        "({item: clean image}, {item: augmented image}) of the items `idxs` under the sweep's key `key_index`."
        check_int('key_index', key_index, lo=0, hi=len(self.keys) - 1)
        ft, magnitude = self.keys[key_index]
        want, clean, aug, seen = set(idxs), {}, {}, 0
        with torch.no_grad():
            for bi, b in enumerate(image_space_batches(self.dl, self.n_items)):
                here = [i for i in range(len(b[0])) if seen + i in want]
                if here:
                    x = b[0].to(self.device)
                    with seeded(ft, _draw_seed(self.seed, bi, key_index), self.device): xa = ft(x, magnitude)
                    for i in here: clean[seen + i], aug[seen + i] = x[i].cpu(), xa[i].cpu()
                seen += len(b[0])
                if len(clean) == len(want): break
        return clean, aug
