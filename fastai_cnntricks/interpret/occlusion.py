"""Occlusion sensitivity (Zeiler & Fergus 2014): slide a window of a baseline over the image and record how much
the target's probability (or logit) drops. Same attribution as captum's `Occlusion` with a window spanning all
channels, computed with batched perturbations built in one vectorized step and summed back with one transposed
convolution; optional deletion/insertion faithfulness curves and a coarse-to-fine mode."""
from __future__ import annotations
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from fastai.learner import Learner
from fastcore.basics import patch
from fastprogress.fastprogress import progress_bar
import matplotlib.pyplot as plt

from ..core import (CnnTricksError, check_bool, check_choice, check_count, check_int, check_number, check_type,
                    model_device, preserve_model)
from ._occlusion import (WindowGrid, activation_bytes, batch_ladder, inference_copy, occluded_images, tuned_batches,
                         window_forward)
from .inputs import (check_finite, check_stats, first_conv, image_batch, input_stats, model_dtype, to_display,
                     usable_model)
from .memformat import memory_format, memory_format_for
from .plots import finish, overlay, to_hwc

__all__ = ['OcclusionSettings', 'window_starts', 'occlusion_baseline', 'auto_batch_size', 'occlusion_drops',
           'drops_to_map', 'occlusion_attribution', 'faithfulness_curves']

BASELINES = ['black', 'mean', 'blur']
FOLD_MIN_WINDOWS = 65  # fewer windows run unfolded: one batch of them never pays back the folding's two passes
# Up to two CPU batches of windows run as whole images, unfolded, untimed: at 96 px (121 windows) the crops save
# under 1 ms a window, less than folding, planning the crops, checking them and timing batches cost
# (bench/RESULTS.md, occlusion grid)
WHOLE_IMAGE_MAX_WINDOWS = 128
OUTPUTS = ['prob', 'logit']


class OcclusionSettings(NamedTuple):
    "What every batch of occluded windows shares."
    window: tuple  # (h, w) px of the occluding window
    stride: tuple  # (h, w) px between window starts
    target: int  # the class whose score drops are recorded
    output: str = 'prob'  # 'prob' (softmax probability) or 'logit'
    batch_size: int | None = None  # occluded images per forward pass (None: measured, see tuned_batches)
    channels_last: bool = True  # run in channels-last memory format
    incremental: bool = True  # compute the opening layers only around each window (where exact and faster)
    max_batch: int = 64  # the largest batch a measured batch size may reach (what fits memory)


def window_starts(n: int, window: int, stride: int) -> torch.Tensor:
    "Start of every window along a side of `n` px (captum's count: the last window may be cut at the border)."
    return torch.arange(math.ceil((n - window) / stride) + 1) * stride


def occlusion_baseline(x: torch.Tensor, baseline, stats=None, window=16) -> torch.Tensor:
    """The occluding values in model-input space, broadcastable to `x` (1, C, H, W): 'black' (black pixels),
    'mean' (the dataset's mean colour when the DataLoaders normalize, else the image's), 'blur' (a Gaussian blur
    of the image), a number, or a tensor."""
    if isinstance(baseline, str):
        check_choice('baseline', baseline, BASELINES)
        if baseline == 'black':
            return torch.zeros_like(x[:, :, :1, :1]) if stats is None else ((0 - stats[0]) / stats[1]).to(x)
        if baseline == 'mean':  # Normalize maps the dataset mean to 0
            return torch.zeros_like(x[:, :, :1, :1]) if stats is not None else x.mean((2, 3), keepdim=True)
        from torchvision.transforms.functional import gaussian_blur
        k = 2 * (window // 2) + 1
        return gaussian_blur(x, [k, k], [window / 3.] * 2)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x[:, :, :1, :1], check_number('baseline', baseline))
    if isinstance(baseline, torch.Tensor):
        b = check_finite('baseline', baseline.detach()).to(x.device, x.dtype)
        try: torch.broadcast_shapes(b.shape, x.shape)
        except RuntimeError: b = None
        if b is not None and b.dim() <= 4: return b.reshape((1,) * (4 - b.dim()) + tuple(b.shape))
        raise CnnTricksError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to the input {tuple(x.shape)}")
    raise CnnTricksError(f"baseline={baseline!r} is not valid; use 'black', 'mean', 'blur', a number or a tensor")


