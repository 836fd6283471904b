"""Can an attribution map be trusted at all? The sanity checks of Adebayo et al. 2018: randomize the model's layers
cascading from the top and see whether the maps change (a method that passes gives maps that decorrelate from the
trained model's); and, cheaply, refit the head on shuffled labels (data randomization)."""
from __future__ import annotations
import copy

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from fastai.learner import Learner
from timm.models import group_modules
import matplotlib.pyplot as plt

from ..core import (CnnTricksError, check_bool, check_seed, check_type, fit_logistic_head, mean_se,
                    preserve_model)
from .cam import check_target
from .faithfulness import attribution_method, predicted_classes
from .inputs import image_batch, input_stats
from .plots import finish

__all__ = ['average_ranks', 'rank_correlation', 'ssim', 'randomization_groups', 'randomize_modules',
           'attribution_sanity']


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    "Ranks of a 1-D tensor (0-based), ties sharing their mean rank (as scipy's `rankdata`)."
    s, order = v.flatten().double().sort()
    _, inverse, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0)
    mean_rank = (ends - counts + ends - 1).double() / 2
    ranks = torch.empty_like(s)
    ranks[order] = mean_rank[inverse]
    return ranks


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    "Spearman's rank correlation of every pair of maps (N, H, W) -> (N,); 0 where a map is constant (no ranking)."
    out = []
    for x, y in zip(a, b):
        rx, ry = average_ranks(x), average_ranks(y)
        rx, ry = rx - rx.mean(), ry - ry.mean()
        den = (rx.pow(2).sum() * ry.pow(2).sum()).sqrt()
        out.append(float((rx * ry).sum() / den) if den > 0 else 0.)
    return torch.tensor(out, dtype=torch.float64)


def _gaussian(k, sigma):
    g = torch.exp(-(torch.arange(k, dtype=torch.float64) - (k - 1) / 2) ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of every pair of maps (N, H, W) with values in [0, 1] -> (N,):
    Gaussian window (11 px, sigma 1.5), over the positions where the window fits."""
    k = min(window, *a.shape[-2:])
    k -= 1 - k % 2  # odd
    g = _gaussian(k, sigma)
    blur = lambda t: F.conv2d(F.conv2d(t, g.view(1, 1, k, 1)), g.view(1, 1, 1, k))
    x, y = a.double()[:, None], b.double()[:, None]
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean((1, 2, 3))


def _unit_scale(maps):
    flat = maps.reshape(len(maps), -1).double()
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(maps.shape)


def _group_name(names):
    "A short name for a group of modules: their distinct top-level (or numbered-stage) names, e.g. 'blocks.6, bn2'."
    short = []
    for n in names:
        parts = n.split('.')
        numbered = len(parts) > 1 and parts[1].isdigit() and not parts[0][-1].isdigit()  # blocks.6, not layer4.0
        s = '.'.join(parts[:2]) if numbered else parts[0]
        if s not in short: short.append(s)
    return ', '.join(short) if len(short) <= 3 else f"{short[0]}, ..., {short[-1]}"


def randomization_groups(model: nn.Module) -> list:
    """The model's layers from the top (output) down, as (name, modules): timm's coarse `group_matcher` groups
    (head, stages, stem) where the model has one, else its top-level children with parameters (or its leaf
    modules with parameters when there are fewer than 3 of those)."""
    mods = dict(model.named_modules())
    if callable(getattr(model, 'group_matcher', None)):
        groups = group_modules(model, model.group_matcher(coarse=True))
        named = [(_group_name(ns), ns) for _, ns in sorted(groups.items())]
    else:
        owns = lambda m: any(True for _ in m.parameters())
        named = [(n, [n]) for n, m in model.named_children() if owns(m)]
        if len(named) < 3:
            named = [(n, [n]) for n, m in model.named_modules() if owns(m) and next(m.children(), None) is None]
    return [(name, [mods[n] for n in ns]) for name, ns in reversed(named)]


def randomize_modules(modules, seed: int = 0):
    """Re-draw the parameters of `modules` from their layers' own initialization (`reset_parameters`), seeded;
    parameters of a module without one get Gaussian noise of their own mean and std. Buffers (BatchNorm's running
    statistics) are kept, so activations keep their scale."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for top in modules:
            for m in top.modules():
                own = list(m.parameters(recurse=False))
                if not own: continue
                if callable(getattr(m, 'reset_parameters', None)):
                    kept = {k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None}
                    m.reset_parameters()
                    for k, b in kept.items(): getattr(m, k).copy_(b)
                else:
                    for p in own: p.copy_(torch.randn_like(p) * p.std().nan_to_num(0) + p.mean())


def _throwaway_copy(model):
    "A deep copy without the original's hooks (a user's hook must not fire on our copy)."
    twin = copy.deepcopy(model)
    for m in twin.modules():
        for store in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks):
            store.clear()
    return twin


