"""Occlusion sensitivity (Zeiler & Fergus 2014): slide a window of a baseline over the image and record how much
the target's probability (or logit) drops. Same attribution as captum's `Occlusion` with a window spanning all
channels, computed with batched perturbations built in one vectorized step and summed back with one transposed
convolution; optional deletion/insertion faithfulness curves and a coarse-to-fine mode."""
from __future__ import annotations
import math

import torch
import torch.nn.functional as F
from fastai.learner import Learner
from fastcore.basics import patch
from fastprogress.fastprogress import progress_bar
import matplotlib.pyplot as plt

from ..core import CnnTricksError, check_choice, check_positive, preserve_model
from .inputs import _stats, image_batch, to_display
from .inference_copy import inference_copy
from .memformat import memory_format
from .window_forward import window_forward
from .plots import finish, overlay, to_hwc

__all__ = ['window_starts', 'occlusion_baseline', 'auto_batch_size', 'occlusion_drops', 'drops_to_map',
           'occlusion_attribution', 'faithfulness_curves']


def window_starts(n: int, window: int, stride: int) -> torch.Tensor:
    "Start of every window along a side of `n` px (captum's count: the last window may be cut at the border)."
    return torch.arange(math.ceil((n - window) / stride) + 1) * stride


def occlusion_baseline(x: torch.Tensor, baseline, stats=None, window=16) -> torch.Tensor:
    """The occluding values in model-input space, broadcastable to `x` (1, C, H, W): 'black' (black pixels),
    'mean' (the dataset's mean colour when the DataLoaders normalize, else the image's), 'blur' (a Gaussian blur
    of the image), a number, or a tensor."""
    if isinstance(baseline, str):
        check_choice('baseline', baseline, ['black', 'mean', 'blur'])
        if baseline == 'black':
            return torch.zeros_like(x[:, :, :1, :1]) if stats is None else ((0 - stats[0]) / stats[1]).to(x)
        if baseline == 'mean':  # Normalize maps the dataset mean to 0
            return torch.zeros_like(x[:, :, :1, :1]) if stats is not None else x.mean((2, 3), keepdim=True)
        from torchvision.transforms.functional import gaussian_blur
        k = 2 * (window // 2) + 1
        return gaussian_blur(x, [k, k], [window / 3.] * 2)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x[:, :, :1, :1], float(baseline))
    if isinstance(baseline, torch.Tensor):
        b = baseline.to(x.device, x.dtype)
        try: torch.broadcast_shapes(b.shape, x.shape)
        except RuntimeError: b = None
        if b is not None and b.dim() <= 4: return b.reshape((1,) * (4 - b.dim()) + tuple(b.shape))
        raise CnnTricksError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to the input {tuple(x.shape)}")
    raise CnnTricksError(f"baseline={baseline!r} is not valid; use 'black', 'mean', 'blur', a number or a tensor")


def _in_format(x, channels_last):
    "`x` in the memory format the model runs in (mixing formats costs a conversion in every convolution)."
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _score(logits, target, output):
    return (logits.float().softmax(1) if output == 'prob' else logits.float())[:, target]