def _in_format(x, channels_last):
    "`x` in the memory format the model runs in (mixing formats costs a conversion in every convolution)."
    return x.contiguous(memory_format=memory_format_for(channels_last))


def _score(logits, target, output):
    return (logits.float().softmax(1) if output == 'prob' else logits.float())[:, target]


def auto_batch_size(model, x, cap=None, per_image=None) -> int:
    """The largest batch that fits the memory at hand (activation bytes per image, measured by hooks unless given as
    `per_image`, vs free memory), at most `cap` (default: the largest batch `tuned_batches` tries on the device)."""
    dev = x.device
    if per_image is None: per_image = activation_bytes(model, x)[1]
    if dev.type == 'cuda': free = torch.cuda.mem_get_info(dev)[0]
    else:
        try: free = next(int(l.split()[1]) * 1024 for l in open('/proc/meminfo') if l.startswith('MemAvailable'))
        except Exception: free = 2 ** 31
    cap = cap or max(batch_ladder(dev, 2 ** 31))
    return int(max(1, min(cap, free // 4 // per_image)))


def occlusion_drops(model, x, base, settings: OcclusionSettings, todo=None, progress=True, score=None):
    """Target score of `x` minus that with each window replaced by `base`; -> (score of x, drops (nh, nw)).
    `todo` (nh, nw) bool: evaluate only these windows (others are NaN). Windows go through `window_forward`
    (with `settings.incremental` the opening layers are computed only around each window: `model` must be a
    throw-away copy). `score`: the target score of `x`, where the caller has it."""
    window, stride, target, output, batch_size, channels_last, incremental, max_batch = settings
    _, c, h, w = x.shape
    ys, xs = window_starts(h, window[0], stride[0]).to(x.device), window_starts(w, window[1], stride[1]).to(x.device)
    with torch.no_grad():
        if score is None: score = _score(model(_in_format(x, channels_last)), target, output)[0]
        todo = torch.ones(len(ys), len(xs), dtype=torch.bool, device=x.device) if todo is None else todo.to(x.device)
        pos = todo.nonzero()
        drops = torch.full((len(ys), len(xs)), float('nan'), device=x.device)
        if batch_size is None and len(pos) <= max(batch_ladder(x.device, max_batch)):
            # few windows: one whole-image batch of them all, the bare forward's best case; planning crops and
            # timing candidates would cost more than they could save
            batch_size, incremental = len(pos), False
        with window_forward(model, x, base, window=window, ys=ys, xs=xs, channels_last=channels_last,
                            incremental=incremental) as forward:
            batches = tuned_batches(pos, forward.paths, batch_size=batch_size, cap=max_batch)
            bar = progress_bar(range(len(pos)), leave=False) if progress and len(pos) > 1 else None  # in windows
            if bar is not None: bar.update(0)  # fastprogress starts its timing (and, in notebooks, its state) at 0
            n_done = 0
            for p, fwd in batches:
                drops[p[:, 0], p[:, 1]] = score - _score(fwd(p[:, 0], p[:, 1]), target, output)
                n_done += len(p)
                if bar is not None: bar.update(n_done)
    return score, drops


def drops_to_map(drops, size, window, stride) -> torch.Tensor:
    "Per pixel, the mean drop over the windows covering it: one transposed convolution for sums, one for counts."
    h, w = size
    ones = torch.ones(1, 1, *window, device=drops.device, dtype=drops.dtype)
    g = torch.stack([drops, torch.ones_like(drops)])[:, None]  # (2, 1, nh, nw)
    s = F.conv_transpose2d(g, ones, stride=stride)[:, 0, :h, :w]
    return s[0] / s[1].clamp_min(1)


def _refine_estimate(drops, done):
    "Fill windows not evaluated with the mean of evaluated 3x3 neighbours; also the spread (max - min) there."
    m = done.float()[None, None]
    v = torch.where(done, drops, torch.zeros_like(drops))[None, None]
    k = torch.ones(1, 1, 3, 3, device=drops.device)
    est = (F.conv2d(v, k, padding=1) / F.conv2d(m, k, padding=1).clamp_min(1))[0, 0]
    hi = F.max_pool2d(torch.where(done, drops, torch.full_like(drops, -float('inf')))[None, None], 3, 1, 1)[0, 0]
    lo = -F.max_pool2d(torch.where(done, -drops, torch.full_like(drops, -float('inf')))[None, None], 3, 1, 1)[0, 0]
    return est, hi - lo


def _pair(name, v):
    "A positive int or a pair of them, as an (h, w) pair."
    pair = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(pair) != 2: raise CnnTricksError(f"{name}={v!r} is not valid; it must be a positive int (or a pair of them)")
    try: return tuple(check_count(name, i) for i in pair)
    except CnnTricksError: raise CnnTricksError(f"{name}={v!r} is not valid; it must be a positive int (or a pair of "
                                                "them)") from None


def _check_settings(*, target, window, stride, output, batch_size, refine, flags):
    "Every setting of an occlusion run checked before any work; -> (window, stride) as pairs."
    window, stride = _pair('window', window), _pair('stride', stride)
    if any(s > k for s, k in zip(stride, window)):
        raise CnnTricksError(f"stride={stride} is larger than window={window}: pixels would be left out")
    check_int('target', target, lo=0, allow_none=True); check_choice('output', output, OUTPUTS)
    check_count('batch_size', batch_size, allow_none=True); check_number('refine', refine, lo=0, allow_none=True)
    for name, flag in flags.items(): check_bool(name, flag)
    return window, stride


def _check_window_fits(window, x):
    if window[0] > x.shape[2] or window[1] > x.shape[3]:
        raise CnnTricksError(f"window={window} is larger than the image ({x.shape[2]}x{x.shape[3]} px)")


def _check_input(model, x, name='x') -> torch.Tensor:
    "`x` as one finite model-input image (1, C, H, W), moved to the model's device and cast to its dtype."
    check_type(name, x, torch.Tensor, 'a model-input tensor (1, C, H, W)')
    if x.dim() != 4 or len(x) != 1 or not x.is_floating_point():
        raise CnnTricksError(f"{name} of shape {tuple(x.shape)} and {x.dtype} is not valid; pass one float "
                             "model-input image (1, C, H, W)")
    if x.is_meta: raise CnnTricksError(f"{name} is on the meta device (a shape without values); pass real pixels")
    conv = first_conv(model)
    if conv is not None and x.shape[1] != conv.in_channels:
        raise CnnTricksError(f"{name} has {x.shape[1]} channels but the model expects {conv.in_channels}")
    return check_finite(name, x).to(model_device(model), model_dtype(model))


def _coarse_windows(nh, nw):
    "Every other window along each axis, and the last one: the coarse pass of coarse-to-fine."
    iy, ix = torch.arange(nh)[:, None], torch.arange(nw)[None]
    return ((iy % 2 == 0) | (iy == nh - 1)) & ((ix % 2 == 0) | (ix == nw - 1))


def _refined_drops(model, x, base, settings, *, refine, n_windows, progress, score=None):
    "Coarse-to-fine: the coarse windows, then those whose evaluated neighbours differ by > `refine` x the range."
    coarse = _coarse_windows(*n_windows)
    score, drops = occlusion_drops(model, x, base, settings, todo=coarse, progress=progress, score=score)
    done = coarse.to(drops.device)
    est, spread = _refine_estimate(drops, done)
    todo = ~done & (spread > refine * (drops[done].max() - drops[done].min()))
    if todo.any():
        _, fine = occlusion_drops(model, x, base, settings, todo=todo, progress=False, score=score)
        drops = torch.where(todo, fine, drops)
    return score, torch.where(torch.isnan(drops), est, drops)


def _whole_image_drops(model, x, base, window, stride, target, output, channels_last, max_batch=64):
    """The image and all its occluded copies as whole images, in equal batches of at most `max_batch`, the image
    riding in the first (no probing pass of its own) -> (target score of x, drops (nh, nw), target)."""
    _, _, h, w = x.shape
    ys, xs = window_starts(h, window[0], stride[0]).to(x.device), window_starts(w, window[1], stride[1]).to(x.device)
    iy, ix = torch.cartesian_prod(torch.arange(len(ys), device=x.device), torch.arange(len(xs), device=x.device)).T
    images = occluded_images(x, base, WindowGrid(window, ys, xs))
    idx = torch.arange(len(iy) + 1, device=x.device)  # 0: the image itself
    scores = []
    for part in idx.tensor_split(-(-len(idx) // max_batch)):
        w_idx = part[part > 0] - 1
        xb = images(iy[w_idx], ix[w_idx])
        logits = model(_in_format(torch.cat([x, xb]) if part[0] == 0 else xb, channels_last))
        if part[0] == 0: target = _target(logits, target)
        scores.append(_score(logits, target, output))
    scores = torch.cat(scores)
    return scores[0], (scores[0] - scores[1:]).reshape(len(ys), len(xs)), target


def _target(logits, target):
    "The class whose drops are recorded: `target`, or the image's (first row's) predicted class."
    n_out = logits.shape[1]
    if target is None: return int(logits.argmax(1)[0])
    if int(target) >= n_out:
        raise CnnTricksError(f"target={target!r} is not valid; pass a class index 0..{n_out - 1} or None")
    return int(target)


def occlusion_attribution(model, x, target=None, window=16, stride=8, baseline=0., output='prob', batch_size=None,
                          *, channels_last=True, refine=None, stats=None, progress=True, fold_bn=True,
                          incremental=True):
    """Occlusion map of `x` (1, C, H, W, model-input space) for class `target` (default: the predicted class).
    `refine`: coarse-to-fine -- evaluate every other window, then only those whose evaluated neighbours differ by
    more than `refine` times the range of drops. The windows run through an `inference_copy` of `model` (eval,
    channels-last if asked, BatchNorms folded when `fold_bn`, the opening layers computed only around each window when
    `incremental`; on a CPU, up to `WHOLE_IMAGE_MAX_WINDOWS` windows run as whole unfolded images, where neither
    pays); `model` itself is left as found. `x` is moved to the model's device and cast to its dtype.
    -> (map (H, W), target, score)."""
    flags = dict(channels_last=channels_last, progress=progress, fold_bn=fold_bn, incremental=incremental)
    window, stride = _check_settings(target=target, window=window, stride=stride, output=output,
                                     batch_size=batch_size, refine=refine, flags=flags)
    x = _check_input(usable_model(model), x)
    check_stats(stats, channels=x.shape[1])
    _check_window_fits(window, x)
    base = occlusion_baseline(x, baseline, stats=stats, window=window[0])
    _, _, h, w = x.shape
    nh, nw = len(window_starts(h, window[0], stride[0])), len(window_starts(w, window[1], stride[1]))
    # folding costs a traced pass, a checking pass and new weights, more than it saves on one batch of windows
    # (bench/RESULTS.md, occlusion at 64 px)
    fold_bn = fold_bn and nh * nw >= FOLD_MIN_WINDOWS
    if refine is None and batch_size is None and x.device.type == 'cpu' and nh * nw <= WHOLE_IMAGE_MAX_WINDOWS:
        # few windows on a CPU: whole images, the image itself in their first batch (memory is not the limit here)
        with preserve_model(model), torch.no_grad():
            score, drops, target = _whole_image_drops(
                inference_copy(model, x, channels_last=channels_last, fold_bn=False), x, base, window, stride, target,
                output, channels_last, max_batch=max(batch_ladder(x.device, 2 ** 31)))
        return drops_to_map(drops, (h, w), window, stride).cpu(), target, float(score)
    with preserve_model(model), torch.no_grad():
        # one probing pass of the copy gives the target, its score and the memory a window costs
        model, logits, per_image = inference_copy(model, x, channels_last=channels_last, fold_bn=fold_bn, probe=True)
        settings = OcclusionSettings(window, stride, _target(logits, target), output=output,
                                     batch_size=batch_size, channels_last=channels_last, incremental=incremental,
                                     max_batch=auto_batch_size(model, x, per_image=per_image) if batch_size is None
                                     else batch_size)
        score = _score(logits, settings.target, output)[0]
        if refine is None: score, drops = occlusion_drops(model, x, base, settings, progress=progress, score=score)
        else: score, drops = _refined_drops(model, x, base, settings, refine=refine, n_windows=(nh, nw),
                                            progress=progress, score=score)
    return drops_to_map(drops, (h, w), window, stride).cpu(), settings.target, float(score)


def check_region(region):
    "`region`: None (an eighth of the shorter side) or a side in px >= 1."
    if region is not None: check_count('region', region)
    return region


def _region_ranks(attr, region):
    "Each pixel's rank (0 = most important) by the mean attribution of its `region` x `region` square, and the square count."
    h, w = attr.shape
    if region == 1: order = attr.reshape(-1).argsort(descending=True); n = h * w
    else:
        pooled = F.avg_pool2d(attr[None, None], region, ceil_mode=True)[0, 0]
        order = pooled.reshape(-1).argsort(descending=True); n = pooled.numel()
    rank = torch.empty_like(order); rank[order] = torch.arange(n, device=attr.device)
    if region > 1:
        rank = rank.reshape(pooled.shape).repeat_interleave(region, 0).repeat_interleave(region, 1)[:h, :w]
    return rank.reshape(h, w), n


def faithfulness_curves(model, x, attr, target, base, output='prob', steps=16, channels_last=True, region=None):
    """Deletion (remove the most important pixels first, replaced by `base`) and insertion (add them first to
    `base`) curves of the target score, with their AUC (Petsiuk et al. 2018); one batched forward pass. `region` > 1
    removes square regions ranked by their mean attribution (Samek et al. 2017's region perturbation): pixel-wise
    removal scatters a speckle the model never saw, which breaks its predictions whatever the map says. `region=None`:
    an eighth of the shorter side (8 x 8 regions), measured in bench/RESULTS.md ('Which map can be trusted')."""
    check_int('target', target, lo=0); check_choice('output', output, OUTPUTS); check_count('steps', steps)
    check_bool('channels_last', channels_last); check_region(region)
    x = _check_input(usable_model(model), x)
    _, c, h, w = x.shape
    check_type('attr', attr, torch.Tensor, f'a map of shape ({h}, {w})')
    if attr.numel() != h * w: raise CnnTricksError(f"attr of shape {tuple(attr.shape)} is not a ({h}, {w}) map")
    check_finite('attr', attr)
    check_type('base', base, torch.Tensor, 'a baseline tensor (see occlusion_baseline)')
    base = check_finite('base', base).to(x)
    with preserve_model(model), memory_format(model, enabled=channels_last), torch.no_grad():
        model.eval()
        region = max(1, min(h, w) // 8) if region is None else min(region, h, w)
        rank, n = _region_ranks(attr.to(x.device).float().reshape(h, w), region)
        fracs = torch.linspace(0, 1, steps + 1, device=x.device)
        top = (rank[None] < (fracs[:, None, None] * n).round()).reshape(-1, 1, h, w)  # (S+1, 1, H, W)
        base = base.expand_as(x)
        dele = torch.where(top, base, x)
        ins = torch.where(top, x, base)
        scores = _score(model(_in_format(torch.cat([dele, ins]), channels_last)), target, output)
    d, i = scores[:steps + 1].cpu(), scores[steps + 1:].cpu()
    f = fracs.cpu()
    return dict(fractions=f, deletion=d, insertion=i, deletion_auc=float(torch.trapezoid(d, f)),
                insertion_auc=float(torch.trapezoid(i, f)))


@patch
def occlusion_map(self: Learner, img,  # anything `learn.predict` accepts, or a 4-D tensor taken as a model input
                  target: int | None = None,  # class index (default: the predicted class)
                  window: int = 16, stride: int = 8,  # occluding square's side and step, in px of the model input
                  baseline='mean',  # 'black', 'mean', 'blur', a number or a tensor in model-input space
                  output: str = 'prob',  # the drop in 'prob' (softmax probability) or 'logit'
                  batch_size: int | None = None,  # perturbed images per forward pass (default: measured; few windows: all)
                  channels_last: bool = True,  # run in channels-last memory format (faster); the model is restored
                  refine: float | None = None,  # coarse-to-fine: refine where neighbours differ by > this x range
                  fold_bn: bool = True,  # run a copy with BatchNorms folded into their convolutions (faster)
                  incremental: bool = True,  # compute the opening layers only around each window (faster)
                  faithfulness: bool = False,  # also deletion/insertion curves and their AUC
                  progress: bool = True, show: bool = True):
    """Occlusion sensitivity: per pixel, the drop of the target's probability (or logit) when a window of the
    baseline covers it, averaged over the covering windows (captum's `Occlusion` with a window spanning all
    channels). Returns (map (H, W), faithfulness dict or None, Figure)."""
    flags = dict(channels_last=channels_last, fold_bn=fold_bn, incremental=incremental, faithfulness=faithfulness,
                 progress=progress, show=show)
    _check_settings(target=target, window=window, stride=stride, output=output, batch_size=batch_size, refine=refine,
                    flags=flags)
    model = usable_model(self.model, 'learn.model')
    x = image_batch(self, img, single=True)
    stats = input_stats(self, x.device)
    attr, target, score = occlusion_attribution(model, x, target=target, window=window, stride=stride,
                                                baseline=baseline, output=output, batch_size=batch_size,
                                                channels_last=channels_last, refine=refine, stats=stats,
                                                progress=progress, fold_bn=fold_bn, incremental=incremental)
    curves = None
    if faithfulness:
        base = occlusion_baseline(x, baseline, stats=stats, window=window if isinstance(window, int) else window[0])
        curves = faithfulness_curves(model, x, attr, target=target, base=base, output=output,
                                     channels_last=channels_last)
    vocab = getattr(self.dls, 'vocab', None)
    label = vocab[target] if vocab is not None and target < len(vocab) else target
    fig, axs = plt.subplots(1, 3 if faithfulness else 2, figsize=(9 if faithfulness else 6, 3), squeeze=False)
    axs = axs[0]
    axs[0].imshow(to_hwc(to_display(self, x)[0])); axs[0].axis('off')
    axs[0].set_title(f'class {label}: {output} {score:.3f}', fontsize=8)
    im = overlay(axs[1], to_display(self, x)[0], attr, title=f'occlusion {window}px / {stride}px')
    fig.colorbar(im, ax=axs[1], fraction=0.046)
    if faithfulness:
        ax = axs[2]
        ax.plot(curves['fractions'], curves['deletion'], label=f"deletion AUC {curves['deletion_auc']:.3f}")
        ax.plot(curves['fractions'], curves['insertion'], label=f"insertion AUC {curves['insertion_auc']:.3f}")
        ax.set_xlabel('fraction of pixels'); ax.set_ylabel(output); ax.legend(fontsize=7)
    fig.tight_layout()
    return attr, curves, finish(fig, show)
