"""How faithful is an attribution map? Deletion and insertion curves (Petsiuk et al. 2018) for any map or method in
one call, and a table comparing methods on the same images against two maps that know nothing about the model:
a random one and an edge detector's."""
from __future__ import annotations
import time

import pandas as pd
import torch
import torch.nn.functional as F
from fastai.learner import Learner
from fastcore.basics import patch
import matplotlib.pyplot as plt

from ..core import (CnnTricksError, mean_se, check_bool, check_choice, check_count, check_number, check_seed, check_type,
                    preserve_model)
from .cam import cam_maps, check_target, grad_cam_maps
from .inputs import image_batch, input_stats
from .occlusion import check_region, faithfulness_curves, occlusion_attribution, occlusion_baseline
from .plots import finish

__all__ = ['METHODS', 'random_map', 'edge_map', 'attribution_method', 'predicted_classes', 'deletion_insertion',
           'compare_attributions']

OUTPUTS = ['prob', 'logit']


def random_map(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    "A map that knows nothing: uniform noise per pixel (N, H, W), the same for the same seed."
    g = torch.Generator().manual_seed(seed)
    return torch.rand(len(x), *x.shape[-2:], generator=g)


def edge_map(x: torch.Tensor) -> torch.Tensor:
    "A map that knows the image but not the model: the Sobel gradient magnitude of the channel mean (N, H, W)."
    gx = torch.tensor([[-1., 0., 1.], [-2., 0., 2.], [-1., 0., 1.]], device=x.device)
    k = torch.stack([gx, gx.T])[:, None]
    g = F.conv2d(F.pad(x.detach().float().mean(1, keepdim=True), (1, 1, 1, 1), mode='replicate'), k)
    return g.pow(2).sum(1).sqrt().cpu()


def _occlusion_maps(model, x, targets, stats=None, **kwargs):
    kwargs = dict(dict(window=min(16, *x.shape[-2:]), stride=8, baseline='mean'), **kwargs)
    return torch.stack([occlusion_attribution(model, x[i:i + 1], target=int(t), stats=stats, progress=False,
                                              **kwargs)[0] for i, t in enumerate(targets)])


# Named attribution methods: name -> builder(stats, seed, **kwargs) -> function (model, x, targets) -> maps (N, H, W).
# A new method is one entry here; `compare_attributions`, `learn.faithfulness` and `attribution_sanity` take its name.
METHODS = {
    'gradcam': lambda stats, seed, **kw: lambda model, x, targets: grad_cam_maps(model, x, targets, **kw),
    'cam': lambda stats, seed, **kw: lambda model, x, targets: cam_maps(model, x, targets, **kw),
    'occlusion': lambda stats, seed, **kw: lambda model, x, targets: _occlusion_maps(model, x, targets, stats, **kw),
    'random': lambda stats, seed, **kw: lambda model, x, targets: random_map(x, seed),
    'edges': lambda stats, seed, **kw: lambda model, x, targets: edge_map(x),
}


def attribution_method(method, stats=None, seed: int = 0, **kwargs):
    """`method` as a function (model, x, targets) -> maps (N, H, W): a name of `METHODS`, or a callable of that form
    (returned as it is). `kwargs` go to the method (e.g. `layer=` for Grad-CAM, `window=` for occlusion)."""
    if callable(method): return method
    check_choice('method', method, list(METHODS))
    return METHODS[method](stats, seed, **kwargs)


def predicted_classes(model, x) -> torch.Tensor:
    "The model's predicted class of every image (eval mode; the model is left as found)."
    with preserve_model(model), torch.no_grad(): return model.eval()(x).argmax(1)


def _check_maps(maps, x):
    if maps.dim() == 2: maps = maps[None]
    if maps.shape != (len(x), *x.shape[-2:]):
        raise CnnTricksError(f"maps of shape {tuple(maps.shape)} do not fit the images: pass (N, H, W) = "
                             f"{(len(x), *x.shape[-2:])}")
    if not bool(torch.isfinite(maps).all()): raise CnnTricksError("maps contain NaN or inf values")
    return maps


def deletion_insertion(model, x, maps, targets, base, output='prob', steps=16, region=None) -> dict:
    """Deletion (most important pixels replaced by `base` first; lower AUC is better) and insertion (most important
    pixels put into `base` first; higher is better) curves of every image's target score, removing `region` x `region`
    regions ranked by their mean attribution (1: single pixels; None: an eighth of the shorter side).
    -> dict of fractions (S+1,), deletion and insertion curves (N, S+1), deletion_auc and insertion_auc (N,)."""
    maps = _check_maps(maps, x)
    per = [faithfulness_curves(model, x[i:i + 1], maps[i], int(t), base[i:i + 1] if len(base) > 1 else base,
                               output=output, steps=steps, region=region) for i, t in enumerate(targets)]
    out = dict(fractions=per[0]['fractions'])
    for k in ('deletion', 'insertion'): out[k] = torch.stack([p[k] for p in per])
    for k in ('deletion_auc', 'insertion_auc'): out[k] = torch.tensor([p[k] for p in per])
    return out


def _check_faithfulness_args(target, baseline, output, steps, region):
    target = check_target(target); check_region(region)
    if isinstance(baseline, str): check_choice('baseline', baseline, ['black', 'mean', 'blur'])
    elif not isinstance(baseline, torch.Tensor): check_number('baseline', baseline)
    check_choice('output', output, OUTPUTS); check_count('steps', steps)
    return target


def _setup(learn, imgs, target, baseline):
    "Model-input batch, per-image targets (predicted where None), the baseline and the normalization stats."
    x = image_batch(learn, imgs)
    targets = predicted_classes(learn.model, x) if target is None else torch.as_tensor(
        target if isinstance(target, list) else [target] * len(x))
    if len(targets) != len(x): raise CnnTricksError(f"target has {len(targets)} class indices for {len(x)} images")
    stats = input_stats(learn, x.device)
    return x, targets.cpu(), occlusion_baseline(x, baseline, stats, window=16), stats


def _curves_figure(curves, output, what):
    fig, ax = plt.subplots(figsize=(4, 3))
    f = curves['fractions']
    for k in ('deletion', 'insertion'):
        ax.plot(f, curves[k].mean(0), label=f"{k} AUC {float(curves[k + '_auc'].mean()):.3f}")
    ax.set_xlabel('fraction of pixels, most important first'); ax.set_ylabel(output)
    ax.set_title(f'{what}: mean of {len(curves[k])} images', fontsize=9); ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


@patch
def faithfulness(self: Learner, imgs,  # anything `learn.predict` accepts, or a 4-D model-input batch
                 maps='gradcam',  # a map per image (N, H, W), a method name (see `METHODS`) or a function
                 target=None,  # class index, one per image, or None (the predicted class)
                 baseline='mean',  # what deleted pixels become: 'black', 'mean', 'blur', a number or a tensor
                 output: str = 'prob',  # the target's 'prob' (softmax probability) or 'logit'
                 steps: int = 16,  # points on each curve
                 region: int | None = None,  # side of the square regions removed together, px (1: pixels; None: side / 8)
                 show: bool = True, **kwargs):  # `kwargs` go to the method (e.g. `layer=`, `window=`)
    """Deletion and insertion curves with their AUC for any attribution map, per image.
    Returns (dict of curves and AUCs, Figure of the mean curves)."""
    target = _check_faithfulness_args(target, baseline, output, steps, region); check_bool('show', show)
    if not isinstance(maps, torch.Tensor): attribution_method(maps)
    x, targets, base, stats = _setup(self, imgs, target, baseline)
    what = 'given maps' if isinstance(maps, torch.Tensor) else getattr(maps, '__name__', maps)
    if not isinstance(maps, torch.Tensor): maps = attribution_method(maps, stats, **kwargs)(self.model, x, targets)
    curves = deletion_insertion(self.model, x, maps.to(x.device), targets, base, output, steps, region)
    return curves, finish(_curves_figure(curves, output, what), show)


def compare_attributions(learn: Learner,
                         imgs,  # the images (a model-input batch, or anything `image_batch` takes)
                         methods=('occlusion', 'gradcam', 'random', 'edges'),  # names (see `METHODS`) or functions
                         target=None,  # class index, one per image, or None (the predicted class)
                         baseline='mean', output: str = 'prob', steps: int = 16,
                         region: int | None = None,  # side of the square regions removed together, px (1: pixels; None: side / 8)
                         options: dict | None = None,  # per-method keyword arguments, e.g. {'occlusion': dict(window=8)}
                         seed: int = 0) -> pd.DataFrame:  # seed of the random map
    """Deletion and insertion AUC of several attribution methods on the same images and targets: mean and standard
    error per method (a faithful map deletes lower and inserts higher than the random map), and seconds per image.
    With 'random' among `methods`, each method's paired gain over it on the same images (positive: better), with its
    standard error."""
    check_type('learn', learn, Learner, 'a fastai Learner')
    target = _check_faithfulness_args(target, baseline, output, steps, region); check_seed('seed', seed)
    options = check_type('options', options or {}, dict, 'a dict of method name -> keyword arguments')
    fns = {getattr(m, '__name__', m): attribution_method(m) for m in methods}
    for k in options: check_choice('options', k, list(fns))
    x, targets, base, stats = _setup(learn, imgs, target, baseline)
    rows, aucs = [], {}
    for m, name in zip(methods, fns):
        t0 = time.perf_counter()
        maps = attribution_method(m, stats, seed, **options.get(name, {}))(learn.model, x, targets)
        secs = (time.perf_counter() - t0) / len(x)
        aucs[name] = c = deletion_insertion(learn.model, x, maps.to(x.device), targets, base, output, steps, region)
        (d, dse), (i, ise) = mean_se(c['deletion_auc']), mean_se(c['insertion_auc'])
        rows.append(dict(method=name, deletion_auc=d, deletion_se=dse, insertion_auc=i, insertion_se=ise,
                         images=len(x), seconds_per_image=secs))
    table = pd.DataFrame(rows).set_index('method')
    if 'random' in aucs:  # paired over the same images: is the map better than chance on them?
        r = aucs['random']
        for k, sign in (('deletion', -1), ('insertion', 1)):
            gains = [mean_se(sign * (aucs[n][f'{k}_auc'] - r[f'{k}_auc'])) for n in table.index]
            table[f'{k}_gain_vs_random'], table[f'{k}_gain_se'] = zip(*gains)
    return table