def auto_batch_size(model, x, cap=None) -> int:
    "A batch size that fits the memory at hand: activation bytes per image (measured by hooks) vs free memory."
    dev = x.device
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel() * o.element_size()
                                                               if isinstance(o, torch.Tensor) else 0))
             for m in model.modules() if next(m.children(), None) is None]
    try:
        with torch.no_grad(): model(x)
    finally:
        for h in hooks: h.remove()
    per_image = max(sum(sizes), 1)
    if dev.type == 'cuda': free = torch.cuda.mem_get_info(dev)[0]
    else:
        try: free = next(int(l.split()[1]) * 1024 for l in open('/proc/meminfo') if l.startswith('MemAvailable'))
        except Exception: free = 2 ** 31
    # On CPU small batches stay in cache: 729 windows at 224 px took 13.5 s at 4 vs 19.5 s at 64 (tf_efficientnet_lite0)
    # and 19.9 s vs 21.7 s (resnet18) on 2 cores; a GPU wants large batches.
    cap = cap or (256 if dev.type == 'cuda' else 4)
    return int(max(1, min(cap, free // 4 // per_image)))


def occlusion_drops(model, x, base, target, window=(16, 16), stride=(8, 8), output='prob', batch_size=64,
                    todo=None, progress=True, channels_last=True, incremental=True):
    """Target score of `x` minus that with each window replaced by `base`; -> (score of x, drops (nh, nw)).
    `todo` (nh, nw) bool: evaluate only these windows (others are NaN). Windows go through `window_forward`
    (with `incremental` the opening layers are computed only around each window: `model` must be a throw-away
    copy)."""
    _, c, h, w = x.shape
    ys, xs = window_starts(h, window[0], stride[0]).to(x.device), window_starts(w, window[1], stride[1]).to(x.device)
    with torch.no_grad():
        score = _score(model(_in_format(x, channels_last)), target, output)[0]
        todo = torch.ones(len(ys), len(xs), dtype=torch.bool, device=x.device) if todo is None else todo.to(x.device)
        pos = todo.nonzero()
        drops = torch.full((len(ys), len(xs)), float('nan'), device=x.device)
        chunks = pos.split(batch_size)
        with window_forward(model, x, base, window, ys, xs, channels_last, incremental) as forward:
            for p in (progress_bar(chunks, leave=False) if progress and len(chunks) > 1 else chunks):
                drops[p[:, 0], p[:, 1]] = score - _score(forward(p[:, 0], p[:, 1]), target, output)
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


def occlusion_attribution(model, x, target=None, window=16, stride=8, baseline=0., output='prob', batch_size=None,
                          channels_last=True, refine=None, stats=None, progress=True, fold_bn=True,
                          incremental=True):
    """Occlusion map of `x` (1, C, H, W, model-input space) for class `target` (default: the predicted class).
    `refine`: coarse-to-fine -- evaluate every other window, then only those whose evaluated neighbours differ by
    more than `refine` times the range of drops. The windows run through an `inference_copy` of `model` (eval,
    channels-last if asked, BatchNorms folded when `fold_bn`, the opening layers computed only around each window when
    `incremental`); `model` itself is left as found.
    -> (map (H, W), target, score)."""
    window = (window, window) if isinstance(window, int) else tuple(window)
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    _, _, h, w = x.shape
    for n, v in (('window', window), ('stride', stride)):
        if len(v) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in v):
            raise CnnTricksError(f"{n}={v!r} is not valid; it must be a positive int (or a pair of them)")
    if window[0] > h or window[1] > w:
        raise CnnTricksError(f"window={window} is larger than the image ({h}x{w} px)")
    if any(s > k for s, k in zip(stride, window)):
        raise CnnTricksError(f"stride={stride} is larger than window={window}: pixels would be left out")
    check_choice('output', output, ['prob', 'logit'])
    if refine is not None: check_positive('refine', refine, allow_zero=True)
    with preserve_model(model), torch.no_grad():
        model = inference_copy(model, x, channels_last, fold_bn)
        base = occlusion_baseline(x, baseline, stats, window[0])
        if hasattr(target, '__index__') and not isinstance(target, bool): target = int(target)
        n_out = model(_in_format(x, channels_last)).shape[1] if target is not None else None
        if target is None: target = int(model(_in_format(x, channels_last)).argmax(1)[0])
        elif not isinstance(target, int) or isinstance(target, bool) or not 0 <= target < n_out:
            raise CnnTricksError(f"target={target!r} is not valid; pass a class index 0..{n_out - 1} or None")
        bs = batch_size or auto_batch_size(model, x)
        check_positive('batch_size', bs)
        nh, nw = len(window_starts(h, window[0], stride[0])), len(window_starts(w, window[1], stride[1]))
        if refine is None:
            score, drops = occlusion_drops(model, x, base, target, window, stride, output, bs, None, progress,
                                           channels_last, incremental)
        else:
            iy, ix = torch.arange(nh)[:, None], torch.arange(nw)[None]
            coarse = ((iy % 2 == 0) | (iy == nh - 1)) & ((ix % 2 == 0) | (ix == nw - 1))
            score, drops = occlusion_drops(model, x, base, target, window, stride, output, bs, coarse, progress,
                                           channels_last, incremental)
            done = coarse.to(drops.device)
            est, spread = _refine_estimate(drops, done)
            todo = ~done & (spread > refine * (drops[done].max() - drops[done].min()))
            if todo.any():
                _, fine = occlusion_drops(model, x, base, target, window, stride, output, bs, todo, False,
                                          channels_last, incremental)
                drops = torch.where(todo, fine, drops)
            drops = torch.where(torch.isnan(drops), est, drops)
    return drops_to_map(drops, (h, w), window, stride).cpu(), target, float(score)


def faithfulness_curves(model, x, attr, target, base, output='prob', steps=16, channels_last=True):
    """Deletion (remove the most important pixels first, replaced by `base`) and insertion (add them first to
    `base`) curves of the target score, with their AUC (Petsiuk et al. 2018); one batched forward pass."""
    _, c, h, w = x.shape
    with preserve_model(model), memory_format(model, enabled=channels_last), torch.no_grad():
        model.eval()
        order = attr.to(x.device).reshape(-1).argsort(descending=True)
        rank = torch.empty_like(order); rank[order] = torch.arange(h * w, device=x.device)
        fracs = torch.linspace(0, 1, steps + 1, device=x.device)
        top = (rank[None] < (fracs[:, None] * h * w).round()).reshape(-1, 1, h, w)  # (S+1, 1, H, W)
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
                  batch_size: int | None = None,  # perturbed images per forward pass (default: sized to memory)
                  channels_last: bool = True,  # run in channels-last memory format (faster); the model is restored
                  refine: float | None = None,  # coarse-to-fine: refine where neighbours differ by > this x range
                  fold_bn: bool = True,  # run a copy with BatchNorms folded into their convolutions (faster)
                  incremental: bool = True,  # compute the opening layers only around each window (faster)
                  faithfulness: bool = False,  # also deletion/insertion curves and their AUC
                  progress: bool = True, show: bool = True):
    """Occlusion sensitivity: per pixel, the drop of the target's probability (or logit) when a window of the
    baseline covers it, averaged over the covering windows (captum's `Occlusion` with a window spanning all
    channels). Returns (map (H, W), faithfulness dict or None, Figure)."""
    x = image_batch(self, img)
    if len(x) != 1: raise CnnTricksError(f"occlusion_map takes one image; got a batch of {len(x)}")
    model = self.model
    stats = _stats(self, x.device)
    attr, target, score = occlusion_attribution(model, x, target, window, stride, baseline, output, batch_size,
                                                channels_last, refine, stats, progress, fold_bn,
                                                incremental)
    curves = None
    if faithfulness:
        base = occlusion_baseline(x, baseline, stats, window if isinstance(window, int) else window[0])
        curves = faithfulness_curves(model, x, attr, target, base, output, channels_last=channels_last)
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
