"""Class activation maps: Grad-CAM (Selvaraju et al. 2017) for any CNN and CAM (Zhou et al. 2016) where the head is
global average pooling then one Linear layer. One forward and one backward pass for a whole batch; the backward stops
at the feature map, so it costs a fraction of a full one."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from fastai.learner import Learner
from fastcore.basics import patch
import matplotlib.pyplot as plt

from ..core import (CnnTricksError, check_bool, check_choice, check_count, check_int, check_number, get_layer,
                    layer_name, preserve_model)
from .inputs import image_batch, to_display
from .plots import finish, image_grid, to_hwc

__all__ = ['check_target', 'grad_cam_maps', 'cam_maps', 'heat_tiles', 'class_label']

INTERPOLATE = ['bilinear', 'bicubic', 'nearest', None]


def check_target(target):
    "Validate `target` up front: None (the predicted class), a class index, or one index per image."
    if target is None: return None
    if isinstance(target, torch.Tensor) and target.dim() == 1: target = target.tolist()
    if isinstance(target, (list, tuple)):
        if not target: raise CnnTricksError("target=[] is not valid; pass None, a class index or one per image")
        return [check_int('target', t, lo=0) for t in target]
    return check_int('target', target, lo=0)


def _targets(target, logits):
    "The class index of every image: the predicted class where `target` is None (checked against the logits)."
    n, n_out = logits.shape
    if target is None: return logits.argmax(1)
    ts = target if isinstance(target, list) else [target] * n
    if len(ts) != n: raise CnnTricksError(f"target has {len(ts)} class indices for a batch of {n} images")
    if max(ts) >= n_out:
        raise CnnTricksError(f"target={target!r} is not valid; pass class indices 0..{n_out - 1} or None")
    return torch.tensor(ts, device=logits.device)


def _is_timm(model):
    return callable(getattr(model, 'forward_features', None)) and callable(getattr(model, 'forward_head', None))


def _spatial(out, any_size):
    return isinstance(out, torch.Tensor) and out.dim() == 4 and (any_size or out.shape[2] * out.shape[3] > 1)


def feature_forward(model, x, layer=None):
    """One forward pass of `model` (as it is: call it in eval mode) that keeps the feature map of `layer` as a leaf
    needing grad, so that a backward pass stops there. `layer=None`: timm's `forward_features` output where the
    model has one, else the last module output that is a 4-D map with more than one position.
    -> (features (N, C, h, w), logits, layer name)."""
    if layer is None and _is_timm(model):
        with torch.no_grad(): feats = model.forward_features(x)
        if _spatial(feats, True):
            feats = feats.detach().requires_grad_()
            with torch.enable_grad(): return feats, model.forward_head(feats), 'forward_features'
    target = None if layer is None else get_layer(model, layer)
    kept, seen = [], []

    def keep(m, i, out):
        seen.append(tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__)
        if not _spatial(out, target is not None): return None
        leaf = out.detach().requires_grad_()
        kept.append((m, leaf))
        return leaf.clone()  # downstream in-place ops (ReLU(inplace=True)) must not touch the leaf
    modules = [target] if target is not None else [m for m in model.modules() if m is not model]
    hooks = [m.register_forward_hook(keep) for m in modules]
    try:
        with torch.enable_grad(): logits = model(x)
    finally:
        for h in hooks: h.remove()
    if target is not None and len(seen) != 1:
        raise CnnTricksError(f"layer {layer!r} runs {len(seen)} times in a forward pass; pick a module that runs once")
    if not kept:
        what = f"layer {layer!r} gives {seen[0]}" if target is not None else "no module of the model gives one"
        raise CnnTricksError(f"class activation maps need a 4-D feature map (N, C, H, W); {what}. Pass `layer=` "
                             "a convolutional module (see learn.layer_names('conv')), or use occlusion_map")
    m, feats = kept[-1]
    return feats, logits, layer_name(model, m)


def _upsample(maps, size, interpolate):
    if interpolate is None or tuple(maps.shape[-2:]) == tuple(size): return maps
    return F.interpolate(maps, size=size, mode=interpolate, align_corners=None if interpolate == 'nearest' else False)


def _check_maps_args(layer, interpolate, model=None):
    check_choice('interpolate', interpolate, INTERPOLATE)
    if layer is not None and model is not None: get_layer(model, layer)


def _frozen_eval(model):
    "Eval mode and no parameter grads (so the forward records nothing ahead of the feature map)."
    model.eval()
    for p in model.parameters(): p.requires_grad_(False)


def _grad_cam(model, x, target=None, layer=None, relu=True, interpolate='bilinear'):
    "Grad-CAM maps of the batch `x` -> (maps (N, H, W), targets (N,), logits (N, classes), layer name)."
    with preserve_model(model):
        _frozen_eval(model)
        feats, logits, name = feature_forward(model, x, layer)
        targets = _targets(target, logits)
        grads, = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), feats)
        with torch.no_grad():
            maps = (grads.mean((2, 3), keepdim=True) * feats).sum(1, keepdim=True)
            if relu: maps = maps.clamp_min(0)
            maps = _upsample(maps, x.shape[-2:], interpolate)
    return maps[:, 0].float().cpu(), targets.cpu(), logits.detach().float().cpu(), name


def grad_cam_maps(model: nn.Module, x: torch.Tensor,  # a model-input batch (N, C, H, W)
                  target=None,  # None (predicted class), a class index, or one per image
                  layer=None,  # module name or module (default: the last 4-D feature map)
                  relu: bool = True,  # keep only positive evidence (the paper's map)
                  interpolate: str | None = 'bilinear'  # upsampling to the input size (None: the feature map's)
                  ) -> torch.Tensor:
    "Grad-CAM maps (N, H, W) of a model-input batch, as captum's `LayerGradCam` + `LayerAttribution.interpolate`."
    target = check_target(target); check_bool('relu', relu); _check_maps_args(layer, interpolate, model)
    return _grad_cam(model, x, target, layer, relu, interpolate)[0]


def _linear_head(model, n_channels):
    "The classifier the feature map feeds: timm's `get_classifier()`, else the model's last Linear layer."
    head = model.get_classifier() if callable(getattr(model, 'get_classifier', None)) else None
    if not isinstance(head, nn.Linear): head = next((m for m in reversed(list(model.modules()))
                                                     if isinstance(m, nn.Linear)), None)
    return head if isinstance(head, nn.Linear) and head.in_features == n_channels else None


def _not_gap_linear(model):
    return CnnTricksError(f"cam needs a head that is global average pooling then one Linear layer (the CAM paper's); "
                          f"the head of this {type(model).__name__} is different. learn.grad_cam(...) works for any "
                          "head (and equals CAM up to scale where the head is pooling + Linear)")


def _cam(model, x, target=None, layer=None, interpolate='bilinear'):
    "CAM maps of the batch `x` -> (maps (N, H, W), targets, logits, layer name)."
    with preserve_model(model), torch.no_grad():
        _frozen_eval(model)
        feats, logits, name = feature_forward(model, x, layer)
        feats, logits = feats.detach(), logits.detach()
        head = _linear_head(model, feats.shape[1])
        if head is None: raise _not_gap_linear(model)
        every = torch.einsum('ok,nkhw->nohw', head.weight.to(feats), feats)  # CAM of every class
        pooled = every.mean((2, 3)) + (head.bias.to(feats) if head.bias is not None else 0)
        # The head is pooling + Linear exactly when CAM's spatial mean gives back the logits.
        if not torch.allclose(pooled, logits.to(pooled), rtol=1e-3, atol=1e-4 * float(logits.abs().max()) + 1e-6):
            raise _not_gap_linear(model)
        targets = _targets(target, logits)
        maps = _upsample(every[torch.arange(len(x)), targets][:, None], x.shape[-2:], interpolate)
    return maps[:, 0].float().cpu(), targets.cpu(), logits.float().cpu(), name


def cam_maps(model: nn.Module, x: torch.Tensor, target=None, layer=None, interpolate: str | None = 'bilinear'):
    "CAM maps (N, H, W) of a model-input batch: the Linear head's weights of the target class over the feature map."
    target = check_target(target); _check_maps_args(layer, interpolate, model)
    return _cam(model, x, target, layer, interpolate)[0]


def heat_tiles(imgs, maps, alpha=0.5, cmap='RdBu_r'):
    "Images (N, C, H, W) in [0, 1] with their maps (N, H, W) blended on top (diverging colours centred at zero)."
    tiles = []
    for img, m in zip(imgs, maps):
        a = to_hwc(img)
        a = np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a
        h = m.detach().float().cpu().numpy()
        lim = float(np.abs(h).max()) or 1.
        colour = plt.get_cmap(cmap)(np.clip(h / lim * 0.5 + 0.5, 0, 1))[..., :3]
        tiles.append(torch.from_numpy(((1 - alpha) * a + alpha * colour).astype(np.float32)).permute(2, 0, 1))
    return tiles


def class_label(learn, i):
    "The vocab entry of class `i` (the index itself without a vocab)."
    vocab = getattr(learn.dls, 'vocab', None)
    return vocab[i] if vocab is not None and i < len(vocab) else i


def _figure(learn, x, maps, targets, logits, what, alpha, max_n):
    n = min(len(x), max_n)
    probs = logits.softmax(1)[torch.arange(len(x)), targets]
    titles = [f'{class_label(learn, int(t))}: {float(p):.2f}' for t, p in zip(targets[:n], probs[:n])]
    return image_grid(heat_tiles(to_display(learn, x[:n]), maps[:n], alpha), titles=titles, size=1.6,
                      suptitle=f'{what} (class: probability)')


def _checked_figure_args(alpha, max_n, show):
    check_number('alpha', alpha, lo=0, hi=1); check_count('max_n', max_n); check_bool('show', show)


@patch
def grad_cam(self: Learner, img,  # anything `learn.predict` accepts, or a 4-D tensor taken as a model-input batch
             target=None,  # class index, one per image, or None (the predicted class)
             layer=None,  # module name or module (default: the last convolutional stage's feature map)
             relu: bool = True,  # keep only positive evidence (the paper's map)
             interpolate: str | None = 'bilinear',  # upsampling to the input size (None: the feature map's)
             alpha: float = 0.5,  # opacity of the map over the image
             max_n: int = 16,  # images shown in the figure
             show: bool = True):
    """Grad-CAM: the feature map's channels weighted by the mean gradient of the target's logit, summed, ReLU'd and
    upsampled to the input. One forward and one backward pass for a batch. Returns (maps (N, H, W), Figure)."""
    target = check_target(target); check_bool('relu', relu); _check_maps_args(layer, interpolate, self.model)
    _checked_figure_args(alpha, max_n, show)
    x = image_batch(self, img)
    maps, targets, logits, name = _grad_cam(self.model, x, target, layer, relu, interpolate)
    return maps, finish(_figure(self, x, maps, targets, logits, f'Grad-CAM at {name}', alpha, max_n), show)


@patch
def cam(self: Learner, img,  # anything `learn.predict` accepts, or a 4-D tensor taken as a model-input batch
        target=None,  # class index, one per image, or None (the predicted class)
        layer=None,  # the module whose output the pooling head reads (default: found as for grad_cam)
        interpolate: str | None = 'bilinear',  # upsampling to the input size (None: the feature map's)
        alpha: float = 0.5, max_n: int = 16, show: bool = True):
    """Class activation map (the fastai book's CAM): the final feature map weighted by the Linear head's weights of
    the target class. Needs a global-average-pooling + Linear head; else use `grad_cam`. Returns (maps, Figure)."""
    target = check_target(target); _check_maps_args(layer, interpolate, self.model)
    _checked_figure_args(alpha, max_n, show)
    x = image_batch(self, img)
    maps, targets, logits, name = _cam(self.model, x, target, layer, interpolate)
    return maps, finish(_figure(self, x, maps, targets, logits, f'CAM at {name}', alpha, max_n), show)