def _head_features(learn, model, max_batches):
    "Inputs of the model's last Linear layer over the training set (unshuffled), and their labels."
    head = next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)
    if head is None: raise CnnTricksError("data randomization refits the Linear head; this model has no nn.Linear")
    feats, ys = [], []
    h = head.register_forward_pre_hook(lambda m, args: feats.append(args[0].detach().float().flatten(1)))
    try:
        with preserve_model(model), torch.no_grad():
            model.eval()
            for i, (xb, yb) in enumerate(learn.dls.train.new(shuffle=False, drop_last=False)):
                if i >= max_batches: break
                model(xb.to(next(model.parameters()).device)); ys.append(yb)
    finally: h.remove()
    return head, torch.cat(feats).as_subclass(torch.Tensor), torch.cat(ys).as_subclass(torch.Tensor).long()


def _refit_head_on_shuffled_labels(learn, model, seed, max_batches=8):
    "Data randomization, the cheap way: the Linear head refit (logistic regression, L-BFGS) on permuted labels."
    head, x, y = _head_features(learn, model, max_batches)
    y = y.cpu()[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]
    fit_logistic_head(head, x, y)


def _compare(name, n_groups, maps, ref):
    (r, rse), (s, sse) = mean_se(rank_correlation(maps, ref)), mean_se(ssim(_unit_scale(maps), _unit_scale(ref)))
    return dict(randomized=name, layers=n_groups, rank_correlation=r, rank_correlation_se=rse, ssim=s, ssim_se=sse)


def _figure(table, strip, labels, method):
    n = len(strip)
    fig = plt.figure(figsize=(max(6, 1.1 * n), 4.6))
    gs = fig.add_gridspec(2, n, height_ratios=[1, 1.6])
    for i, (m, lab) in enumerate(zip(strip, labels)):
        ax = fig.add_subplot(gs[0, i]); ax.imshow(m, cmap='viridis'); ax.axis('off')
        ax.set_title(lab, fontsize=6)
    ax = fig.add_subplot(gs[1, :])
    cascade = table[table.layers > 0]
    xs = np.arange(len(cascade) + 1)
    for col, lab in (('rank_correlation', 'rank correlation'), ('ssim', 'SSIM')):
        ax.errorbar(xs, [1.] + list(cascade[col]), yerr=[0.] + list(cascade[col + '_se']), marker='o', label=lab)
    ax.set_xticks(xs, ['trained'] + [f'+{n}' for n in cascade.randomized], rotation=30, fontsize=6, ha='right')
    ax.set_ylabel('similarity to the trained maps'); ax.axhline(0, color='gray', lw=0.5); ax.legend(fontsize=7)
    ax.set_title(f'{method}: cascading randomization from the top (mean +- s.e.)', fontsize=9)
    fig.tight_layout()
    return fig


def attribution_sanity(learn: Learner,
                       method='gradcam',  # a name of `METHODS` or a function (model, x, targets) -> maps (N, H, W)
                       imgs=None,  # the images (a model-input batch, or anything `image_batch` takes)
                       target=None,  # class index, one per image, or None (the trained model's predicted class)
                       data_randomization: bool = False,  # also refit the head on shuffled training labels
                       seed: int = 0,  # seed of the re-initializations and of the label shuffle
                       show: bool = True,
                       **kwargs):  # `kwargs` go to the method (e.g. `layer=`, `window=`)
    """Adebayo et al.'s model-parameter randomization test: randomize the layer groups cascading from the top,
    recompute the maps for the same targets, and compare them with the trained model's (Spearman rank correlation,
    SSIM). A method that passes gives maps that decorrelate as more layers are randomized; one that stays similar
    explains the image, not the model. The model is left as found (the randomization works on a copy).
    Returns (table, Figure)."""
    check_type('learn', learn, Learner, 'a fastai Learner')
    attribution_method(method)
    if imgs is None: raise CnnTricksError("imgs=None is not valid; pass the images to explain (e.g. a batch)")
    target = check_target(target); check_bool('data_randomization', data_randomization)
    check_seed('seed', seed); check_bool('show', show)
    x = image_batch(learn, imgs)
    fn = attribution_method(method, input_stats(learn, x.device), seed, **kwargs)
    targets = predicted_classes(learn.model, x) if target is None else torch.as_tensor(
        target if isinstance(target, list) else [target] * len(x))
    ref = fn(learn.model, x, targets).cpu()
    twin = _throwaway_copy(learn.model)
    rows, strip, labels = [], [ref[0]], ['trained']
    for i, (name, modules) in enumerate(randomization_groups(twin)):
        randomize_modules(modules, seed + i)
        maps = fn(twin, x, targets).cpu()
        rows.append(_compare(name, i + 1, maps, ref)); strip.append(maps[0]); labels.append(f'+{name}')
    if data_randomization:
        twin = _throwaway_copy(learn.model)
        _refit_head_on_shuffled_labels(learn, twin, seed)
        rows.append(_compare('labels shuffled (head refit)', 0, fn(twin, x, targets).cpu(), ref))
    table = pd.DataFrame(rows).set_index('randomized', drop=False)
    name = getattr(method, '__name__', method)
    return table, finish(_figure(table, strip, labels, name), show)
